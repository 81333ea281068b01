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
import socket
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from email.utils import parseaddr
from typing import Any

from django.conf import settings
from django.core import mail
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import F, Prefetch
from django.template.loader import render_to_string
from django.utils import timezone

from consumers.models import EmailNotice
from core.models import Order, OrderLine
from outbox.consume.deliveries import delivery_begin
from outbox.consume.run import PermanentError, consume
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
    orders = OrderCache(event_ids)
    try:
        consume(
            consumer=CONSUMER,
            event_ids=event_ids,
            handle=lambda events: notify(events[0], connection=connection, orders=orders),
            atomic=False,
        )
    finally:
        connection.close()


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


# On PostgreSQL the lease is taken and tested on the database's clock, so that workers on
# machines whose clocks disagree still agree on whose lease has run out. (The embedded default
# runs its one worker on the machine of its SQLite file: its clock is the only one.)
_CLAIM = """
INSERT INTO email_notice
    (order_id, kind, event_id, recipient, subject, token, status, sends, lease_until, created_at)
VALUES (%s, %s, %s, %s, %s, %s, 'sending', 1, {lease_until}, CURRENT_TIMESTAMP)
ON CONFLICT (order_id, kind) DO UPDATE
    SET sends = email_notice.sends + 1, lease_until = EXCLUDED.lease_until, event_id = EXCLUDED.event_id
    WHERE email_notice.status = 'sending'
      AND (email_notice.lease_until IS NULL OR email_notice.lease_until < {now})
RETURNING id, token
"""
_CLAIM_POSTGRESQL = _CLAIM.format(
    lease_until="statement_timestamp() + make_interval(secs => %s)", now="statement_timestamp()"
)
_CLAIM_LOCAL_CLOCK = _CLAIM.format(lease_until="%s", now="%s")


# sent_at on the same clock as the lease.
_SENT = "UPDATE email_notice SET status = 'sent', sent_at = {now}, lease_until = NULL WHERE id = %s"
_SENT_POSTGRESQL = _SENT.format(now="statement_timestamp()")
_SENT_LOCAL_CLOCK = _SENT.format(now="%s")


def message_id(*, notice_id: int, kind: str, order_id: int, token: uuid.UUID | None) -> str:
    """Return the notice's Message-ID: the same on every send of it, so that a copy sent again
    after a crash (the duplicate window) is recognisably the same message to the recipient's mail
    system, which can drop it.

    The notice's random token makes it no other notice's, even one with the same id in a restored
    or copied database. (Notices recorded before the token existed have none.)
    """
    domain = parseaddr(settings.DEFAULT_FROM_EMAIL)[1].rpartition("@")[2] or "localhost"
    if token is None:
        return f"<notice-{notice_id}.{kind}.order-{order_id}@{domain}>"
    # Short enough not to be folded onto a second header line (the order and kind have headers).
    return f"<notice-{notice_id}.{token.hex}@{domain}>"


def not_taken(exc: BaseException) -> bool:
    """Whether the SMTP server certainly did not take the message: it answered the send with an
    error, or no session was made (a session the batch's connection failed to open is not taken
    either, whatever the error). A session lost mid-send may have delivered it."""
    return isinstance(
        exc, (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused, ConnectionRefusedError, socket.gaierror)
    )


def claim(*, kind: str, event: Event, message: mail.EmailMessage) -> tuple[int, uuid.UUID | None] | None:
    """Record the intent to send, in one statement; return the notice's id and token, or None if
    it was sent.

    Raises NoticeBusy when another worker holds the notice's lease.
    """
    order_id = int(event.aggregate_id)
    # As the backend stores a UUIDField (a uuid on PostgreSQL, 32 hex digits on SQLite), and back.
    token_field = EmailNotice._meta.get_field("token")
    token = token_field.get_db_prep_value(uuid.uuid4(), db_connection)
    params: list[Any] = [order_id, kind, event.id, message.to[0], str(message.subject), token]
    if db_connection.vendor == "postgresql":
        statement, params = _CLAIM_POSTGRESQL, [*params, lease_seconds()]
    else:
        now = timezone.now()
        statement, params = _CLAIM_LOCAL_CLOCK, [*params, now + timedelta(seconds=lease_seconds()), now]
    with db_connection.cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    if row is not None:
        return int(row[0]), token_field.to_python(row[1])
    notice = EmailNotice.objects.get(order_id=order_id, kind=kind)
    if notice.status == EmailNotice.Status.SENT:
        return None
    raise NoticeBusy(
        f"Another worker is sending the {notice.get_kind_display().lower()} for order {notice.order_id} "
        f"(lease until {notice.lease_until:%H:%M:%S}); retrying later."
    )


def notify(event: Event, *, connection: Any, orders: OrderCache | None = None) -> float | None:
    """Send the event's notice unless it was sent; return the duplicate window in seconds, if sent.

    The window is the time from the SMTP server's accept to the commit of the `sent` record.
    """
    kind = KINDS.get(event.event_type)
    if kind is None:
        raise PermanentError(
            f"The e-mail consumer does not handle {event.event_type} events. "
            "Remove the route in settings/routes.py; the event itself is fine."
        )
    message = render(kind, int(event.aggregate_id), orders)
    claimed = claim(kind=kind, event=event, message=message)
    if claimed is None:
        with transaction.atomic():
            delivery_begin(event_id=event.id, consumer=CONSUMER)
        return None
    notice_id, token = claimed
    message.extra_headers["Message-ID"] = message_id(
        notice_id=notice_id, kind=kind, order_id=int(event.aggregate_id), token=token
    )
    opened = False
    try:
        if connection is not None:
            connection.open()  # once per batch: later sends reuse it
            message.connection = connection
        opened = True
        message.send()
    except Exception as exc:
        # Give the lease back: the next attempt need not wait for it. A send the server certainly
        # did not take (no session, or a refusal) is not counted, so that `sends` above 1 means
        # "may have been sent twice".
        uncount = {"sends": F("sends") - 1} if not opened or not_taken(exc) else {}
        EmailNotice.objects.filter(pk=notice_id, status=EmailNotice.Status.SENDING).update(lease_until=None, **uncount)
        if connection is not None:
            connection.close()  # a broken session is not reused
        if isinstance(exc, smtplib.SMTPRecipientsRefused) or (
            isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500
        ):
            raise PermanentError(f"The SMTP server refused the {kind} for order {event.aggregate_id}: {exc}") from exc
        raise
    accepted = time.monotonic()
    with transaction.atomic(), db_connection.cursor() as cursor:
        if db_connection.vendor == "postgresql":
            cursor.execute(_SENT_POSTGRESQL, [notice_id])
        else:
            cursor.execute(_SENT_LOCAL_CLOCK, [timezone.now(), notice_id])
        delivery_begin(event_id=event.id, consumer=CONSUMER)
    window = time.monotonic() - accepted
    logger.info(
        "email: sent the %s for order %s to %s (event %s; recorded %.2f ms after the SMTP accept)",
        kind,
        event.aggregate_id,
        message.to[0],
        event.id,
        window * 1000,
    )
    return window
