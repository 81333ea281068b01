"""`python manage.py outbox_status [--json] [--check]`: backlog, deliveries, relays, jobs."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from outbox import conf
from outbox.ops.status import COUNTED_STATUSES, OutboxStatus, outbox_status
from outbox.relay.heartbeats import heartbeats_forget_stale


class Command(BaseCommand):
    help = (
        "Show the outbox's backlog, oldest unpublished event, unsettled deliveries per consumer, relay "
        "heartbeats and periodic jobs, and what needs attention. Cheap at any history size."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", dest="as_json", help="One JSON object instead of text.")
        parser.add_argument(
            "--check", action="store_true", help="Exit with status 1 when something needs attention (for monitoring)."
        )
        parser.add_argument(
            "--forget-stale",
            action="store_true",
            help="First remove the heartbeat rows of stale relays (killed ones: a clean stop removes its own).",
        )

    def handle(self, *args: Any, as_json: bool, check: bool, forget_stale: bool, **options: Any) -> None:
        if forget_stale:
            for name in heartbeats_forget_stale(older_than=conf.heartbeat_stale_seconds()):
                self.stderr.write(f"Forgot stale relay {name}.")
        status = outbox_status()
        if as_json:
            self.stdout.write(json.dumps(status.as_dict(), indent=2))
        else:
            self.stdout.write(render(status))
        if check and status.attention:
            raise CommandError("needs attention", returncode=1)


def render(status: OutboxStatus) -> str:
    """Return the status as text for a terminal."""
    lines = [f"Outbox status at {status.at:%Y-%m-%d %H:%M:%S %Z}", ""]
    oldest = status.oldest_pending_age_seconds
    lines.append(
        f"Backlog: {status.backlog} events waiting ({status.backlog_claimed} claimed)"
        + ("" if oldest is None else f", oldest {oldest:.1f} s old")
    )
    lines += ["", "Unsettled deliveries (exact):"]
    if status.deliveries:
        width = max(len("consumer"), *(len(c) for c in status.deliveries))
        lines.append("  " + "consumer".ljust(width) + "".join(f"{s:>11}" for s in COUNTED_STATUSES))
        for consumer, counts in status.deliveries.items():
            lines.append("  " + consumer.ljust(width) + "".join(f"{counts[s]:>11}" for s in COUNTED_STATUSES))
    else:
        lines.append("  none")
    if status.done_estimate is None:
        lines.append("Done deliveries: unknown until PostgreSQL has analysed outbox_delivery")
    else:
        lines.append(f"Done deliveries, all consumers: about {status.done_estimate:,} (planner estimate)")
    lines += ["", "Relays:"]
    for relay in status.relays:
        lines.append(
            f"  {relay.name} on {relay.host}, pid {relay.pid}: last beat {relay.age_seconds:.1f} s ago, "
            f"{relay.events_relayed} events relayed since {relay.started_at:%Y-%m-%d %H:%M:%S}"
            + ("  STALE" if relay.stale else "")
        )
    if not status.relays:
        lines.append("  none")
    lines += ["", "Periodic jobs:"]
    for job in status.jobs:
        last = "never ran" if job.period is None else f"last run for {job.period}: {job.outcome or 'running'}"
        lines.append(f"  {job.job} (daily at {job.daily_at} UTC): {last}")
    if not status.jobs:
        lines.append("  none")
    if status.backfills:
        lines += ["", "Backfills not finished:"]
        for backfill in status.backfills:
            lines.append(
                f"  {backfill.id} of {backfill.consumer}: {backfill.progress:.0%} (event {backfill.cursor} of "
                f"{backfill.upto}), {backfill.created} sent, {backfill.skipped} skipped, by {backfill.runner}"
                + ("  STALLED" if backfill.stalled else "")
            )
    if status.blocked_aggregates:
        lines += ["", "Blocked aggregates (ordered consumers; each waits behind its dead event until it is replayed):"]
        for consumer, blocked in status.blocked_aggregates.items():
            lines.append(f"  {consumer}: {blocked.count}")
            for row in blocked.aggregates:
                lines.append(
                    f"    {row['aggregate']} at event {row['event_id']} ({row['event_type']}, version "
                    f"{row['aggregate_version']}), {row['waiting']} waiting: {row['error']}"
                )
    lines.append("")
    if status.attention:
        lines.append("Needs attention:")
        lines += [f"  - {note}" for note in status.attention]
    else:
        lines.append("Nothing needs attention.")
    return "\n".join(lines)
