"""`python manage.py outbox_verify`: check the event log's seals; name what was edited or removed."""

import json
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from outbox.sealing import verify


class Command(BaseCommand):
    help = (
        "Recompute every aggregate's seal chain and report each event that was edited or removed "
        "behind the application's back. Exits 1 when it finds a problem."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--aggregate", help="Only this aggregate, e.g. order:7.")
        parser.add_argument(
            "--unsealed-grace-minutes",
            type=float,
            default=5.0,
            help="Report events older than this that have no seal yet (default 5).",
        )
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        aggregate = None
        if options["aggregate"]:
            kind, sep, ident = options["aggregate"].partition(":")
            if not sep or not kind or not ident:
                raise CommandError(f"--aggregate takes type:id, e.g. order:7 (got {options['aggregate']!r}).")
            aggregate = (kind, ident)
        report = verify(aggregate=aggregate, unsealed_grace=timedelta(minutes=options["unsealed_grace_minutes"]))
        problems = report.problems or []
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "events": report.events,
                        "aggregates": report.aggregates,
                        "problems": [
                            {
                                "kind": p.kind,
                                "aggregate": p.aggregate,
                                "version": p.version,
                                "event_id": p.event_id,
                                "detail": p.detail,
                            }
                            for p in problems
                        ],
                    },
                    indent=2,
                )
            )
        else:
            for problem in problems:
                self.stdout.write(str(problem))
            verdict = f"{len(problems)} problems" if problems else "the chains hold"
            self.stdout.write(f"Verified {report.events} events in {report.aggregates} aggregates: {verdict}.")
        if problems:
            raise SystemExit(1)
