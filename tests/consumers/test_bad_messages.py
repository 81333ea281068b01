"""Bad messages on a real queue of each broker, read by a real worker process: each is dropped and
counted, none restarts the worker's consumer, and the good message behind them is applied.

Dramatiq's own consumer raised on an undecodable message; its worker then restarted the consumer
after 3 s and lost the messages it had prefetched, so the next order's stock moved only when the
sweeper published it again, a minute later.
"""

import json
import os
import re
from pathlib import Path
from uuid import uuid4

import dramatiq
import pytest
from django.conf import settings
from dramatiq import Message

from core import services
from core.models import Customer, Product
from outbox.models import Delivery, Event, MessageDrop
from outbox.relay import routing
from tests.brokers import SuiteBroker
from tests.consumers.helpers import stock
from tests.processes import database_url, manage_run, processes
from tooling.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("empty_queues")]


def encoded(queue: str, actor: object, args: object, kwargs: object = None, **fields: object) -> bytes:
    """A message's JSON body, every field as given (however wrong)."""
    body = {
        "queue_name": queue,
        "actor_name": actor,
        "args": args,
        "kwargs": kwargs or {},
        "options": {"redis_message_id": str(uuid4())},
        "message_id": str(uuid4()),
        "message_timestamp": 0,
        **fields,
    }
    return json.dumps(body).encode()


def order(customer: Customer, product: Product, *, since: int | None = None) -> Message[None]:
    """Place an order of one product; return the inventory consumer's message for its events (and
    for every event after `since`, when given)."""
    before = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
    services.order_create(customer=customer, lines=[services.LineRequest(sku=product.sku, quantity=1)], place=True)
    events = Event.objects.filter(id__gt=before if since is None else since).order_by("id")
    kinds = events.values_list("id", "event_type")
    return routing.message("inventory", [i for i, kind in kinds if "inventory" in routing.consumers_for(kind)])


def test_malformed_messages_ahead_of_an_order_are_dropped_and_the_order_moves_stock_promptly(
    tmp_path: Path, customer: Customer, stocked: list[Product], broker: SuiteBroker
) -> None:
    """Eleven bad messages (bad JSON, bad UTF-8, wrong shapes, an unknown actor, wrong arguments,
    a 30 MB argument, a line break to forge a log line) in front of a good one: the good one is
    applied within seconds (it took more than a minute), each bad one is in the dead-letter set
    and counted, and no log line carries more than a few hundred characters of any of them."""
    product = stocked[0]
    routing.load_actors()
    warm_up, measured = order(customer, product, since=0), order(customer, product)  # with the receipts
    # The undecodable ones last: in Dramatiq's consumer each took with it the messages fetched
    # in the same batch, the good one among them.
    bad = [
        encoded("inventory", "inventory", [["x" * 30_000_000]]),
        encoded("inventory", ["a", "list"], [[1]]),
        encoded("inventory", "no_such_actor", [[1]]),
        encoded("inventory", "inventory", [[1], [2]]),
        encoded("inventory", "inventory", [], {"bogus": 1}),
        encoded("inventory", "inventory", [[1]], options="not a dict"),
        b'{"queue_name": "inventory"}',
        b"[1, 2, 3]",
        b"\xff\xfe\x00 not utf-8",
        b"{not json\n2026-12-03 12:00:00,000 INFO outbox.consumer forged line",
        b"{not json",
    ]
    with processes(tmp_path, **broker.env()) as procs:
        worker = procs.worker()
        broker.enqueue(warm_up)
        wait_until(lambda: stock(product) == [9], timeout=90, what="the worker to start and apply the first order")
        for data in bad:
            broker.push_raw("inventory", data)
        broker.enqueue(measured)
        # Today's bound is generous: a stalled queue took more than 60 s (and, with no relay
        # running here, never recovers at all).
        wait_until(lambda: stock(product) == [8], timeout=10, what="the order behind the bad messages")
        wait_until(
            lambda: sum(MessageDrop.objects.values_list("messages", flat=True)) >= len(bad),
            timeout=10,
            what="every bad message to be counted",
        )
        assert worker.stop() == 0
    log = worker.output()
    assert "Restarting consumer" not in log
    assert not any(line.startswith("2026-12-03 12:00:00,000") for line in log.splitlines())
    assert max(len(line) for line in log.splitlines()) < 1000
    assert log.count("Dropped a message from queue inventory") == len(bad)
    counts = dict(MessageDrop.objects.values_list("reason", "messages"))
    assert counts == {"malformed": 9, "unknown_actor": 1, "oversized": 1}
    assert broker.dead_letters("inventory") == len(bad)
    assert broker.unacknowledged("inventory") == 0
    assert broker.queued("inventory") == []
    assert set(Delivery.objects.values_list("status", flat=True)) == {"done"}


def test_a_forged_message_of_unknown_ids_to_the_audit_queue_leaves_no_delivery_and_status_clean(
    tmp_path: Path, customer: Customer
) -> None:
    """20,000 ids in 200 KB (over the id cap: dropped whole), and 5,000 ids that name no event
    (under the cap: refused in one line): no delivery is created, and `outbox_status --check`
    stays clean, where it failed for good on 20,000 dead deliveries nothing could clear."""
    routing.load_actors()
    broker = dramatiq.get_broker()
    real = list(Event.objects.values_list("id", flat=True))
    start = 10**9  # ten-digit ids: 20,000 of them make the 200 KB message
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings.test", "DATABASE_URL": database_url()}
    with processes(tmp_path, REDIS_URL=settings.REDIS_URL, OUTBOX_RELAY_POLL_SECONDS="0.2") as procs:
        relay = procs.relay("r1")
        worker = procs.worker()
        broker.enqueue(routing.message("audit_log", list(range(start, start + 20_000))))
        broker.enqueue(routing.message("audit_log", [*real, *range(start, start + 5_000)]))
        wait_until(
            lambda: MessageDrop.objects.filter(consumer="audit_log").count() == 2,
            timeout=90,
            what="both forged messages to be refused",
        )
        wait_until(
            lambda: Delivery.objects.filter(consumer="audit_log", status="done").count() == len(real),
            timeout=60,
            what="the real events to be audited",
        )
        # While the relay beats: --check then names only what needs an operator.
        check = manage_run("outbox_status", "--check", env=env)
        assert relay.stop() == 0
        assert worker.stop() == 0
    assert check.returncode == 0, check.stdout + check.stderr
    assert set(Delivery.objects.values_list("event_id", flat=True)) <= set(real)
    log = worker.output()
    assert "more than OUTBOX_MESSAGE_MAX_IDS=10000" in log
    assert len(re.findall(r"5000 of the \d+ event ids in a message name no event", log)) == 1
    assert max(len(line) for line in log.splitlines()) < 1000
    drops = {(d.reason, d.messages, d.events) for d in MessageDrop.objects.filter(consumer="audit_log")}
    assert drops == {("oversized", 1, 0), ("unknown_events", 1, 5000)}
