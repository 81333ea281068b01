"""A traffic generator: realistic business changes at a given rate, then a consistency report.

Orders are placed (one to four lines), edited (a line's quantity changed while placed),
cancelled, and stock is received, through the same services the admin uses. The report then
checks what the pipeline made of it: every event delivered, every product's stock equal to its
receipts minus its placed lines (cancelled orders give theirs back) and to its ledger, one
e-mail per notice.
"""

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum

from consumers.models import EmailNotice, StockMovement
from core import services
from core.models import Customer, Order, OrderLine, Product, StockReceipt
from outbox.models import Delivery, Event, Pending
from outbox.routing import consumers_for

SKU_PREFIX = "SIM-"
PRODUCTS = 20
CUSTOMERS = 20
OPENING_STOCK = 500
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


def catalogue() -> tuple[list[str], list[Customer]]:
    """The simulation's own products and customers, created once (with opening stock)."""
    skus = [f"{SKU_PREFIX}{i:03d}" for i in range(1, PRODUCTS + 1)]
    existing = set(Product.objects.filter(sku__in=skus).values_list("sku", flat=True))
    for sku in skus:
        if sku not in existing:
            services.product_create(sku=sku, name=f"Simulated {sku}", price=Decimal("10.00") + int(sku[-3:]))
            services.stock_receive(sku=sku, quantity=OPENING_STOCK, note="simulate: opening stock")
    customers = []
    for i in range(1, CUSTOMERS + 1):
        email = f"sim{i}@example.com"
        customer = Customer.objects.filter(email=email).first() or services.customer_create(
            name=f"Simulated customer {i}", email=email
        )
        customers.append(customer)
    return skus, customers


def run_traffic(*, orders: int, rate: float, seed: int, progress: Callable[[int], None] | None = None) -> Traffic:
    """Generate traffic until `orders` orders were placed, at `rate` changes per second (0: flat out)."""
    rng = random.Random(seed)  # noqa: S311 - traffic, not secrets
    skus, customers = catalogue()
    traffic = Traffic(first_event_id=(Event.objects.order_by("-id").values_list("id", flat=True).first() or 0))
    placed: list[int] = []
    started = time.monotonic()
    next_at = started
    while traffic.placed < orders:
        action = rng.choices(ACTIONS, WEIGHTS)[0] if placed else "place"
        if action == "place":
            lines = [
                services.LineRequest(sku=sku, quantity=rng.randint(1, 3)) for sku in rng.sample(skus, rng.randint(1, 4))
            ]
            placed.append(services.order_create(customer=rng.choice(customers), lines=lines, place=True).pk)
            traffic.placed += 1
            if progress:
                progress(1)
        elif action == "edit":
            line = OrderLine.objects.filter(order_id=rng.choice(placed), order__status=Order.Status.PLACED).first()
            if line is not None:
                line.quantity = rng.randint(1, 5)
                line.full_clean()
                line.save()
                traffic.edited += 1
        elif action == "cancel":
            order_id = placed.pop(rng.randrange(len(placed)))
            order = Order.objects.get(pk=order_id)
            if order.status == Order.Status.PLACED:
                services.order_set_status(order=order, status=Order.Status.CANCELLED)
                traffic.cancelled += 1
        else:
            services.stock_receive(sku=rng.choice(skus), quantity=rng.randint(5, 50), note="simulate")
            traffic.received += 1
        if rate > 0:
            next_at += 1.0 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
    traffic.seconds = time.monotonic() - started
    return traffic


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
        StockMovement.objects.filter(product__in=products).values_list("product_id").annotate(Sum("quantity"))
    )
    for product in products.order_by("sku"):
        expected = received.get(product.pk, 0) - taken.get(product.pk, 0)
        if product.stock != expected:
            result.stock_mismatches.append({"sku": product.sku, "stock": product.stock, "expected": expected})
        if product.stock != ledger.get(product.pk, 0):
            result.ledger_mismatches.append(
                {"sku": product.sku, "stock": product.stock, "ledger": ledger.get(product.pk, 0)}
            )
    notices = EmailNotice.objects.filter(event_id__gt=since_event_id)
    result.emails_expected = types.get("order.placed", 0) + types.get("order.cancelled", 0)
    result.emails_sent = notices.filter(status=EmailNotice.Status.SENT).count()
    result.emails_resent = notices.filter(sends__gt=1).count()
    return result
