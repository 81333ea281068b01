"""`python manage.py outbox_replay`: send failed or dead deliveries to their consumers again."""

import dataclasses
import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from outbox.consume.declare import ALL, NoSuchConsumer, enabled_consumer
from outbox.management.dates import parse_when
from outbox.models import Delivery, Event
from outbox.ops.replay import Criteria, ReplayRefused, deliveries_for, events_select, in_flight_note, replay, select
from outbox.ops.replay import deliveries as count_deliveries

STATUSES = [choice for choice, _ in Delivery.Status.choices]
SHOWN = 50
# Events one `--to` replay sends at most: more is a backfill's work, throttled and resumable.
TO_LIMIT = 10_000


class Command(BaseCommand):
    help = (
        "Send deliveries to their consumers again (default: failed and dead ones). Filters combine. "
        "With --to CONSUMER, send the events the filters select to that consumer, creating the deliveries "
        "it has none of. Use --dry-run to see what would be sent; a real replay needs --reason and is recorded."
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
        parser.add_argument(
            "--to",
            metavar="CONSUMER",
            default="",
            help="Send the selected events to this consumer, with deliveries created where it had none "
            "(an event from before the consumer existed or took its type). Select events with --event-id, "
            "--type, --aggregate, --since or --until.",
        )
        parser.add_argument("--force", action="store_true", help="Include deliveries that are done.")
        parser.add_argument("--dry-run", action="store_true", help="Print what would be sent; send nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        statuses = options["status"] or ([] if options["force"] else ["failed", "dead"])
        criteria = Criteria(
            consumers=options["consumer"],
            event_types=options["event_types"],
            statuses=statuses,
            since=parse_when("--since", options["since"]),
            until=parse_when("--until", options["until"]),
            aggregate=options["aggregate"],
            event_ids=options["event_id"],
            delivery_ids=options["delivery_id"],
        )
        if not options["dry_run"] and not options["reason"].strip():
            raise CommandError('Say why with --reason "...": every replay is recorded with its reason.')
        if options["to"]:
            self._to(options["to"], criteria, options)
            return
        deliveries = list(select(criteria).select_related("event"))
        if not deliveries:
            self.stdout.write("No delivery matches these filters; nothing to send.")
            return
        if options["dry_run"]:
            self._show(deliveries, force=options["force"])
        self._replay(deliveries, criteria, options)

    def _replay(self, deliveries: list[Delivery], criteria: Criteria, options: dict[str, Any]) -> None:
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

    def _to(self, name: str, criteria: Criteria, options: dict[str, Any]) -> None:
        """Send the selected events to consumer `name`, creating the deliveries it lacks."""
        try:
            declared = enabled_consumer(name)
        except NoSuchConsumer as exc:
            raise CommandError(f"--to: {exc} Nothing was sent.") from None
        if options["consumer"] or options["status"] or options["delivery_id"]:
            raise CommandError(
                "--to sends events, chosen by --event-id, --type, --aggregate, --since and --until; it does not "
                "combine with --consumer, --status or --delivery-id, which choose deliveries that exist."
            )
        if not (criteria.event_ids or criteria.event_types or criteria.aggregate or criteria.since or criteria.until):
            raise CommandError(
                f"--to {name} needs the events to send: name them with --event-id, --type, --aggregate, --since "
                f"or --until (at most {TO_LIMIT:,} events)."
            )
        selected = events_select(criteria)
        taken_types = None if ALL in declared.events else list(declared.events)
        if taken_types is not None:
            others = list(
                selected.exclude(event_type__in=taken_types).values_list("event_type", flat=True)[: TO_LIMIT + 1]
            )
            if others:
                count = f"more than {TO_LIMIT:,}" if len(others) > TO_LIMIT else str(len(others))
                self.stdout.write(
                    f"Left out {count} events of types {name} does not take: {', '.join(sorted(set(others)))}."
                )
            selected = selected.filter(event_type__in=taken_types)
        fields = ("id", "event_type", "aggregate_type", "aggregate_id")
        taken = list(selected.only(*fields)[: TO_LIMIT + 1])
        if len(taken) > TO_LIMIT:
            raise CommandError(
                f"More than {TO_LIMIT:,} events match; nothing was sent. Narrow the filters (--since/--until, "
                f"--type, --aggregate) and send them in parts, or give {name} the history with "
                f"`outbox_backfill {name}` (throttled, resumable)."
            )
        if not taken:
            self.stdout.write(f"No selected event is of a type {name} takes; nothing to send.")
            return
        if options["dry_run"]:
            self._show_to(name, taken, force=options["force"])
            return
        deliveries = deliveries_for([event.id for event in taken], name)
        self._replay(deliveries, dataclasses.replace(criteria, consumers=[name], statuses=[]), options)

    def _show_to(self, name: str, events: list[Event], *, force: bool) -> None:
        rows = Delivery.objects.filter(event_id__in=[e.id for e in events], consumer=name)
        statuses = dict(rows.values_list("event_id", "status"))
        self.stdout.write(f"{'event':>9}  {'type':<22} {'aggregate':<16} delivery to {name}")
        for event in events[:SHOWN]:
            status = statuses.get(event.id)
            shown = "none: created" if status is None else status
            if status == "done" and not force:
                shown += "  (done: left out)"
            self.stdout.write(
                f"{event.id:>9}  {event.event_type:<22} {event.aggregate_type + ':' + event.aggregate_id:<16} {shown}"
            )
        if len(events) > SHOWN:
            self.stdout.write(f"… and {len(events) - SHOWN} more.")
        done = sum(1 for status in statuses.values() if status == "done")
        send = len(events) if force else len(events) - done
        self.stdout.write(
            f"Would send {send} events to {name}: {len(events) - len(statuses)} with no delivery yet (created), "
            f"{len(statuses) - done} failed, dead or in flight"
            + (f", {done} done (sent again: --force)." if force else f"; {done} done, left out (--force sends them).")
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
