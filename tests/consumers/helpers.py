"""Helpers for consumer tests: the events to hand a consumer, and what it did."""

from core.models import Product
from outbox.models import Delivery
from outbox.relay.routing import consumers_for
from tests.outbox.helpers import events


def routed_ids(consumer: str) -> list[int]:
    """Return the ids of every event written so far that is routed to `consumer`, in id order."""
    return [e.id for e in events().order_by("id") if consumer in consumers_for(e.event_type)]


def stock(*products: Product) -> list[int]:
    return [Product.objects.get(pk=p.pk).stock for p in products]


def statuses(consumer: str) -> dict[int, str]:
    return dict(Delivery.objects.filter(consumer=consumer).values_list("event_id", "status"))
