"""`python manage.py outbox_replay`: send failed or dead deliveries to their consumers again."""

import getpass
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.timezone import is_naive, make_aware
from tqdm import tqdm

from outbox.models import Delivery
from outbox.ops.replay import Criteria, ReplayRefused, in_flight_note, replay, select
from outbox.ops.replay import deliveries as count_deliveries

STATUSES = [choice for choice, _ in Delivery.Status.choices]
SHOWN = 50


def _when(option: str, text: str | None) -> datetime | None:
    if not text:
        return None
    moment = parse_datetime(text)
    if moment is None:
        day = parse_date(text)
        moment = datetime(day.year, day.month, day.day) if day else None
    if moment is None:
        raise CommandError(f"{option} takes a date or a time, e.g. 2026-11-25 or 2026-11-25T14:00 (got {text!r}).")
    return make_aware(moment) if is_naive(moment) else moment


class Command(BaseCommand):
    help = (
        "Send deliveries to their consumers again (default: failed and dead ones). Filters combine. "
        "Use --dry-run to see what would be sent; a real replay needs --reason and is recorded."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--consumer", action="append", default=[], help="Consumer (repeatable).")
        parser.add_argument("--type", action="append", default=[], dest="event_types", help="Event type (repeatable).")
        parser.add_argument(
            "--status",
            action="append",
            default=[],
            choices=STATUSES,
            help="Delivery status (repeatable; default failed and dead).",
        )
        parser.add_argument("--since", help="Events created at or after this date/time.")
        parser.add_argument("--until", help="Events created before this date/time.")
        parser.add_argument("--aggregate", default="", help="An aggregate (order:7) or an aggregate type (order).")
        parser.add_argument("--event-id", action="append", type=int, default=[], help="Event id (repeatable).")
        parser.add_argument("--delivery-id", action="append", type=int, default=[], help="Delivery id (repeatable).")
        parser.add_argument("--reason", default="", help="Why: recorded with the replay (required unless --dry-run).")
        parser.add_argument("--force", action="store_true", help="Include deliveries that are done.")
        parser.add_argument("--dry-run", action="store_true", help="Print what would be sent; send nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        statuses = options["status"] or ([] if options["force"] else ["failed", "dead"])
        criteria = Criteria(
            consumers=options["consumer"],
            event_types=options["event_types"],
            statuses=statuses,
            since=_when("--since", options["since"]),
            until=_when("--until", options["until"]),
            aggregate=options["aggregate"],
            event_ids=options["event_id"],
            delivery_ids=options["delivery_id"],
        )
        if not options["dry_run"] and not options["reason"].strip():
            raise CommandError('Say why with --reason "...": every replay is recorded with its reason.')
        deliveries = list(select(criteria).select_related("event"))
        if not deliveries:
            self.stdout.write("No delivery matches these filters; nothing to send.")
            return
        if options["dry_run"]:
            self._show(deliveries, force=options["force"])
        total = sum(1 for d in deliveries if d.status != "done" or options["force"])
        with tqdm(total=total, unit=" deliveries", disable=options["dry_run"] or total < 1000, file=self.stderr) as bar:
            try:
                summary = replay(
                    deliveries,
                    requested_by=f"command:{getpass.getuser()}",
                    reason=options["reason"] or "dry run",
                    source="command:outbox_replay",
                    criteria=criteria.as_dict(),
                    force=options["force"],
                    dry_run=options["dry_run"],
                    progress=bar.update,
                )
            except ReplayRefused as exc:
                raise CommandError(str(exc)) from exc
        per_consumer = ", ".join(f"{name}: {count}" for name, count in sorted(summary.by_consumer.items())) or "none"
        if summary.dry_run:
            self.stdout.write(f"Would send {count_deliveries(sum(summary.by_consumer.values()))} ({per_consumer}).")
        else:
            self.stdout.write(
                f"Sent {count_deliveries(summary.sent)} again ({per_consumer}); recorded as replay {summary.replay_id}."
            )
        if summary.in_flight:
            self.stdout.write(in_flight_note(summary))
        if summary.refused_done:
            self.stdout.write(
                f"Left out {count_deliveries(summary.refused_done)} already done: their consumer has applied them. "
                "Use --force to run them again anyway."
            )

    def _show(self, deliveries: list[Delivery], *, force: bool) -> None:
        self.stdout.write(
            f"{'delivery':>9} {'event':>9}  {'type':<22} {'aggregate':<16} {'consumer':<10} {'status':<9} error"
        )
        for delivery in deliveries[:SHOWN]:
            event = delivery.event
            error = (delivery.last_error.splitlines() or [""])[0][:60]
            mark = "" if delivery.status != "done" or force else "  (done: left out)"
            self.stdout.write(
                f"{delivery.id:>9} {delivery.event_id:>9}  {event.event_type:<22} "
                f"{event.aggregate_type + ':' + event.aggregate_id:<16} {delivery.consumer:<10} "
                f"{delivery.status:<9} {error}{mark}"
            )
        if len(deliveries) > SHOWN:
            self.stdout.write(f"… and {len(deliveries) - SHOWN} more.")
