"""`python manage.py outbox_bench [--json]`: measure the figures in docs/benchmarks.md."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from core.bench import bench_run


class Command(BaseCommand):
    help = (
        "Run the benchmark suite on a scratch database (<database>_bench, created and dropped) and "
        "print every figure. Use PostgreSQL: figures measured on SQLite say nothing about production."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the figures as one JSON object.")
        parser.add_argument("--orders", type=int, default=200, help="Orders per timed block (default 200).")
        parser.add_argument("--rounds", type=int, default=15, help="Alternating on/off rounds (default 15).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["orders"] < 1 or options["rounds"] < 1:
            self.stderr.write("--orders and --rounds must be at least 1.")
            raise SystemExit(2)
        result = bench_run(orders_per_block=options["orders"], rounds=options["rounds"])
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2))
            return
        for key, value in result.items():
            self.stdout.write(f"{key}: {value}")
