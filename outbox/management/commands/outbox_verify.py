"""`python manage.py outbox_verify`: check the event log's seals and checkpoints; name what was changed."""

import json
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from outbox.eventlog.checkpoints import Expected
from outbox.eventlog.sealing import verify


class Command(BaseCommand):
    help = (
        "Recompute every aggregate's seal chain and check the log against its signed checkpoints; report "
        "each event that was edited, removed or forged, and a log emptied or cut short. Exits 1 when it "
        "finds a problem."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--aggregate", help="Only this aggregate, e.g. order:7 (skips the whole-log checks).")
        parser.add_argument(
            "--unsealed-grace-minutes",
            type=float,
            default=5.0,
            help="Report events older than this that have no seal yet (default 5).",
        )
        parser.add_argument(
            "--expect",
            metavar="TOKEN",
            help="A checkpoint token printed by an earlier run and kept outside the database: the log must "
            "still hold what it counted.",
        )
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        aggregate = None
        if options["aggregate"]:
            kind, sep, ident = options["aggregate"].partition(":")
            if not sep or not kind or not ident:
                raise CommandError(f"--aggregate takes type:id, e.g. order:7 (got {options['aggregate']!r}).")
            aggregate = (kind, ident)
        if options["expect"]:
            if aggregate:
                raise CommandError("--expect checks the whole log; leave out --aggregate.")
            try:
                Expected.parse(options["expect"])
            except ValueError as e:
                raise CommandError(str(e)) from e
        report = verify(
            aggregate=aggregate,
            unsealed_grace=timedelta(minutes=options["unsealed_grace_minutes"]),
            expect=options["expect"],
        )
        problems = report.problems or []
        token = report.checkpoint.token if report.checkpoint else None
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "ok": not problems,
                        "events": report.events,
                        "aggregates": report.aggregates,
                        "checkpoint": token,
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
            if token:
                self.stdout.write(
                    f"Checkpoint: {token}  (keep it outside the database; `outbox_verify --expect` checks it later)"
                )
        if problems:
            raise SystemExit(1)
