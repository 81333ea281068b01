"""The example app's consumers: a transactional one (the ledger) and an external one (an e-mail)."""

from django.core import mail

from outbox import DedupeKey, Event, PermanentError, consumer
from tests.ledger.models import LedgerEntry


@consumer("ledger", events=["invoice.issued", "invoice.voided"], records=["ledger.LedgerEntry"])
def post_invoice(event: Event) -> None:
    """Post the invoice's total, or take it back when it is voided."""
    state = event.payload["state"]
    if not isinstance(state.get("total"), int):
        raise PermanentError(f"Event {event.id} has no integer total in its payload.")
    sign = -1 if event.type == "invoice.voided" else 1
    LedgerEntry.objects.create(event_id=event.id, invoice=state["number"], amount=sign * state["total"])


@consumer(
    "invoice_mail",
    events=["invoice.issued"],
    kind="external",
    dedupe_key=lambda event: f"invoice:{event.aggregate_id}:issued",
    retries=2,
)
def mail_invoice(event: Event, key: DedupeKey) -> None:
    """E-mail the invoice to its customer; the key's token makes the Message-ID, so a repeat is recognisable."""
    state = event.payload["state"]
    message = mail.EmailMessage(
        subject=f"Invoice {state['number']}",
        body=f"Total: {state['total']}",
        to=[state["email"]],
        headers={"Message-ID": f"<{key.token.hex}@ledger.example>"},
    )
    message.send()
