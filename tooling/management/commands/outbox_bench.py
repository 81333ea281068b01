"""`python manage.py outbox_bench [--json]`: measure the figures in docs/benchmarks.md."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tooling.bench import pipeline as bench_pipeline
from tooling.bench.suite import GROUPS, bench_run


class Command(BaseCommand):
    help = (
        "Run the benchmark suite on a scratch database (<database>_bench, created and dropped) and "
        "print every figure. Use PostgreSQL: figures measured on SQLite say nothing about production."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the figures as one JSON object.")
        parser.add_argument(
            "--only",
            default=",".join(GROUPS),
            help=f"Comma-separated groups of figures to run, of {', '.join(GROUPS)} (default: all).",
        )
        parser.add_argument(
            "--samples", type=int, default=1500, help="Saves timed with the outbox on, and as many off (default 1500)."
        )
        parser.add_argument("--backlog", type=int, default=100_000, help="Events the relay drains (default 100000).")
        parser.add_argument(
            "--history", type=int, default=5_000_000, help="Settled events added for the slowdown (default 5000000)."
        )
        parser.add_argument(
            "--rss-backlog", type=int, default=1_000_000, help="Backlog for the memory figure (default 1000000)."
        )
        parser.add_argument("--batch-size", type=int, default=2000, help="The relay's batch size (default 2000).")
        parser.add_argument(
            "--relays-backlog",
            type=int,
            default=100_000,
            help="Events drained by 1, 2 and 4 relay processes, each in turn (default 100000).",
        )
        parser.add_argument(
            "--latency-seconds",
            type=float,
            default=10.0,
            help="Seconds of traffic at 100 events/s for the end-to-end latency (default 10).",
        )
        parser.add_argument(
            "--pipeline-orders",
            type=int,
            default=2000,
            help="Orders placed (3 lines, 1 in 10 cancelled) whose events the pipeline drains (default 2000).",
        )
        parser.add_argument(
            "--pipeline-processes",
            type=int,
            default=bench_pipeline.PROCESSES,
            help=f"Processes of the pipeline's e-mail and audit-log worker (default {bench_pipeline.PROCESSES}).",
        )
        parser.add_argument(
            "--pipeline-threads",
            type=int,
            default=bench_pipeline.THREADS,
            help=f"Threads per process of that worker (default {bench_pipeline.THREADS}).",
        )
        parser.add_argument(
            "--pipeline-inventory-threads",
            type=int,
            default=bench_pipeline.INVENTORY_THREADS,
            help=f"Threads of the pipeline's inventory worker (default {bench_pipeline.INVENTORY_THREADS}).",
        )
        parser.add_argument(
            "--email-window-samples",
            type=int,
            default=200,
            help="Order confirmations timed for the e-mail duplicate window (default 200).",
        )
        parser.add_argument(
            "--eventlog-events",
            type=int,
            default=5_000_000,
            help="Events in the log whose admin pages are timed (default 5000000).",
        )
        parser.add_argument(
            "--backfill-events",
            type=int,
            default=1_000_000,
            help="Retained events a new consumer is backfilled over (default 1000000).",
        )
        parser.add_argument(
            "--ordered-rounds",
            type=int,
            default=2,
            help="Drains of the pipeline with every consumer ordered, and as many without, interleaved (default 2).",
        )
        parser.add_argument(
            "--eventlog-requests",
            type=int,
            default=20,
            help="Timed requests per event-log page, after one untimed (default 20).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        positive = (
            "samples",
            "backlog",
            "rss_backlog",
            "batch_size",
            "relays_backlog",
            "latency_seconds",
            "pipeline_orders",
            "pipeline_processes",
            "pipeline_threads",
            "pipeline_inventory_threads",
            "email_window_samples",
            "eventlog_events",
            "eventlog_requests",
            "backfill_events",
            "ordered_rounds",
        )
        for flag in positive:
            if options[flag] < 1:
                raise CommandError(f"--{flag.replace('_', '-')} must be at least 1 (got {options[flag]}).")
        groups = [g.strip() for g in options["only"].split(",") if g.strip()]
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown or not groups:
            raise CommandError(f"--only takes groups among {', '.join(GROUPS)} (got {options['only']!r}).")
        if options["history"] < 0:
            raise CommandError(f"--history cannot be negative (got {options['history']}).")
        result = bench_run(
            samples=options["samples"],
            backlog=options["backlog"],
            history=options["history"],
            rss_backlog=options["rss_backlog"],
            batch_size=options["batch_size"],
            latency_seconds=options["latency_seconds"],
            pipeline_orders=options["pipeline_orders"],
            pipeline_processes=options["pipeline_processes"],
            pipeline_threads=options["pipeline_threads"],
            pipeline_inventory_threads=options["pipeline_inventory_threads"],
            email_window_samples=options["email_window_samples"],
            eventlog_events=options["eventlog_events"],
            eventlog_requests=options["eventlog_requests"],
            backfill_events=options["backfill_events"],
            ordered_rounds=options["ordered_rounds"],
            relays_backlog=options["relays_backlog"],
            groups=groups,
        )
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2))
            return
        for key, value in result.items():
            self.stdout.write(f"{key}: {value}")
