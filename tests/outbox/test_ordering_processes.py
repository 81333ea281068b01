"""Ordered consumers under real processes: two relays with small batches and a worker with four
threads reorder one aggregate's events; the ordered consumer still handles each tally's events in
version order, through a retry in the middle of a sequence, and a dead event blocks only its tally
until it is replayed."""

import json
import random
from pathlib import Path

import pytest
from django.conf import settings

from outbox.models import Delivery, Event
from tests.outbox_app.models import SequenceEntry, Tally
from tests.processes import manage_run, processes
from tooling.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("empty_queues")]

ENV = {
    "REDIS_URL": settings.REDIS_URL,
    "OUTBOX_RELAY_POLL_SECONDS": "0.05",
    "OUTBOX_RELAY_BATCH_SIZE": "3",
    "OUTBOX_REDELIVERY_SECONDS": "3",
    "CONSUMER_MIN_BACKOFF_MS": "100",
    "CONSUMER_MAX_BACKOFF_MS": "300",
}


def versions_handled(tally: Tally) -> list[int]:
    """The versions the sequence consumer handled for `tally`, in the order it handled them."""
    return list(SequenceEntry.objects.filter(tally_id=tally.pk).order_by("id").values_list("version", flat=True))


def events_of(tally: Tally) -> list[Event]:
    return list(Event.objects.filter(aggregate_type="tally", aggregate_id=str(tally.pk)).order_by("aggregate_version"))


def status_json(env: dict[str, str]) -> dict:
    done = manage_run("outbox_status", "--json", env=env)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_two_relays_and_four_threads_keep_each_tally_in_order_and_a_dead_event_blocks_only_its_tally(
    tmp_path: Path,
) -> None:
    rng = random.Random(16)
    tallies = [Tally.objects.create(name=f"t{i}", count=0) for i in range(6)]
    poison = Tally.objects.create(name="poison", count=0)
    with processes(tmp_path, **ENV) as started:
        started.relay("one")
        started.relay("two")
        started.manage("rundramatiq", "--processes", "1", "--threads", "4", name="worker")
        # Interleaved changes, while the relays and the worker run: 12 per tally, some of them
        # failing their first attempt (a retry in the middle of a sequence).
        for step in range(12):
            for row in tallies:
                row.count = -2 if rng.random() < 0.15 else step + 1
                row.save()
            if step < 2:
                poison.count = step + 1
            elif step == 2:
                poison.count = -1  # version 4: poison while the tally's count is -1
            elif step < 6:
                poison.name = f"poison {step}"  # versions 5-7, behind it
            if step < 6:
                poison.save()
        expected = {row.pk: [e.aggregate_version for e in events_of(row)] for row in tallies}
        poison_events = events_of(poison)
        dead_event = poison_events[3]
        assert dead_event.aggregate_version == 4

        def flowed() -> bool:
            handled = SequenceEntry.objects.exclude(tally_id=poison.pk).count()
            return (
                handled >= sum(map(len, expected.values()))
                and Delivery.objects.filter(consumer="sequence", event_id=dead_event.id, status="dead").exists()
            )

        wait_until(flowed, timeout=120, what="every other tally's events handled, the poison one dead")
        for row in tallies:
            assert versions_handled(row) == expected[row.pk], row.name
        # The poison tally stopped at its dead event; what follows it waits (none handled).
        assert versions_handled(poison) == [1, 2, 3]
        behind = [e.id for e in events_of(poison)[4:]]
        wait_until(
            lambda: Delivery.objects.filter(consumer="sequence", event_id__in=behind, status="waiting").count()
            == len(behind),
            timeout=60,
            what="the poison tally's later events waiting",
        )

        poison.count = 100  # the fix; its own event waits behind the dead one too
        poison.save()
        behind.append(events_of(poison)[-1].id)
        wait_until(
            lambda: Delivery.objects.filter(consumer="sequence", event_id=behind[-1], status="waiting").exists(),
            timeout=60,
            what="the fix's event waiting",
        )

        env = {**started.env}
        blocked = status_json(env)["blocked_aggregates"]["sequence"]
        assert [(b["aggregate"], b["event_id"]) for b in blocked["aggregates"]] == [
            (f"tally:{poison.pk}", dead_event.id)
        ], blocked
        assert blocked["count"] == 1

        replayed = manage_run(
            "outbox_replay", "--event-id", str(dead_event.id), "--consumer", "sequence", "--reason", "fixed", env=env
        )
        assert replayed.returncode == 0, replayed.stderr
        every = [e.aggregate_version for e in events_of(poison)]
        wait_until(
            lambda: len(versions_handled(poison)) == len(every), timeout=60, what="the poison tally's rest, in order"
        )
        assert versions_handled(poison) == every
        assert status_json(env)["blocked_aggregates"].get("sequence", {"count": 0})["count"] == 0
