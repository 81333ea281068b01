"""`python manage.py outbox_bench [--json]`: measure the figures in docs/benchmarks.md."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.bench import bench_run


class Command(BaseCommand):
    help = (
        "Run the benchmark suite on a scratch database (<database>_bench, created and dropped) and "
        "print every figure. Use PostgreSQL: figures measured on SQLite say nothing about production."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the figures as one JSON object.")
        parser.add_argument(
            "--samples", type=int, default=1500, help="Saves timed with the outbox on, and as many off (default 1500)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["samples"] < 1:
            raise CommandError(f"--samples must be at least 1 (got {options['samples']}).")
        result = bench_run(samples=options["samples"])
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2))
            return
        for key, value in result.items():
            self.stdout.write(f"{key}: {value}")
