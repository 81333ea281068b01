"""The e-mail consumer: order confirmations and cancellation notices, over SMTP.

An external consumer (outbox/consume/external.py): an SMTP server is not part of the database
transaction, so each notice has a dedupe key, `order:<id>:<kind>`, which the outbox records before
the SMTP call (`sending`, with a lease, on the database's clock) and marks `sent` after it, with
the delivery and the notice's `EmailNotice` row, in one short transaction; no transaction is open
during the SMTP call.

- A duplicate message, a replay, or a second event asking for the same notice finds it `sent`
  and sends nothing.
- Two workers with the same notice: the second finds a live lease and retries later.
- A worker that dies between the SMTP server's accept and the `sent` record leaves the notice
  `sending`; once the lease runs out, the retry sends it again. That is the one duplicate
  window; the delivery's outcome gives its length for each e-mail, and docs/benchmarks.md reports it.
- A send the server certainly did not take (a refusal, no session) is not counted in `sends`.

One SMTP connection serves a message's notices, and their orders are read in three queries
(`session`).
"""

import smtplib
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from email.utils import parseaddr
from typing import Any, cast

from django.conf import settings
from django.core import mail
from django.db import connection as db_connection
from django.db import models
from django.db.models import Prefetch
from django.template.loader import render_to_string

from consumers.models import EmailNotice
from core.models import Order, OrderLine
from outbox import DedupeKey, Event, PermanentError, consumer

CONSUMER = "email"
Kind = EmailNotice.Kind
KINDS = {"order.placed": Kind.CONFIRMATION, "order.cancelled": Kind.CANCELLATION}
EVENT_TYPES = tuple(KINDS)
SUBJECTS = {
    Kind.CONFIRMATION: "Your order #{order} is confirmed",
    Kind.CANCELLATION: "Your order #{order} has been cancelled",
}


def lease_seconds() -> float:
    """How long a worker may take over one SMTP send before another may send the notice again."""
    return float(getattr(settings, "EMAIL_NOTICE_LEASE_SECONDS", 3 * settings.EMAIL_TIMEOUT))


def notice_key(event: Event) -> str:
    """The notice's dedupe key: one confirmation and one cancellation per order."""
    kind = KINDS.get(event.event_type)
    return f"order:{event.aggregate_id}:{kind.value if kind else event.event_type}"


def not_taken(exc: BaseException) -> bool:
    """Whether the SMTP server certainly did not take the message: it answered the send with an
    error, or no session was made (a session the message's connection failed to open is not taken
    either, whatever the error: see Session.open). A session lost mid-send may have delivered it."""
    refused = (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused)
    return isinstance(exc, (NoSession, NotRendered, *refused, ConnectionRefusedError, socket.gaierror))


class NoSession(Exception):
    """The SMTP session could not be opened: nothing was sent."""


class NotRendered(Exception):
    """The notice could not be written (no such order, an error reading it): nothing was sent."""


class OrderCache:
    """The batch's orders with their customers and lines, read in three queries on first use."""

    def __init__(self, event_ids: object) -> None:
        self.event_ids = event_ids if isinstance(event_ids, list) else []
        self.orders: dict[int, Order] | None = None

    def get(self, order_id: int) -> Order | None:
        if self.orders is None:
            ids = Event.objects.filter(id__in=self.event_ids, event_type__in=EVENT_TYPES).values_list(
                "aggregate_id", flat=True
            )
            lines = Prefetch("lines", queryset=OrderLine.objects.select_related("product").order_by("id"))
            self.orders = (
                Order.objects.select_related("customer").prefetch_related(lines).in_bulk([int(i) for i in ids])
            )
        return self.orders.get(order_id) or Order.objects.select_related("customer").filter(pk=order_id).first()


def render(kind: str, order_id: int, orders: OrderCache | None = None) -> mail.EmailMessage:
    """Return the notice for the order as it is now, listing its lines."""
    order = (orders or OrderCache([])).get(order_id)
    if order is None:
        raise PermanentError(f"Order {order_id} no longer exists, so its {Kind(kind).label.lower()} cannot be written.")
    lines = list(order.lines.all()) if orders else list(order.lines.select_related("product").order_by("id"))
    rows = [
        {
            "quantity": line.quantity,
            "product": line.product,
            "unit_price": line.unit_price,
            "total": line.unit_price * line.quantity,
        }
        for line in lines
    ]
    context = {
        "order": order,
        "customer": order.customer,
        "lines": rows,
        "total": sum((row["total"] for row in rows), Decimal("0.00")),
    }
    return mail.EmailMessage(
        subject=SUBJECTS[Kind(kind)].format(order=order.pk),
        body=render_to_string(f"consumers/email/{kind}.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[order.customer.email],
        headers={"X-Order-Id": str(order.pk), "X-Notice": kind},
    )


def message_id(*, token: uuid.UUID) -> str:
    """Return the notice's Message-ID: the same on every send of it, so that a copy sent again
    after a crash (the duplicate window) is recognisably the same message to the recipient's mail
    system, which can drop it.

    The token is random, its dedupe record's: the Message-ID is no other notice's, even where a
    restored or copied database repeats ids.
    """
    domain = parseaddr(settings.DEFAULT_FROM_EMAIL)[1].rpartition("@")[2] or "localhost"
    return f"<notice-{token.hex}@{domain}>"


@dataclass
class Session:
    """What a message's notices share: one SMTP connection, opened on the first send, and the orders."""

    connection: Any
    orders: OrderCache
    opened: bool = False

    def open(self) -> None:
        """Open the connection once per message (later sends reuse it); a failure means nothing was sent."""
        if self.opened or self.connection is None:
            return
        try:
            self.connection.open()
        except Exception as exc:
            raise NoSession(f"The SMTP session could not be opened: {type(exc).__name__}: {exc}") from exc
        self.opened = True

    def broken(self) -> None:
        """Close a session a send failed on: it is not reused."""
        if self.connection is not None:
            self.connection.close()
        self.opened = False


@contextmanager
def smtp_session(events: list[Event]) -> Iterator[Session]:
    """Open what a message's notices share, and close the connection after the last."""
    session = Session(connection=mail.get_connection(), orders=OrderCache([event.id for event in events]))
    try:
        yield session
    finally:
        session.broken()


# One statement: a notice recorded before (a database restored to before a send) is brought up to
# date. Written out rather than built by bulk_create(update_conflicts=True) on each call: it runs
# inside the duplicate window, once per e-mail. sent_at is the database's clock in the transaction
# that marks the notice sent, right after the SMTP server's accept.
_RECORD = """
INSERT INTO email_notice (order_id, kind, event_id, recipient, subject, sends, token, sent_at, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)
ON CONFLICT (order_id, kind) DO UPDATE
    SET event_id = EXCLUDED.event_id, recipient = EXCLUDED.recipient, subject = EXCLUDED.subject,
        sends = EXCLUDED.sends, token = EXCLUDED.token, sent_at = EXCLUDED.sent_at
"""


def notice_row(
    *, order_id: int, kind: str, event_id: int, recipient: str, subject: str, sends: int, token: uuid.UUID
) -> list[Any]:
    """The notice's row as notice_record() writes it, its values ready for the database."""
    token_field = cast(models.UUIDField, EmailNotice._meta.get_field("token"))
    return [
        order_id,
        kind,
        event_id,
        recipient,
        subject,
        sends,
        token_field.get_db_prep_save(token, db_connection),
    ]


def notice_record(row: list[Any]) -> None:
    """Record the notice the SMTP server accepted (in the transaction that marks it sent)."""
    with db_connection.cursor() as cursor:
        cursor.execute(_RECORD, row)


@consumer(
    CONSUMER,
    events=list(EVENT_TYPES),
    queue="email",
    priority=10,
    kind="external",
    dedupe_key=notice_key,
    session=smtp_session,
    not_sent=not_taken,
    lease=lease_seconds,
    records=["consumers.EmailNotice"],
    # A customer never gets an order's cancellation before its confirmation.
    ordered=True,
)
def send_notice(event: Event, key: DedupeKey, session: Session) -> Callable[[], None]:
    """Send the event's notice; return what records it once the SMTP server accepted it."""
    kind = KINDS.get(event.event_type)
    order_id = int(event.aggregate_id)
    try:
        if kind is None:
            raise PermanentError(
                f"The e-mail consumer does not handle {event.event_type} events. "
                "Remove the type from its @consumer declaration's events; the event itself is fine."
            )
        message = render(kind, order_id, session.orders)
    except PermanentError as exc:
        raise exc from NotRendered(str(exc))  # dead, and not counted as a send
    except Exception as exc:
        raise NotRendered(f"The {kind} for order {order_id} could not be written: {type(exc).__name__}: {exc}") from exc
    message.extra_headers["Message-ID"] = message_id(token=key.token)
    # Made ready before the send: from the SMTP server's accept on, a worker's death is the
    # duplicate window, and the record runs in it.
    row = notice_row(
        order_id=order_id,
        kind=kind,
        event_id=event.id,
        recipient=message.to[0],
        subject=str(message.subject),
        sends=key.sends,
        token=key.token,
    )
    try:
        session.open()
        if session.connection is not None:
            message.connection = session.connection
        message.send()
    except NoSession as exc:
        cause = exc.__cause__
        if isinstance(cause, smtplib.SMTPResponseException) and cause.smtp_code >= 500:
            raise PermanentError(f"The SMTP server refused the {kind} for order {order_id}: {cause}") from exc
        raise
    except Exception as exc:
        session.broken()
        if isinstance(exc, smtplib.SMTPRecipientsRefused) or (
            isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500
        ):
            raise PermanentError(f"The SMTP server refused the {kind} for order {order_id}: {exc}") from exc
        raise

    def record() -> None:
        notice_record(row)

    return record
