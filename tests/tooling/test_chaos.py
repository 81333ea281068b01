"""The chaos run, short form, on each broker: real relays and workers SIGKILLed, the broker and
PostgreSQL restarted.

`python manage.py outbox_chaos --json` runs the full form (20,000 orders); see docs/operations.md.
"""

import json
import os
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from outbox.models import Delivery, Event
from tests.brokers import brokers
from tests.outbox_app.models import Tally
from tests.processes import manage_run
from tooling.chaos.checks import check
from tooling.management.commands.outbox_chaos import INVARIANTS
from tooling.models import BackfillReceipt
from tooling.processes import NoticeCounter


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_nothing_is_lost_or_applied_twice_under_faults(kind: str) -> None:
    """On each broker: four relays and two worker processes, SIGKILLed at random, the broker and
    PostgreSQL restarted once each."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings.test", **brokers()[kind].env()}
    try:
        done = manage_run(
            *("outbox_chaos", "--json", "--orders", "400", "--kill-interval", "1"),
            *("--relays", "4", "--workers", "2", "--recovery-probes", "2"),
            *("--redelivery-seconds", "5", "--drain-timeout", "240"),
            env=env,
            timeout=600,
        )
    finally:
        connections.close_all()  # PostgreSQL was restarted: this process reconnects on its next query
    assert done.stdout.strip(), done.stderr[-4000:]
    figures = json.loads(done.stdout)
    assert done.returncode == 0, json.dumps(figures, indent=2) + done.stderr[-3000:]
    for name in INVARIANTS:
        assert figures[name] == 0, f"{name}: {figures}"
    assert figures["drained"] is True
    assert figures["ok"] is True
    # The faults really happened, on the broker asked for, at the scale asked for.
    assert (figures["broker"], figures["relays"], figures["workers"]) == (kind, 4, 2)
    assert figures["kills"] >= 1
    assert figures["broker_restarts"] == 1
    assert figures["postgres_restarts"] == 1
    # A dead worker's messages went to another worker: measured after at least one worker kill.
    assert figures["worker_kills"] >= 1
    assert figures["recovery_samples"] >= 1, figures
    assert figures["recovery_seconds_p99"] is not None
    assert "recovery_under_traffic_seconds_p99" in figures
    # The e-mail consumer is ordered; the consumer added halfway got every event, its backfill
    # SIGKILLed once and resumed.
    assert "email" in figures["ordered_consumers"]
    assert figures["backfill_finished"] is True
    assert figures["backfill_kills"] == 1
    assert figures["backfill_runs"] >= 2
    assert figures["backfill_receipts"] == figures["events"]
    assert figures["transactions_rolled_back"] == 8
    assert figures["orders_placed"] == 392
    assert figures["orders_edited"] >= 1, "no line was edited: versions were not put to the test"
    # Every notice arrived; a duplicate (the one window the design admits) is counted, not hidden.
    notices = figures["orders_placed"] + figures["orders_cancelled"] + figures["recovery_probe_orders"]
    assert figures["emails_received"] - figures["duplicate_emails"] == notices


@pytest.mark.django_db(transaction=True)
def test_the_checks_count_an_ordered_consumer_finishing_out_of_order_and_a_backfill_gap() -> None:
    """The invariants the short run reports as 0 do count what they are about."""
    row = Tally.objects.create(name="checked", count=0)
    row.count = 1
    row.save()
    first, second = Event.objects.filter(aggregate_type="tally", aggregate_id=str(row.pk)).order_by("id")
    now = timezone.now()
    Delivery.objects.create(event=first, consumer="sequence", status="done", done_at=now)
    Delivery.objects.create(event=second, consumer="sequence", status="done", done_at=now - timedelta(seconds=1))
    BackfillReceipt.objects.create(event_id=second.id)
    BackfillReceipt.objects.create(event_id=second.id)
    counter = NoticeCounter()
    counter.arrivals = {"7": ["order_cancellation", "order_confirmation"], "8": ["order_confirmation"]}

    figures = check(0, counter, backfilled=True)

    assert "sequence" in figures["ordered_consumers"]
    assert figures["ordering_violations"] == 2  # the tally's second event, and order 7's notices
    assert figures["backfill_missing"] == 1  # the first event
    assert figures["backfill_duplicates"] == 1
