"""The chaos run, short form: real relays and workers SIGKILLed, Redis and PostgreSQL restarted.

`python manage.py outbox_chaos --json` runs the full form (20,000 orders); see docs/operations.md.
"""

import json

from django.db import connections

from tests.processes import manage_run

INVARIANTS = ("lost_events", "duplicate_effects", "stock_mismatches", "rolled_back_published", "version_regressions")


def test_nothing_is_lost_or_applied_twice_under_faults() -> None:
    try:
        done = manage_run(
            *("outbox_chaos", "--json", "--orders", "400", "--kill-interval", "1"),
            *("--redelivery-seconds", "5", "--drain-timeout", "240"),
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
    # The faults really happened.
    assert figures["kills"] >= 1
    assert figures["redis_restarts"] == 1
    assert figures["postgres_restarts"] == 1
    assert figures["transactions_rolled_back"] == 8
    assert figures["orders_placed"] == 392
    assert figures["orders_edited"] >= 1, "no line was edited: versions were not put to the test"
    # Every notice arrived; a duplicate (the one window the design admits) is counted, not hidden.
    notices = figures["orders_placed"] + figures["orders_cancelled"]
    assert figures["emails_received"] - figures["duplicate_emails"] == notices
