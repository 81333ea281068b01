"""Migration 0006: the e-mail consumer's dedupe state moves into the outbox's dedupe records."""

import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from consumers.models import EmailNotice
from outbox.models import Dedupe

pytestmark = pytest.mark.django_db(transaction=True)

INSERT = (
    "INSERT INTO email_notice (order_id, kind, event_id, recipient, subject, status, sends, token, lease_until, "
    "created_at, sent_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def test_notices_become_dedupe_records_and_those_in_flight_are_sent_again() -> None:
    call_command("migrate", "consumers", "0005", verbosity=0)
    now = timezone.now()
    lease = now + timedelta(seconds=90)
    token = uuid.uuid4()
    try:
        with connection.cursor() as cursor:
            # Sent, with a token; sent twice (the duplicate window), from before tokens existed;
            # and one a worker was sending when the upgrade began.
            cursor.execute(
                INSERT, [7, "order_confirmation", 70, "a@example.com", "s", "sent", 1, token, None, now, now]
            )
            cursor.execute(INSERT, [7, "order_cancellation", 71, "a@example.com", "s", "sent", 2, None, None, now, now])
            cursor.execute(
                INSERT, [8, "order_confirmation", 80, "b@example.com", "s", "sending", 1, None, lease, now, None]
            )
    finally:
        call_command("migrate", verbosity=0)  # every app: what migrating back unapplied

    records = {r.key: r for r in Dedupe.objects.filter(consumer="email")}
    assert set(records) == {"order:7:order_confirmation", "order:7:order_cancellation", "order:8:order_confirmation"}
    sent = records["order:7:order_confirmation"]
    assert (sent.status, sent.sends, sent.token, sent.event_id) == ("sent", 1, token, 70)
    twice = records["order:7:order_cancellation"]
    assert (twice.status, twice.sends) == ("sent", 2)
    in_flight = records["order:8:order_confirmation"]
    assert (in_flight.status, in_flight.sends, in_flight.lease_until) == ("sending", 1, lease)
    # email_notice keeps the notices the SMTP server accepted, with their dedupe records' tokens.
    notices = {(n.order_id, n.kind): n for n in EmailNotice.objects.all()}
    assert set(notices) == {(7, "order_confirmation"), (7, "order_cancellation")}
    assert notices[(7, "order_confirmation")].token == token
    assert notices[(7, "order_cancellation")].token == twice.token
    assert notices[(7, "order_cancellation")].sends == 2


def test_migrating_back_and_forward_again_keeps_each_notice_in_flight() -> None:
    """Back to 0005, a notice still `sending` in the dedupe records gets its row back with its
    lease and sends; forward again, the dedupe record takes the notice's state."""
    lease = timezone.now() + timedelta(seconds=90)
    token = uuid.uuid4()
    Dedupe.objects.create(
        consumer="email",
        key="order:9:order_confirmation",
        event_id=90,
        status="sending",
        sends=2,
        token=token,
        lease_until=lease,
    )
    call_command("migrate", "consumers", "0005", verbosity=0)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT order_id, kind, status, sends, token, lease_until FROM email_notice")
            rows = cursor.fetchall()
            assert rows == [(9, "order_confirmation", "sending", 2, token, lease)]
            # The old code's worker takes it over once the lease ran out, and sends it.
            cursor.execute("UPDATE email_notice SET status = 'sent', sends = 3, lease_until = NULL")
    finally:
        call_command("migrate", verbosity=0)  # every app: what migrating back unapplied
    again = Dedupe.objects.get(consumer="email")
    assert (again.status, again.sends, again.token, again.lease_until) == ("sent", 3, token, None)
    assert EmailNotice.objects.get().sends == 3
