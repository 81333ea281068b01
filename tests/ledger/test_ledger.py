"""An app of its own on the outbox (tests/ledger): its events, a transactional consumer and an
external one, through the outbox's test helpers and through a real relay and Dramatiq worker."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from outbox import RegistrationError, consumer, testing
from outbox.consume import declare
from outbox.models import Dedupe, Delivery
from tests.ledger.models import Invoice, LedgerEntry
from tests.processes import processes
from tests.smtp import Mailbox, smtp_server
from tooling.processes import wait_until


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with (
        smtp_server() as box,
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST=box.host, EMAIL_PORT=box.port
        ),
    ):
        yield box


@pytest.mark.django_db
def test_capture_names_the_events_a_block_emits_and_nothing_else() -> None:
    Invoice.objects.create(number="A-0", email="zoe@example.com", total=5)  # outside the block
    with testing.capture() as events:
        invoice = Invoice.objects.create(number="A-1", email="ada@example.com", total=100)
        invoice.total = 120
        invoice.save()
    assert events.types == ["invoice.issued", "invoice.changed"]
    assert events[0].payload["state"]["number"] == "A-1"
    assert events.of_type("invoice.changed")[0].payload["changes"]["total"] == {"old": 100, "new": 120}


@pytest.mark.django_db
def test_drain_applies_each_consumer_once_however_often_it_runs(mailbox: Mailbox) -> None:
    invoice = Invoice.objects.create(number="A-2", email="ada@example.com", total=100)
    drained = testing.drain()
    assert set(drained.done) >= {"ledger", "invoice_mail", "audit_log", "outbox_seal"}
    assert list(LedgerEntry.objects.values_list("invoice", "amount")) == [("A-2", 100)]
    assert mailbox.subjects() == ["Invoice A-2"]
    dedupe = Dedupe.objects.get(consumer="invoice_mail")
    assert (dedupe.key, dedupe.status, dedupe.sends) == (f"invoice:{invoice.pk}:issued", "sent", 1)
    assert mailbox.messages[0]["Message-ID"] == f"<{dedupe.token.hex}@ledger.example>"

    # The same messages delivered again (a redelivery, a replay) change nothing.
    ids = list(Delivery.objects.filter(consumer="ledger").values_list("event_id", flat=True))
    testing.deliver("ledger", ids)
    testing.deliver("invoice_mail", ids)
    testing.drain()
    assert LedgerEntry.objects.count() == 1
    assert mailbox.count() == 1

    invoice.delete()
    testing.drain()
    assert sorted(LedgerEntry.objects.values_list("amount", flat=True)) == [-100, 100]


@pytest.mark.django_db
def test_drain_fails_naming_the_delivery_that_died() -> None:
    Invoice.objects.create(number="A-3", email="not-reachable@example.com", total=7)
    with (
        pytest.raises(testing.Stuck, match=r"(?s)invoice_mail: event \d+: .*(Connection|refused|Errno)"),
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1", EMAIL_PORT=9
        ),
    ):
        testing.drain()
    assert LedgerEntry.objects.count() == 1  # the other consumer was not held up


def test_a_consumer_is_declared_once_and_with_a_known_kind() -> None:
    with pytest.raises(RegistrationError, match="declared twice"):
        consumer("ledger", events=["invoice.issued"])(lambda event: None)
    with pytest.raises(RegistrationError, match="kind must be one of"):
        consumer("x", events=["invoice.issued"], kind="eventually")
    with pytest.raises(RegistrationError, match="events must be a list"):
        consumer("x", events="invoice.issued")
    with pytest.raises(RegistrationError, match="settled is for transactional consumers"):
        consumer("x", events=["invoice.issued"], kind="external", settled=lambda ids: ids)


def test_a_consumer_of_a_type_nothing_emits_fails_the_check() -> None:
    consumer("typo_consumer", events=["invoice.isued"])(lambda event: None)
    try:
        with pytest.raises(SystemCheckError, match=r"(?s)outbox\.E004.*'typo_consumer' takes 'invoice\.isued'"):
            call_command("check")
    finally:
        declare.forget("typo_consumer")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"ledgr": {"enabled": False}}, r"outbox\.E005.*OUTBOX_CONSUMERS names 'ledgr', but no consumer is declared"),
        ({"ledger": {"queues": "books"}}, r"outbox\.E006.*OUTBOX_CONSUMERS\['ledger'\] has unknown keys \['queues'\]"),
        ({"ledger": "books"}, r"outbox\.E006.*OUTBOX_CONSUMERS\['ledger'\] has a str, not a dict"),
        ({"ledger": {"ordered": "false"}}, r"outbox\.E006.*OUTBOX_CONSUMERS\['ledger'\]\['ordered'\] is 'false'"),
        ({"ledger": {"on_dead": "drop"}}, r"outbox\.E006.*OUTBOX_CONSUMERS\['ledger'\]\['on_dead'\] is 'drop'"),
    ],
)
def test_settings_that_name_no_consumer_or_no_setting_fail_the_check(overrides: object, expected: str) -> None:
    """A typo in OUTBOX_CONSUMERS would otherwise leave the consumer as it was, silently."""
    with override_settings(OUTBOX_CONSUMERS=overrides), pytest.raises(SystemCheckError, match="(?s)" + expected):
        call_command("check")


@pytest.mark.django_db
def test_settings_switch_a_consumer_off_and_move_its_queue() -> None:
    with override_settings(OUTBOX_CONSUMERS={"invoice_mail": {"enabled": False}, "ledger": {"queue": "books"}}):
        from outbox.relay import routing

        assert "invoice_mail" not in routing.consumers_for("invoice.issued")
        assert routing.message("ledger", [1]).queue_name == "books"
    with override_settings(OUTBOX_CONSUMERS={"ledger": {"queues": "books"}}), pytest.raises(RegistrationError):
        routing.message("ledger", [1])


@pytest.mark.django_db(transaction=True)
def test_the_app_runs_through_a_real_relay_and_worker(tmp_path: Path, mailbox: Mailbox) -> None:
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    invoices = [Invoice.objects.create(number=f"B-{i}", email=f"c{i}@example.com", total=10 * i) for i in range(1, 6)]
    env = {
        "REDIS_URL": settings.REDIS_URL,
        "OUTBOX_RELAY_POLL_SECONDS": "0.2",
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": mailbox.host,
        "EMAIL_PORT": str(mailbox.port),
    }
    with processes(tmp_path, **env) as procs:
        relay = procs.relay("ledger-relay")
        worker = procs.worker()
        wait_until(lambda: LedgerEntry.objects.count() == 5, timeout=90, what="five ledger postings")
        wait_until(lambda: mailbox.count() == 5, timeout=60, what="five invoice e-mails")
        wait_until(
            lambda: not Delivery.objects.exclude(status="done").exists()
            and Delivery.objects.filter(consumer="outbox_seal").count() == 5,
            timeout=60,
            what="every delivery done, sealed included",
        )
        assert relay.stop() == 0
        assert worker.stop() == 0
    assert sorted(LedgerEntry.objects.values_list("amount", flat=True)) == [10, 20, 30, 40, 50]
    assert sorted(mailbox.subjects()) == sorted(f"Invoice {i.number}" for i in invoices)
    assert set(Dedupe.objects.values_list("status", "sends")) == {("sent", 1)}
