"""`python manage.py outbox_backfill CONSUMER`: give a consumer the retained history, in order."""

import getpass
import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from outbox.management.dates import parse_when
from outbox.ops import backfill
from outbox.ops.backfill import BackfillRefused


class Command(BaseCommand):
    help = (
        "Send a consumer the retained events it has no delivery for (one declared after the fact), in "
        "order, while live traffic goes on. Resumes an unfinished backfill of the consumer; --dry-run "
        "counts what it would send."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("consumer", help="The consumer, as declared with @consumer.")
        parser.add_argument(
            "--since",
            help="Events after this event id (digits only), or created at or after this date/time (2026-11-25, "
            "2026-11-25T14:00). Default: every retained event.",
        )
        parser.add_argument(
            "--types", nargs="+", default=[], metavar="TYPE", help="Only these event types (default: all it takes)."
        )
        parser.add_argument("--rate", type=int, help="At most this many events per second (default: no limit).")
        parser.add_argument("--chunk", type=int, default=backfill.CHUNK, help="Events per transaction.")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be sent; send nothing.")
        parser.add_argument(
            "--abandon", action="store_true", help="Give up the consumer's unfinished backfill, and stop."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["consumer"]
        if options["rate"] is not None and options["rate"] < 1:
            raise CommandError(f"--rate is events per second, at least 1 (got {options['rate']}).")
        if not 1 <= options["chunk"] <= 10_000:
            raise CommandError(f"--chunk is events per transaction, from 1 to 10000 (got {options['chunk']}).")
        if options["abandon"]:
            given_up = backfill.abandon(name)
            if given_up is None:
                self.stdout.write(f"No backfill of {name} is unfinished; nothing to abandon.")
            else:
                self.stdout.write(
                    f"Abandoned backfill {given_up.pk} of {name} at event {given_up.cursor} of {given_up.upto}: "
                    f"{given_up.created} deliveries it created stay."
                )
            return
        after, since = self._since(options["since"])
        try:
            if options["dry_run"]:
                plan = backfill.plan(name, types=options["types"], after=after, since=since)
                if plan.after >= plan.upto:
                    self.stdout.write(f"No event after event {plan.after}: nothing to send to {name}.")
                    return
                types = ", ".join(plan.types) if options["types"] else "every type it takes"
                self.stdout.write(
                    f"Would send {plan.missing} of {plan.events} events ({types}; events {plan.after + 1} to "
                    f"{plan.upto}) to {name}; the other {plan.events - plan.missing} have a delivery to it already."
                )
                return
            record, resumed = backfill.begin(
                name,
                types=options["types"],
                after=after,
                since=since,
                rate=options["rate"],
                requested_by=f"command:{getpass.getuser()}",
            )
        except BackfillRefused as exc:
            raise CommandError(str(exc)) from exc
        if resumed:
            self.stdout.write(
                f"Resuming backfill {record.pk} of {name} at event {record.cursor} of {record.upto} "
                f"({record.created} sent, {record.skipped} skipped so far)."
            )
        else:
            self.stdout.write(f"Backfill {record.pk} of {name}: events {record.after + 1} to {record.upto}.")
        stopping = {"asked": False}

        def ask_stop(signum: int, frame: FrameType | None) -> None:
            stopping["asked"] = True

        previous = signal.signal(signal.SIGTERM, ask_stop)
        try:
            with tqdm(total=max(0, record.upto - record.cursor), unit=" events", file=self.stderr, disable=None) as bar:
                record = backfill.run(
                    record, chunk=options["chunk"], progress=bar.update, stop=lambda: stopping["asked"]
                )
        except BackfillRefused as exc:
            raise CommandError(str(exc)) from exc
        finally:
            signal.signal(signal.SIGTERM, previous)
        if record.status != record.Status.DONE:
            self.stdout.write(
                f"Stopped at event {record.cursor} of {record.upto}; run the command again to resume backfill "
                f"{record.pk}."
            )
            return
        self.stdout.write(
            f"Backfill {record.pk} of {name} done: {record.created} deliveries sent, {record.skipped} events "
            "skipped (a delivery to it existed)."
        )

    def _since(self, text: str | None) -> tuple[int | None, Any]:
        if not text:
            return None, None
        if text.strip().isdigit():
            return int(text), None
        try:
            return None, parse_when("--since", text)
        except CommandError:
            raise CommandError(
                f"--since takes an event id (digits only, e.g. 41000) or a date or a time (2026-11-25, "
                f"2026-11-25T14:00); got {text!r}."
            ) from None
