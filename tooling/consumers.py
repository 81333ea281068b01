"""The consumer the chaos run adds after the fact: switched off until the run's deploy switches it
on (OUTBOX_CONSUMERS), then given the history by `outbox_backfill` while live traffic goes on.
Each event it handles leaves a receipt, so the run can count what it missed or handled twice."""

# The bench's relay consumers, switched off: declared here too, so that the relays outbox_bench
# starts as processes of their own know them (tooling/bench/consumers.py).
import tooling.bench.consumers  # noqa: F401
from outbox import Event, consumer
from tooling.models import BackfillReceipt

CONSUMER = "chaos_backfill"


@consumer(CONSUMER, events="*", queue="chaos_backfill", enabled=False, records=["tooling.BackfillReceipt"])
def receipt_write(event: Event) -> None:
    """Record that the event reached the consumer."""
    BackfillReceipt.objects.create(event_id=event.id)
