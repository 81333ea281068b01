"""The e-mail consumer: order confirmations and cancellation notices, over SMTP.

An SMTP server is not part of the database transaction, so the tracking row alone cannot make
the e-mail happen once. Each notice has a dedupe key, (order, kind), recorded before the SMTP
call (`sending`, with a lease) and marked `sent` after it, with the delivery, in one short
transaction; no transaction is open during the SMTP call.

- A duplicate message, a replay, or a second event asking for the same notice finds it `sent`
  and sends nothing.
- Two workers with the same notice: the second finds a live lease and retries later.
- A worker that dies between the SMTP server's accept and the `sent` record leaves the notice
  `sending`; once the lease runs out, the retry sends it again. That is the one duplicate
  window; `notify()` returns its length for each e-mail, and docs/benchmarks.md reports it.
"""

import logging
import smtplib
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core import mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from consumers.models import EmailNotice
from core.models import Order
from outbox.consuming import PermanentError, consume
from outbox.deliveries import delivery_begin
from outbox.models import Event

CONSUMER = "email"
Kind = EmailNotice.Kind
KINDS = {"order.placed": Kind.CONFIRMATION, "order.cancelled": Kind.CANCELLATION}
EVENT_TYPES = tuple(KINDS)
SUBJECTS = {
    Kind.CONFIRMATION: "Your order #{order} is confirmed",
    Kind.CANCELLATION: "Your order #{order} has been cancelled",
}

logger = logging.getLogger("consumers.email")


class NoticeBusy(Exception):
    """Another worker holds the notice's lease: it is sending it right now."""


def lease_seconds() -> float:
    """How long a worker may take over one SMTP send before another may send the notice again."""
    return float(getattr(settings, "EMAIL_NOTICE_LEASE_SECONDS", 3 * settings.EMAIL_TIMEOUT))


def send_notices(*, event_ids: object) -> None:
    """Send the notice of each event not yet handled, over one SMTP connection (the actor's service)."""
    connection = mail.get_connection()
    try:
        consume(
            consumer=CONSUMER,
            event_ids=event_ids,
            handle=lambda event: notify(event, connection=connection),
            atomic=False,
        )
    finally:
        connection.close()


def render(kind: str, order_id: int) -> mail.EmailMessage:
    """Return the notice for the order as it is now, listing its lines."""
    order = Order.objects.select_related("customer").filter(pk=order_id).first()
    if order is None:
        raise PermanentError(f"Order {order_id} no longer exists, so its {Kind(kind).label.lower()} cannot be written.")
    lines = list(order.lines.select_related("product").order_by("id"))
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


def claim(*, kind: str, event: Event, message: mail.EmailMessage) -> EmailNotice | None:
    """Record the intent to send (inside a transaction); None if the notice was already sent."""
    now = timezone.now()
    lease_until = now + timedelta(seconds=lease_seconds())
    notice, created = EmailNotice.objects.select_for_update().get_or_create(
        order_id=int(event.aggregate_id),
        kind=kind,
        defaults={
            "event_id": event.id,
            "recipient": message.to[0],
            "subject": message.subject,
            "status": EmailNotice.Status.SENDING,
            "sends": 1,
            "lease_until": lease_until,
        },
    )
    if created:
        return notice
    if notice.status == EmailNotice.Status.SENT:
        return None
    if notice.lease_until is not None and notice.lease_until > now:
        raise NoticeBusy(
            f"Another worker is sending the {notice.get_kind_display().lower()} for order {notice.order_id} "
            f"(lease until {notice.lease_until:%H:%M:%S}); retrying later."
        )
    notice.sends += 1
    notice.lease_until = lease_until
    notice.event_id = event.id
    notice.save(update_fields=["sends", "lease_until", "event_id"])
    return notice


def notify(event: Event, *, connection: Any) -> float | None:
    """Send the event's notice unless it was sent; return the duplicate window in seconds, if sent.

    The window is the time from the SMTP server's accept to the commit of the `sent` record.
    """
    kind = KINDS.get(event.event_type)
    if kind is None:
        raise PermanentError(
            f"The e-mail consumer does not handle {event.event_type} events. "
            "Remove the route in settings/routes.py; the event itself is fine."
        )
    message = render(kind, int(event.aggregate_id))
    with transaction.atomic():
        notice = claim(kind=kind, event=event, message=message)
        if notice is None:
            delivery_begin(event_id=event.id, consumer=CONSUMER)
            return None
    message.connection = connection
    try:
        message.send()
    except Exception as exc:
        # Give the lease back: the next attempt need not wait for it.
        EmailNotice.objects.filter(pk=notice.pk, status=EmailNotice.Status.SENDING).update(lease_until=None)
        if isinstance(exc, smtplib.SMTPRecipientsRefused) or (
            isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500
        ):
            raise PermanentError(f"The SMTP server refused the {kind} for order {notice.order_id}: {exc}") from exc
        raise
    accepted = time.monotonic()
    with transaction.atomic():
        EmailNotice.objects.filter(pk=notice.pk).update(
            status=EmailNotice.Status.SENT, sent_at=timezone.now(), lease_until=None
        )
        delivery_begin(event_id=event.id, consumer=CONSUMER)
    window = time.monotonic() - accepted
    logger.info(
        "email: sent the %s for order %s to %s (event %s; recorded %.2f ms after the SMTP accept)",
        kind,
        notice.order_id,
        notice.recipient,
        event.id,
        window * 1000,
    )
    return window
