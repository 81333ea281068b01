"""`python manage.py outbox_chaos`: the fault-injection run and its invariant checks."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from tqdm import tqdm

from tooling.brokers import configured_kind
from tooling.chaos.run import ChaosError, Scale, run
from tooling.database import scratch_database

INVARIANTS = (
    "lost_events",
    "duplicate_effects",
    "stock_mismatches",
    "rolled_back_published",
    "version_regressions",
    "ordering_violations",
    "backfill_missing",
    "backfill_duplicates",
)


class Command(BaseCommand):
    help = (
        "Place orders while relays and workers are SIGKILLed at random, the broker is restarted once (the "
        "one BROKER_URL selects: Redis, a server of the run's own, its data lost; or this machine's RabbitMQ) "
        "and PostgreSQL once, and a consumer added halfway is backfilled; then check that nothing was lost, "
        "applied twice or out of order, and report how fast a dead worker's messages were handled "
        "(recovery_seconds_p99). Runs in a scratch database (<name>_chaos). Exits 1 if an invariant is broken."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--orders", type=int, default=20_000, help="Orders to place (default 20,000).")
        parser.add_argument("--relays", type=int, default=2, help="Relay processes (default 2).")
        parser.add_argument("--workers", type=int, default=2, help="Worker processes (default 2).")
        parser.add_argument("--kill-interval", type=float, default=3.0, help="Mean seconds between faults.")
        parser.add_argument("--redelivery-seconds", type=float, default=10.0, help="The relays' sweeper deadline.")
        parser.add_argument("--drain-timeout", type=float, default=600.0, help="Seconds allowed to drain.")
        parser.add_argument(
            "--recovery-probes",
            type=int,
            default=5,
            help="Workers SIGKILLed after the drain, each during a burst of orders, for recovery_seconds (default 5).",
        )
        parser.add_argument("--seed", type=int, default=1, help="Random seed for traffic and faults.")
        parser.add_argument(
            "--no-postgres-restart", action="store_true", help="Skip the PostgreSQL restart (another host's server)."
        )
        parser.add_argument(
            "--no-backfill", action="store_true", help="Skip the deploy halfway that adds a consumer and backfills it."
        )
        parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("orders", "relays", "workers", "recovery_probes"):
            if options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1 (got {options[name]}).")
        if connection.vendor != "postgresql":
            raise CommandError("The chaos run needs PostgreSQL: set DATABASE_URL (see README).")
        if not configured_kind():
            raise CommandError(
                "The chaos run needs a broker: set BROKER_URL=redis://127.0.0.1:6379/0 (it starts a Redis of its "
                "own beside it) or BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2F (it restarts that RabbitMQ)."
            )
        scale = Scale(
            orders=options["orders"],
            relays=options["relays"],
            workers=options["workers"],
            kill_interval=options["kill_interval"],
            redelivery_seconds=options["redelivery_seconds"],
            drain_timeout=options["drain_timeout"],
            restart_postgres=not options["no_postgres_restart"],
            backfill=not options["no_backfill"],
            recovery_probes=options["recovery_probes"],
            seed=options["seed"],
        )
        with (
            scratch_database(suffix="chaos"),
            tqdm(total=scale.orders, unit=" orders", disable=options["json"], file=self.stderr) as bar,
        ):
            try:
                figures = run(scale, progress=bar.update)
            except ChaosError as exc:
                raise CommandError(str(exc)) from exc
            connection.close()  # PostgreSQL was restarted: drop the scratch database on a fresh connection
        broken = [name for name in INVARIANTS if figures[name]] + ([] if figures["drained"] else ["drained"])
        if scale.backfill and not figures["backfill_finished"]:
            broken.append("backfill_finished")
        figures["ok"] = not broken
        if options["json"]:
            self.stdout.write(json.dumps(figures, indent=2))
        else:
            for key, value in figures.items():
                self.stdout.write(f"{key}: {value}")
            self.stdout.write("All invariants hold." if not broken else f"BROKEN: {', '.join(broken)}")
        if broken:
            raise SystemExit(1)
