"""A traffic generator: realistic business changes at a given rate, then a consistency report.

The changes are a `tooling.traffic.Shopper`'s: orders placed, edited, cancelled, and stock received,
through the same services the admin uses. The report then checks what the pipeline made of it:
every event delivered, every product's stock equal to its receipts minus its placed lines
(cancelled orders give theirs back) and to its ledger, one e-mail per notice.
"""

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.db.models import Count, Sum

from core.models import Order, OrderLine, Product, StockReceipt
from outbox.models import Delivery, Event, Pending
from outbox.relay.routing import consumers_for
from tooling.traffic import Shopper, catalogue_ensure

SKU_PREFIX = "SIM-"
ACTIONS = ["place", "edit", "cancel", "receive"]
WEIGHTS = [60, 15, 10, 15]


@dataclass
class Traffic:
    """What the generator did."""

    placed: int = 0
    edited: int = 0
    cancelled: int = 0
    received: int = 0
    first_event_id: int = 0
    seconds: float = 0.0


def run_traffic(*, orders: int, rate: float, seed: int, progress: Callable[[int], None] | None = None) -> Traffic:
    """Generate traffic until `orders` orders were placed, at `rate` changes per second (0: flat out)."""
    rng = random.Random(seed)  # noqa: S311 - traffic, not secrets
    catalogue = catalogue_ensure(prefix=SKU_PREFIX, products=20, customers=20, opening_stock=500, label="sim")
    shopper = Shopper(catalogue, rng)
    first_event_id = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
    started = time.monotonic()
    next_at = started
    while shopper.counts["placed"] < orders:
        action = rng.choices(ACTIONS, WEIGHTS)[0] if shopper.placed else "place"
        getattr(shopper, action)()
        if action == "place" and progress:
            progress(1)
        if rate > 0:
            next_at += 1.0 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
    return Traffic(
        first_event_id=first_event_id,
        seconds=time.monotonic() - started,
        **{key: shopper.counts[key] for key in ("placed", "edited", "cancelled", "received")},
    )


@dataclass
class Report:
    """The pipeline's consistency after the traffic."""

    events: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    deliveries: dict[str, dict[str, int]] = field(default_factory=dict)
    undelivered: int = 0
    stock_mismatches: list[dict[str, Any]] = field(default_factory=list)
    ledger_mismatches: list[dict[str, Any]] = field(default_factory=list)
    emails_expected: int = 0
    emails_sent: int = 0
    emails_resent: int = 0

    @property
    def consistent(self) -> bool:
        return not (
            self.pending
            or self.undelivered
            or self.stock_mismatches
            or self.ledger_mismatches
            or self.emails_sent != self.emails_expected
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "consistent": self.consistent,
            "events": self.events,
            "events_by_type": self.events_by_type,
            "pending": self.pending,
            "deliveries": self.deliveries,
            "undelivered": self.undelivered,
            "stock_mismatches": self.stock_mismatches,
            "ledger_mismatches": self.ledger_mismatches,
            "emails_expected": self.emails_expected,
            "emails_sent": self.emails_sent,
            "emails_resent": self.emails_resent,
        }


def report(*, since_event_id: int) -> Report:
    """Check the pipeline's work on every event after `since_event_id` and on the simulated catalogue."""
    # The consumers' records, read through the app registry: no code imports `consumers`.
    stock_movement = apps.get_model("consumers", "StockMovement")
    email_notice = apps.get_model("consumers", "EmailNotice")
    result = Report()
    types = Counter(dict(Event.objects.filter(id__gt=since_event_id).values_list("event_type").annotate(Count("id"))))
    result.events = sum(types.values())
    result.events_by_type = dict(sorted(types.items()))
    result.pending = Pending.objects.filter(event_id__gt=since_event_id).count()
    routed = sum(count * len(consumers_for(event_type)) for event_type, count in types.items())
    by_status = (
        Delivery.objects.filter(event_id__gt=since_event_id).values_list("consumer", "status").annotate(Count("id"))
    )
    for consumer, status, count in by_status:
        result.deliveries.setdefault(consumer, {})[status] = count
    done = sum(statuses.get("done", 0) for statuses in result.deliveries.values())
    result.undelivered = routed - done
    products = Product.objects.filter(sku__startswith=SKU_PREFIX)
    received = dict(
        StockReceipt.objects.filter(product__in=products).values_list("product_id").annotate(Sum("quantity"))
    )
    taken = dict(
        OrderLine.objects.filter(product__in=products, order__status__in=[Order.Status.PLACED, Order.Status.FULFILLED])
        .values_list("product_id")
        .annotate(Sum("quantity"))
    )
    ledger = dict(
        stock_movement.objects.filter(product__in=products).values_list("product_id").annotate(Sum("quantity"))
    )
    for product in products.order_by("sku"):
        expected = received.get(product.pk, 0) - taken.get(product.pk, 0)
        if product.stock != expected:
            result.stock_mismatches.append({"sku": product.sku, "stock": product.stock, "expected": expected})
        if product.stock != ledger.get(product.pk, 0):
            result.ledger_mismatches.append(
                {"sku": product.sku, "stock": product.stock, "ledger": ledger.get(product.pk, 0)}
            )
    notices = email_notice.objects.filter(event_id__gt=since_event_id)
    result.emails_expected = types.get("order.placed", 0) + types.get("order.cancelled", 0)
    result.emails_sent = notices.count()  # a row is a notice the SMTP server accepted
    result.emails_resent = notices.filter(sends__gt=1).count()
    return result
