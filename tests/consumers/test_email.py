"""The e-mail consumer against a real SMTP server on loopback (aiosmtpd)."""

import time
from datetime import timedelta
from typing import Any

import dramatiq
import pytest
from django.db import IntegrityError, OperationalError
from django.db import connection as db_connection
from django.utils import timezone

from consumers import email
from consumers.models import EmailNotice
from core import services
from core.models import Customer, Order, Product
from outbox.consume import external
from outbox.consume.external import DedupeBusy, dedupe_claim
from outbox.consume.run import Attempt
from outbox.models import Dedupe, Delivery, Event
from outbox.testing import deliver
from tests.consumers.helpers import routed_ids
from tests.smtp import Mailbox
from tooling.processes import free_port


def place(customer: Customer, products: list[Product]) -> Order:
    lines = [services.LineRequest(sku=p.sku, quantity=q) for p, q in zip(products, (2, 1, 3), strict=True)]
    return services.order_create(customer=customer, lines=lines, place=True)


def send(event_ids: object) -> None:
    """Run the e-mail consumer over a message of these event ids, as its worker does."""
    deliver("email", event_ids)


def record() -> Dedupe:
    """The confirmation's dedupe record."""
    return Dedupe.objects.get(consumer="email")


def sending(order: Order, event: Event, *, lease_until: Any) -> Dedupe:
    """The confirmation's dedupe record as a worker leaves it while it sends: `sending`, under a lease."""
    return Dedupe.objects.create(
        consumer="email",
        key=f"order:{order.pk}:order_confirmation",
        event_id=event.pk,
        status="sending",
        sends=1,
        lease_until=lease_until,
    )


def test_a_placed_order_sends_one_confirmation_listing_its_lines(
    mailbox: Mailbox, customer: Customer, products: list[Product]
) -> None:
    order = place(customer, products)
    ids = routed_ids("email")
    send(ids)
    send(ids)  # a duplicate message
    assert mailbox.subjects() == [f"Your order #{order.pk} is confirmed"]
    message = mailbox.messages[0]
    assert message["To"] == "ada@example.com"
    body = message.get_content()
    assert "2 x KB-001 Keyboard at 89.00 = 178.00" in body
    assert "1 x MS-002 Mouse at 29.50 = 29.50" in body
    assert "3 x MN-003 Monitor at 249.00 = 747.00" in body
    assert "Total: 954.50" in body
    notice = EmailNotice.objects.get()
    assert (notice.kind, notice.recipient, notice.sends) == ("order_confirmation", "ada@example.com", 1)
    assert (record().key, record().status, record().sends) == (f"order:{order.pk}:order_confirmation", "sent", 1)
    assert notice.token is not None
    assert notice.token == record().token
    assert message["Message-ID"] == f"<notice-{notice.token.hex}@localhost>"
    assert Delivery.objects.get(consumer="email").status == "done"


def test_a_cancellation_sends_its_own_notice_once(
    mailbox: Mailbox, customer: Customer, products: list[Product]
) -> None:
    order = place(customer, products)
    services.order_set_status(order=order, status="cancelled")
    ids = routed_ids("email")
    send(ids)
    send(ids[::-1])
    assert sorted(mailbox.subjects()) == [
        f"Your order #{order.pk} has been cancelled",
        f"Your order #{order.pk} is confirmed",
    ]


def test_a_refused_message_is_dead_with_the_servers_reply_and_a_replay_sends_it(
    mailbox: Mailbox, customer: Customer, products: list[Product]
) -> None:
    place(customer, products)
    ids = routed_ids("email")
    mailbox.refuse_with = "554 5.7.1 Message rejected by test policy"
    send(ids)
    delivery = Delivery.objects.get(consumer="email")
    assert delivery.status == "dead"
    assert "refused" in delivery.last_error
    assert "Message rejected by test policy" in delivery.last_error
    assert (record().status, record().lease_until, record().sends) == ("sending", None, 0)  # nothing holds it now
    assert not EmailNotice.objects.exists()
    mailbox.refuse_with = ""
    send(ids)  # what outbox_replay sends: a new message
    assert mailbox.count() == 1
    assert Delivery.objects.get(consumer="email").status == "done"
    assert EmailNotice.objects.get().sends == record().sends == 1  # the refusal is not a send


def test_an_smtp_server_that_is_down_fails_the_delivery_with_the_error(
    settings: object, customer: Customer, products: list[Product]
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"  # type: ignore[attr-defined]
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # type: ignore[attr-defined]
    place(customer, products)
    send(routed_ids("email"))
    delivery = Delivery.objects.get(consumer="email")
    assert delivery.status == "dead"  # a direct call is its message's only attempt
    assert "ConnectionRefusedError" in delivery.last_error
    assert record().sends == 0  # nothing reached a server
    assert not EmailNotice.objects.exists()


def test_a_session_that_could_not_be_opened_is_not_counted_as_a_send(
    mailbox: Mailbox, settings: Any, customer: Customer, products: list[Product]
) -> None:
    """Any failure to open the SMTP session (here STARTTLS, which the server does not offer)
    means nothing was sent: the notice's `sends` stays 0."""
    settings.EMAIL_USE_TLS = True
    place(customer, products)
    send(routed_ids("email"))
    delivery = Delivery.objects.get(consumer="email")
    assert delivery.status == "dead"
    assert "STARTTLS" in delivery.last_error
    assert mailbox.count() == 0
    assert record().sends == 0


def test_a_notice_another_worker_is_sending_is_not_sent_twice(
    mailbox: Mailbox, customer: Customer, products: list[Product]
) -> None:
    order = place(customer, products)
    event = Event.objects.get(pk=routed_ids("email")[0])
    sending(order, event, lease_until=timezone.now() + timedelta(seconds=30))
    with pytest.raises(DedupeBusy, match="another worker is making the call"):
        dedupe_claim(consumer="email", key=f"order:{order.pk}:order_confirmation", event_id=event.pk)
    # In a worker with attempts left, the message is retried later; nothing is sent meanwhile.
    with pytest.raises(dramatiq.Retry):
        deliver("email", [event.pk], attempt=Attempt(1, 3))
    delivery = Delivery.objects.get(consumer="email")
    assert delivery.status == "failed"
    assert "another worker is making the call" in delivery.last_error
    assert mailbox.count() == 0
    assert record().sends == 1


def test_a_worker_that_died_after_the_smtp_accept_leaves_the_one_duplicate_window(
    mailbox: Mailbox, customer: Customer, products: list[Product]
) -> None:
    """A notice left `sending` with its lease run out: the SMTP server may have it, and it is sent
    again. `sends` counts it, and the delivery's outcome says how long that window was on this send."""
    order = place(customer, products)
    event = Event.objects.get(pk=routed_ids("email")[0])
    sending(order, event, lease_until=timezone.now() - timedelta(seconds=1))
    outcome = deliver("email", [event.pk])
    assert mailbox.count() == 1
    assert EmailNotice.objects.get().sends == 2
    assert (record().status, record().sends) == ("sent", 2)
    assert list(outcome.windows) == [event.pk]
    assert 0 < outcome.windows[event.pk] < 5


def test_a_notice_sent_again_after_the_window_carries_the_first_sends_message_id(
    mailbox: Mailbox, customer: Customer, products: list[Product]
) -> None:
    """The duplicate the design admits is the same message: one Message-ID per notice, on every
    send, so that the recipient's mail system can tell the copy from a second confirmation."""
    place(customer, products)
    ids = routed_ids("email")
    send(ids)
    # A worker that died after the SMTP accept, before recording it: the dedupe record is still
    # `sending` with its lease run out, no notice is recorded, and the delivery is not done.
    token = record().token
    Dedupe.objects.filter(consumer="email").update(status="sending", lease_until=timezone.now() - timedelta(seconds=1))
    EmailNotice.objects.all().delete()
    Delivery.objects.filter(consumer="email").update(status="published")
    send(ids)

    assert mailbox.count() == 2
    first, second = (m["Message-ID"] for m in mailbox.messages)
    assert first == second == f"<notice-{token.hex}@localhost>"
    assert EmailNotice.objects.get().sends == 2


def test_a_notice_recorded_before_is_brought_up_to_date_by_the_next_send(
    mailbox: Mailbox, customer: Customer, products: list[Product]
) -> None:
    """A database restored to between a notice's row and its dedupe record's `sent` (or edited by
    hand) still has the row: the next send's record updates it, in the same one statement."""
    place(customer, products)
    ids = routed_ids("email")
    send(ids)
    EmailNotice.objects.update(subject="stale", sends=7, recipient="old@example.com")
    Dedupe.objects.filter(consumer="email").update(status="sending", lease_until=timezone.now() - timedelta(seconds=1))
    Delivery.objects.filter(consumer="email").update(status="published")
    send(ids)

    notice = EmailNotice.objects.get()
    assert mailbox.count() == 2
    assert (notice.subject, notice.recipient, notice.sends) == (mailbox.subjects()[-1], customer.email, 2)
    assert notice.token == record().token
    assert notice.sent_at is not None


def test_each_notice_has_a_message_id_of_its_own_even_where_ids_repeat(
    mailbox: Mailbox, customer: Customer, products: list[Product]
) -> None:
    """A restored or copied database reuses notice and order ids: the token keeps each notice's
    Message-ID its own, so no mail system drops a new confirmation as an old one's copy."""
    order = place(customer, products)
    ids = routed_ids("email")
    send(ids)
    # The same ids again, as in a copy of the database taken before this notice was sent.
    first_ids = record().pk, EmailNotice.objects.get().pk
    Dedupe.objects.all().delete()
    EmailNotice.objects.all().delete()
    with db_connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('outbox_dedupe', 'id'), %s, false)", [first_ids[0]])
        cursor.execute("SELECT setval(pg_get_serial_sequence('email_notice', 'id'), %s, false)", [first_ids[1]])
    Delivery.objects.filter(consumer="email").update(status="published")
    send(ids)

    assert (record().pk, EmailNotice.objects.get().pk) == first_ids
    first, second = (m["Message-ID"] for m in mailbox.messages)
    assert first != second
    assert all(m["X-Order-Id"] == str(order.pk) for m in mailbox.messages)


def test_a_send_the_server_refused_is_not_counted_as_sent(
    mailbox: Mailbox, customer: Customer, products: list[Product]
) -> None:
    """`sends` counts the sends that may have reached the server: after a refusal (5xx or 4xx) and
    a send that went out, the notice says "sent once" and is not among those sent more than once."""
    place(customer, products)
    ids = routed_ids("email")
    mailbox.refuse_with = "451 4.3.0 Try again later"
    send(ids)
    assert (record().status, record().sends) == ("sending", 0)
    mailbox.refuse_with = ""
    Delivery.objects.filter(consumer="email").update(status="published")
    send(ids)

    assert mailbox.count() == 1
    assert (record().status, record().sends) == ("sent", 1)
    assert EmailNotice.objects.get().sends == 1


def test_the_lease_of_another_worker_is_judged_by_the_database_clock(
    mailbox: Mailbox, customer: Customer, products: list[Product], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers whose clocks are off still agree on leases: with this worker's clock an hour fast, a
    lease that PostgreSQL's clock says runs for another minute is still busy; with it an hour slow,
    one that ran out a second ago is taken over."""
    from django.db import connection

    order = place(customer, products)
    event = Event.objects.get(pk=routed_ids("email")[0])
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        db_now = cursor.fetchone()[0]
    held = sending(order, event, lease_until=db_now + timedelta(minutes=1))
    monkeypatch.setattr(timezone, "now", lambda: db_now + timedelta(hours=1))
    with pytest.raises(DedupeBusy):
        dedupe_claim(consumer="email", key=held.key, event_id=event.pk)
    assert mailbox.count() == 0

    Dedupe.objects.filter(pk=held.pk).update(lease_until=db_now - timedelta(seconds=1))
    monkeypatch.setattr(timezone, "now", lambda: db_now - timedelta(hours=1))
    send([event.pk])
    assert mailbox.count() == 1
    assert (record().status, record().sends) == ("sent", 2)


def test_a_notice_is_leased_for_email_notice_lease_seconds(
    settings: Any, customer: Customer, products: list[Product]
) -> None:
    """The e-mail consumer's lease is its own setting, on the database's clock."""
    settings.EMAIL_NOTICE_LEASE_SECONDS = 300
    order = place(customer, products)
    event = Event.objects.get(pk=routed_ids("email")[0])
    claimed = dedupe_claim(consumer="email", key=f"order:{order.pk}:order_confirmation", event_id=event.pk)
    assert claimed is not None
    assert claimed.sends == 1
    with db_connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM lease_until - statement_timestamp()) FROM outbox_dedupe")
        (left,) = cursor.fetchone()
    assert 295 < float(left) <= 300


def test_a_record_that_fails_once_in_the_mark_transaction_is_written_on_a_fresh_try(
    mailbox: Mailbox, customer: Customer, products: list[Product], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SMTP server accepted the notice, then the transaction that records it failed (a
    deadlock, a connection dropped during the call): the worker knows the e-mail went out, so it
    records it once more instead of leaving it to be sent again after the lease."""
    place(customer, products)
    ids = routed_ids("email")
    calls = {"n": 0}
    real = email.notice_record

    def flaky(row: list[Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("deadlock detected")
        real(row)

    monkeypatch.setattr(email, "notice_record", flaky)
    deliver("email", ids, attempt=Attempt(1, 6))
    assert mailbox.count() == 1
    assert (record().status, record().sends) == ("sent", 1)
    assert EmailNotice.objects.get().sends == 1
    assert Delivery.objects.get(consumer="email").status == "done"


def test_a_record_that_always_fails_marks_the_call_made_and_the_delivery_dead(
    mailbox: Mailbox, customer: Customer, products: list[Product], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer's record that cannot be written: the e-mail went out once, is marked made, and
    is never sent again; the delivery is dead saying so, and a replay after the fix marks it done."""
    place(customer, products)
    ids = routed_ids("email")

    def broken(row: list[Any]) -> None:
        raise IntegrityError("value too long for type character varying(200)")

    with monkeypatch.context() as patched:
        patched.setattr(email, "notice_record", broken)
        deliver("email", ids, attempt=Attempt(1, 3))
        delivery = Delivery.objects.get(consumer="email")
        assert delivery.status == "dead"
        assert "was made, but recording it failed" in delivery.last_error
        assert (record().status, record().sends) == ("sent", 1)
        Dedupe.objects.filter(consumer="email").update(lease_until=timezone.now() - timedelta(seconds=1))
        deliver("email", ids, attempt=Attempt(1, 3))  # a replay: a new message
    assert mailbox.count() == 1
    assert Delivery.objects.get(consumer="email").status == "done"


def test_a_call_that_outlived_its_lease_does_not_release_the_lease_of_the_worker_that_took_over(
    customer: Customer, products: list[Product]
) -> None:
    """Worker A's call outlives its lease and worker B takes the key over. A's call then fails: A
    gives back its own lease only, so B's holds and no third worker calls while B is calling."""
    order = place(customer, products)
    event_id = routed_ids("email")[0]
    key = f"order:{order.pk}:order_confirmation"
    a = dedupe_claim(consumer="email", key=key, event_id=event_id, lease=0.05)
    assert a is not None
    time.sleep(0.2)
    b = dedupe_claim(consumer="email", key=key, event_id=event_id, lease=60)
    assert b is not None
    assert b.sends == 2
    external._release("email", a, uncount=True)
    with pytest.raises(DedupeBusy):
        dedupe_claim(consumer="email", key=key, event_id=event_id, lease=60)
    assert record().sends == 2
    external._release("email", b, uncount=True)  # B's own release does give the lease back
    assert (record().lease_until, record().sends) == (None, 1)


def test_a_notice_that_could_not_be_written_is_not_counted_as_a_send(
    mailbox: Mailbox, customer: Customer, products: list[Product], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error before any SMTP session (reading the order, a deleted order) sends nothing and
    counts nothing: `sends` stays the number of sends that may have reached the server."""
    place(customer, products)
    ids = routed_ids("email")
    real = email.render
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(*args, **kwargs)

    monkeypatch.setattr(email, "render", flaky)
    with pytest.raises(dramatiq.Retry):
        deliver("email", ids, attempt=Attempt(1, 6))
    assert (mailbox.count(), record().sends) == (0, 0)
    deliver("email", ids, attempt=Attempt(2, 6))
    assert mailbox.count() == 1
    assert EmailNotice.objects.get().sends == record().sends == 1


def test_a_notice_for_a_deleted_order_is_dead_and_not_counted_as_a_send(
    mailbox: Mailbox, customer: Customer, products: list[Product]
) -> None:
    order = place(customer, products)
    ids = routed_ids("email")
    Order.objects.filter(pk=order.pk).delete()
    deliver("email", ids)
    delivery = Delivery.objects.get(consumer="email")
    assert delivery.status == "dead"
    assert "no longer exists" in delivery.last_error
    assert (mailbox.count(), record().sends) == (0, 0)


def test_a_cancellation_waits_for_its_orders_confirmation_that_is_retried(
    mailbox: Mailbox, customer: Customer, products: list[Product]
) -> None:
    """The e-mail consumer is ordered: while the confirmation waits for its retry, the cancellation
    that reached a worker first waits too, and is released (sent after it) when the retry succeeds."""
    order = place(customer, products)
    services.order_set_status(order=order, status="cancelled")
    confirmation, cancellation = routed_ids("email")
    mailbox.refuse_with = "451 4.3.0 Try again later"
    with pytest.raises(dramatiq.Retry):
        deliver("email", [confirmation], attempt=Attempt(1, 6))
    assert Delivery.objects.get(consumer="email", event_id=confirmation).status == "failed"
    assert deliver("email", [cancellation], attempt=Attempt(1, 6)).waiting == [cancellation]
    assert Delivery.objects.get(consumer="email", event_id=cancellation).status == "waiting"
    assert mailbox.count() == 0
    mailbox.refuse_with = ""
    assert deliver("email", [confirmation], attempt=Attempt(2, 6)).released == [cancellation]
    assert deliver("email", [cancellation], attempt=Attempt(1, 6)).done == [cancellation]  # the released message
    assert mailbox.subjects() == [f"Your order #{order.pk} is confirmed", f"Your order #{order.pk} has been cancelled"]
