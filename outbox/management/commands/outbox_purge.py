"""`python manage.py outbox_purge --older-than 90d`: delete settled events, optionally archived."""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from outbox.eventlog.purge import parse_age, purge_settled


class Command(BaseCommand):
    help = (
        "Delete settled events (published, done by every consumer, sealed) older than --older-than, in "
        "batches; never a pending, failed or dead one. --archive appends them to a JSON Lines file first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", required=True, help="Age of the events to purge: 90d, 12h, 30m, 45s.")
        parser.add_argument("--batch-size", type=int, default=5000, help="Events deleted per transaction.")
        parser.add_argument("--archive", type=Path, help="Append the purged events to this JSON Lines file first.")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be purged; delete nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            older_than = parse_age(options["older_than"])
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from exc
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1 (got {options['batch_size']}).")
        archive: Path | None = options["archive"]
        if archive is not None and not archive.parent.is_dir():
            raise CommandError(f"--archive: the folder {archive.parent} does not exist. Create it, or choose another.")
        with tqdm(unit=" events", disable=options["verbosity"] < 1 or options["dry_run"], file=self.stderr) as bar:
            summary = purge_settled(
                older_than=older_than,
                batch_size=options["batch_size"],
                archive=archive,
                dry_run=options["dry_run"],
                progress=bar.update,
            )
        verb = "Would purge" if summary.dry_run else "Purged"
        self.stdout.write(
            f"{verb} {summary.events} settled events created before {summary.cutoff:%Y-%m-%d %H:%M:%S %Z} "
            f"in {summary.batches} batches."
        )
        if summary.archive and not summary.dry_run:
            self.stdout.write(f"Archived them to {summary.archive}.")
        if summary.kept_unsettled:
            self.stdout.write(
                f"Kept {summary.kept_unsettled} older events that are not settled (pending, not done by a "
                "consumer, or not yet sealed): see outbox_status, and replay what is dead."
            )
