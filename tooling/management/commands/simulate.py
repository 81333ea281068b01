"""`python manage.py simulate`: realistic traffic, then a consistency report of the pipeline."""

import json
import time
from io import StringIO
from typing import Any

import dramatiq
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from dramatiq.brokers.stub import StubBroker
from tqdm import tqdm

from tooling.simulate import Report, report, run_traffic


class Command(BaseCommand):
    help = (
        "Place, edit and cancel orders and receive stock at a given rate through the services, then wait "
        "for the pipeline and report: events, deliveries by status, stock against receipts and ledger, "
        "e-mails. Exits 1 when the report is not consistent. On the embedded default it runs the relay "
        "itself; on the real stack, relays and workers must be running."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--orders", type=int, default=200, help="Orders to place (default 200).")
        parser.add_argument("--rate", type=float, default=20.0, help="Changes per second; 0 = as fast as possible.")
        parser.add_argument("--seed", type=int, default=1, help="Random seed, for a repeatable run.")
        parser.add_argument("--wait", type=float, default=120.0, help="Seconds to wait for the pipeline to drain.")
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["orders"] < 1:
            raise CommandError(f"--orders must be at least 1 (got {options['orders']}).")
        if options["rate"] < 0:
            raise CommandError(f"--rate must be 0 (as fast as possible) or more (got {options['rate']}).")
        quiet = options["json"] or options["verbosity"] < 1
        with tqdm(total=options["orders"], unit=" orders", disable=quiet, file=self.stderr) as bar:
            traffic = run_traffic(
                orders=options["orders"], rate=options["rate"], seed=options["seed"], progress=bar.update
            )
        if isinstance(dramatiq.get_broker(), StubBroker):
            # The in-process broker: nothing else can deliver these events, so relay them here.
            call_command("outbox_relay", "--once", stdout=StringIO())
        result = self._drained(since=traffic.first_event_id, wait=options["wait"])
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "traffic": {
                            "placed": traffic.placed,
                            "edited": traffic.edited,
                            "cancelled": traffic.cancelled,
                            "received": traffic.received,
                            "seconds": round(traffic.seconds, 2),
                        },
                        **result.as_dict(),
                    },
                    indent=2,
                )
            )
        else:
            self.stdout.write(
                f"Traffic: {traffic.placed} orders placed, {traffic.edited} lines edited, {traffic.cancelled} "
                f"orders cancelled, {traffic.received} stock receipts, in {traffic.seconds:.1f} s."
            )
            self.stdout.write(
                f"Events: {result.events} ({', '.join(f'{k} {v}' for k, v in result.events_by_type.items())})."
            )
            for consumer, statuses in sorted(result.deliveries.items()):
                self.stdout.write(
                    f"Deliveries to {consumer}: {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))}."
                )
            self.stdout.write(f"Still pending: {result.pending}; routed deliveries not done: {result.undelivered}.")
            self.stdout.write(
                f"Stock: {len(result.stock_mismatches)} products differ from receipts minus placed lines; "
                f"{len(result.ledger_mismatches)} differ from their ledger."
            )
            for mismatch in result.stock_mismatches + result.ledger_mismatches:
                self.stdout.write(f"  {mismatch}")
            self.stdout.write(
                f"E-mails: {result.emails_sent} sent of {result.emails_expected} expected; "
                f"{result.emails_resent} sent more than once."
            )
            self.stdout.write("Consistent." if result.consistent else "NOT consistent: see above.")
        if not result.consistent:
            raise SystemExit(1)

    def _drained(self, *, since: int, wait: float) -> Report:
        """Wait up to `wait` seconds for the pipeline to finish the traffic; return the last report."""
        deadline = time.monotonic() + wait
        while True:
            result = report(since_event_id=since)
            if result.consistent or time.monotonic() > deadline:
                return result
            time.sleep(0.5)
