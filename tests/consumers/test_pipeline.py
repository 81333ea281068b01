"""The whole pipeline as real processes, on each broker: admin save → relay → broker → rundramatiq
workers → effects.

PostgreSQL, Redis and an SMTP server on loopback are real; every wait is bounded.
"""

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import psycopg
import pytest
from django.db import connection
from django.test import Client

from consumers.models import EmailNotice, StockMovement
from core import services
from core.models import Customer, Order, Product
from outbox.models import Delivery, Event
from outbox.relay import routing
from tests.brokers import SuiteBroker
from tests.consumers.helpers import stock
from tests.core.test_admin import ADD_URL, order_form
from tests.outbox.helpers import conninfo, lock_waiters, lock_waiters_terminate
from tests.processes import processes
from tests.smtp import Mailbox, smtp_server
from tooling.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

QUEUES = ("inventory", "email", "audit")


@pytest.fixture
def mail() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box


def env_for(mail: Mailbox, broker: SuiteBroker, **extra: str) -> dict[str, str]:
    return {
        **broker.env(),
        "OUTBOX_RELAY_POLL_SECONDS": "0.2",
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": mail.host,
        "EMAIL_PORT": str(mail.port),
        **extra,
    }


def routed_deliveries() -> int:
    return sum(len(routing.consumers_for(t)) for t in Event.objects.values_list("event_type", flat=True))


def all_done() -> bool:
    done = Delivery.objects.filter(status="done").count()
    return done == routed_deliveries() and not Delivery.objects.exclude(status="done").exists()


def queues_empty(broker: SuiteBroker) -> bool:
    return all(broker.waiting(queue) == 0 for queue in QUEUES)


def audit_counts(log: str) -> Counter[int]:
    return Counter(int(m) for m in re.findall(r' INFO audit \{.*?"id": (\d+),', log))


def stocked_products(products: list[Product]) -> list[Product]:
    for product in products:
        services.stock_receive(sku=product.sku, quantity=10, note="opening")
    return products


def test_an_admin_order_with_three_lines_moves_stock_sends_one_email_and_audits_once(
    tmp_path: Path,
    mail: Mailbox,
    admin_client: Client,
    customer: Customer,
    products: list[Product],
    broker: SuiteBroker,
) -> None:
    """The acceptance path, then the same messages delivered twice more and replayed: no change."""
    stocked_products(products)
    response = admin_client.post(ADD_URL, order_form(customer, [(p.pk, i + 1) for i, p in enumerate(products)]))
    assert response.status_code == 302, response.content.decode()[:2000]
    order = Order.objects.get()
    with processes(tmp_path, **env_for(mail, broker)) as procs:
        relay = procs.relay("r1")
        worker = procs.worker()
        wait_until(all_done, timeout=90, what="every routed delivery to be done")
        assert stock(*products) == [9, 8, 7]
        wait_until(lambda: mail.count() == 1, timeout=30, what="the confirmation e-mail")

        # Duplicates (a redelivery) and a replay (new messages for the same events).
        routing.load_actors()
        events = list(Event.objects.order_by("id").values_list("id", "event_type"))
        for _ in range(3):
            broker.enqueue(*routing.messages(events))
        wait_until(lambda: queues_empty(broker), timeout=60, what="the duplicate messages to be consumed")
        assert relay.stop() == 0
        assert worker.stop() == 0

    assert stock(*products) == [9, 8, 7]
    moves = StockMovement.objects.filter(source=f"order:{order.pk}")
    assert sorted((m.product_id, m.quantity) for m in moves) == [(p.pk, -(i + 1)) for i, p in enumerate(products)]
    assert mail.count() == 1
    body = mail.messages[0].get_content()
    assert mail.messages[0]["To"] == "ada@example.com"
    assert len(re.findall(r"^  \d+ x ", body, flags=re.MULTILINE)) == 3
    assert EmailNotice.objects.get().sends == 1
    counts = audit_counts(worker.output())
    assert set(counts) == set(Event.objects.values_list("id", flat=True))
    assert set(counts.values()) == {1}
    assert all_done()


def test_a_worker_killed_mid_actor_leaves_the_stock_moved_exactly_once(
    tmp_path: Path, mail: Mailbox, customer: Customer, products: list[Product], broker: SuiteBroker
) -> None:
    """SIGKILL while the inventory actor is inside its transaction (stock updated, ledger not yet
    written): nothing of it commits, the broker gives the message to the next worker (not the
    sweeper: its deadline is five minutes here), and the effect exists once."""
    stocked_products(products)
    services.order_create(
        customer=customer, lines=[services.LineRequest(sku=p.sku, quantity=2) for p in products], place=True
    )
    env = env_for(mail, broker, OUTBOX_REDELIVERY_SECONDS="300")
    with psycopg.connect(conninfo()) as blocker, processes(tmp_path, **env) as procs:
        relay = procs.relay("r1")
        wait_until(lambda: Delivery.objects.filter(consumer="inventory").exists(), timeout=60, what="publication")
        blocker.execute("LOCK TABLE inventory_movement IN EXCLUSIVE MODE")
        doomed = procs.worker("doomed")

        wait_until(
            lambda: lock_waiters("%inventory_movement%"),
            timeout=60,
            what="the inventory actor to block inside its transaction",
        )
        doomed.kill_group()
        lock_waiters_terminate("%inventory_movement%")
        blocker.rollback()
        survivor = procs.worker("survivor")
        wait_until(all_done, timeout=120, what="redelivery of everything to the new worker")
        assert relay.stop() == 0
        assert survivor.stop() == 0
    assert "Republished" not in relay.output()
    assert stock(*products) == [8, 8, 8]
    assert StockMovement.objects.filter(source__startswith="order:").count() == 3
    assert mail.count() == 1


def test_a_poison_event_is_retried_with_backoff_then_dead_while_others_flow(
    tmp_path: Path, mail: Mailbox, customer: Customer, products: list[Product], broker: SuiteBroker
) -> None:
    """Every attempt at one order's stock fails inside PostgreSQL: that delivery is retried, then
    dead with its error; the other orders, and the poison order's e-mail and audit, go through.
    A malformed message is dropped with a log line and blocks nothing."""
    stocked_products(products)
    poison = services.order_create(
        customer=customer, lines=[services.LineRequest(sku=products[0].sku, quantity=1)], place=True
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.source = 'order:{poison.pk}' THEN RAISE EXCEPTION 'stock refused by test trigger'; END IF; "
            "RETURN NEW; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER test_poison BEFORE INSERT ON inventory_movement FOR EACH ROW EXECUTE FUNCTION test_poison()"
        )
    for product in products[1:]:
        services.order_create(customer=customer, lines=[services.LineRequest(sku=product.sku, quantity=3)], place=True)
    env = env_for(mail, broker, CONSUMER_MAX_RETRIES="2", CONSUMER_MIN_BACKOFF_MS="200", CONSUMER_MAX_BACKOFF_MS="500")
    try:
        with processes(tmp_path, **env) as procs:
            relay = procs.relay("r1")
            worker = procs.worker()
            routing.load_actors()
            broker.enqueue(dramatiq.get_broker().get_actor("inventory").message("not a list of ids"))
            # The line's event is the one that moves stock (the order was saved before its line).
            poison_event = Event.objects.get(aggregate_id=str(poison.pk), event_type="order_line.added")
            wait_until(
                lambda: Delivery.objects.filter(consumer="inventory", status="dead").exists(),
                timeout=90,
                what="the poison delivery to be dead",
            )
            wait_until(lambda: mail.count() == 3, timeout=60, what="three confirmations")
            wait_until(
                lambda: Delivery.objects.filter(status="done").count() == routed_deliveries() - 1,
                timeout=60,
                what="every other delivery to be done",
            )
            assert relay.stop() == 0
            assert worker.stop() == 0
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS test_poison ON inventory_movement")
            cursor.execute("DROP FUNCTION IF EXISTS test_poison()")
    dead = Delivery.objects.get(consumer="inventory", status="dead")
    assert dead.event_id == poison_event.pk
    assert dead.attempts == 3
    assert "stock refused by test trigger" in dead.last_error
    assert "Traceback" in dead.last_error
    log = worker.output()
    assert "failed on attempt 1 of 3, will retry" in log
    assert "failed on attempt 2 of 3, will retry" in log
    assert "is dead after 3 attempts" in log
    assert "inventory expects one argument, a list of event ids" in log
    assert stock(*products) == [10, 7, 7]
    assert not StockMovement.objects.filter(source=f"order:{poison.pk}").exists()
