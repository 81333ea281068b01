"""The benchmark command runs end to end and reports every figure (short form; no timing asserted)."""

import json
from pathlib import Path

import psycopg
import pytest

from tests.processes import manage_run

REPO = Path(__file__).resolve().parents[2]

FIGURES = [
    "save_overhead_ratio",
    "save_ms_outbox_on",
    "save_ms_outbox_off",
    "bulk_save_overhead_ratio",
    "bulk_save_ms_outbox_on",
    "bulk_save_ms_outbox_off",
    "relay_events_per_s",
    "relay_events_per_s_with_history",
    "relay_slowdown_with_history",
    "relay_rss_mb",
    "e2e_latency_ms_p50",
    "e2e_latency_ms_p99",
    "pipeline_events_per_s",
    "pipeline_events",
    "pipeline_seconds",
    "pipeline_drain_s_audit_log",
    "pipeline_drain_s_email",
    "pipeline_drain_s_inventory",
    "pipeline_emails_received",
    "email_duplicate_window_ms_p50",
    "email_duplicate_window_ms_p99",
    "eventlog_changelist_ms_p95",
    "eventlog_changelist_ms_p50",
    "aggregate_timeline_ms_p95",
    "aggregate_timeline_ms_p50",
    "backfill_events_per_s",
    "backfill_events",
    "backfill_seconds",
    "ordered_pipeline_ratio",
    "ordered_pipeline_events_per_s",
    "unordered_pipeline_events_per_s",
]


def test_outbox_bench_json_reports_every_figure_and_drops_its_database() -> None:
    """`outbox_bench --json` prints each figure as a positive number, with the machine's facts;
    the pipeline's workers handle every event, and the SMTP server receives every notice."""
    done = manage_run(
        *("outbox_bench", "--json", "--samples", "20", "--backlog", "300", "--history", "300"),
        *("--rss-backlog", "300", "--latency-seconds", "1", "--pipeline-orders", "30"),
        *("--email-window-samples", "20", "--eventlog-events", "2000", "--eventlog-requests", "2"),
        *("--backfill-events", "500", "--ordered-rounds", "1", "--relays-backlog", "300"),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for figure in FIGURES:
        assert isinstance(result[figure], (int, float)), figure
        assert result[figure] > 0, figure
    # The broker BROKER_URL (here REDIS_URL) selects, which every figure's relays published to.
    assert result["broker"] in {"redis", "rabbitmq"}
    assert result["machine"][result["broker"]]
    # 1, 2 and 4 relay processes each drained a backlog of 300 events, every event published once.
    by_relays = result["relay_events_per_s_by_relays"]
    assert set(by_relays) == {"1", "2", "4"}, by_relays
    assert all(isinstance(rate, int) and rate > 0 for rate in by_relays.values()), by_relays
    assert {n: sum(events) for n, events in result["relay_events_per_relay_by_relays"].items()} == {
        "1": 300,
        "2": 300,
        "4": 300,
    }
    # 30 confirmations, and a cancellation notice for one order in ten.
    assert result["pipeline_emails_received"] == 33
    assert result["pipeline_failed_deliveries"] == 0
    # One drain with every consumer ordered, one with none (a failed delivery in either fails the run).
    assert {arm: len(rates) for arm, rates in result["ordered_pipeline_rates"].items()} == {
        "unordered": 1,
        "ordered": 1,
    }
    assert {"email", "inventory", "audit_log"} <= set(result["ordered_pipeline_consumers"])
    # Every event-log page was requested and answered (a page that did not answer 200 fails the run).
    assert all(ms > 0 for ms in result["eventlog_changelist_ms_p95_by_page"].values())
    assert {"list", "type_rare", "actor_rare", "date_day", "search_event_uuid", "delivery_inventory_dead"} <= set(
        result["eventlog_changelist_ms_p95_by_page"]
    )
    assert result["parameters"]["eventlog_events"] == 2000
    # The new consumer got a delivery for each of the newest 500 events, and its messages were dropped.
    assert result["backfill_events"] == 500
    # The event log's deliveries have every status, after the relay figures' events as alone: the
    # delivery filters' pages were measured over done, failed, dead and in-flight ones.
    statuses = result["eventlog_deliveries_by_status"]
    assert set(statuses) == {"done", "failed", "dead", "published"}, statuses
    assert statuses["published"] < statuses["done"], statuses
    assert result["machine"]["database"].startswith("PostgreSQL")
    assert result["machine"]["autovacuum"] in {"on", "off"}
    # Each arm's median comes from three drains, each from a checkpoint (the suite runs as a superuser).
    assert [len(rates) for rates in result["relay_drain_rates"].values()] == [3, 3]
    assert all(rate > 0 for rates in result["relay_drain_rates"].values() for rate in rates)
    assert result["relay_drains_checkpointed"] is True
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        names = [row[0] for row in admin.execute("SELECT datname FROM pg_database")]
    assert not [name for name in names if name.endswith("_bench")]


@pytest.mark.parametrize("flag", ["--samples", "--pipeline-orders", "--pipeline-threads", "--eventlog-events"])
def test_outbox_bench_rejects_a_count_below_one(flag: str) -> None:
    """A count below one is refused with a message naming the flag."""
    done = manage_run("outbox_bench", flag, "0", timeout=60)
    assert done.returncode != 0
    assert f"{flag} must be at least 1" in done.stderr
