"""Realistic business traffic through the services, as the admin's users make it.

Orders are placed (one to four lines), edited (a line's quantity changed while placed), cancelled,
and stock is received. `simulate` and the chaos run both drive a `Shopper`; the chaos run passes
a `run` that retries a change while PostgreSQL restarts.
"""

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from core import services
from core.models import Customer, Order, OrderLine, Product

T = TypeVar("T")


@dataclass(frozen=True)
class Catalogue:
    """The products (by SKU) and customers that a traffic run buys and sells with."""

    skus: list[str]
    customers: list[Customer]


def catalogue_ensure(*, prefix: str, products: int, customers: int, opening_stock: int, label: str) -> Catalogue:
    """Return the run's catalogue, creating what is missing: `products` products `<prefix>001`…, each
    received with `opening_stock`, and `customers` customers `<label><n>@example.com`."""
    skus = [f"{prefix}{i:03d}" for i in range(1, products + 1)]
    existing = set(Product.objects.filter(sku__in=skus).values_list("sku", flat=True))
    for sku in skus:
        if sku not in existing:
            services.product_create(sku=sku, name=f"{label.title()} {sku}", price=Decimal("10.00") + int(sku[-3:]))
            services.stock_receive(sku=sku, quantity=opening_stock, note=f"{label}: opening stock")
    people = []
    for i in range(1, customers + 1):
        email = f"{label}{i}@example.com"
        people.append(
            Customer.objects.filter(email=email).first()
            or services.customer_create(name=f"{label.title()} customer {i}", email=email)
        )
    return Catalogue(skus=skus, customers=people)


def _direct(change: Callable[[], T]) -> T:
    return change()


class Shopper:
    """Makes one business change at a time, through the services; counts what it did.

    Each change's random choices are drawn first, then the change itself is handed to `run`
    (which may call it again after a database error), so a retried change is the same change.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        rng: random.Random,
        *,
        run: Callable[[Callable[[], Any]], Any] = _direct,
        receive_range: tuple[int, int] = (5, 50),
    ) -> None:
        self.catalogue = catalogue
        self.rng = rng
        self.run = run
        self.receive_range = receive_range
        self.placed: list[int] = []  # orders placed and not yet cancelled
        self.counts: Counter[str] = Counter()

    def lines(self) -> list[services.LineRequest]:
        """One to four lines of distinct products, one to three of each."""
        skus = self.rng.sample(self.catalogue.skus, self.rng.randint(1, 4))
        return [services.LineRequest(sku=sku, quantity=self.rng.randint(1, 3)) for sku in skus]

    def place(self) -> Order:
        """Place an order for a random customer."""
        customer, lines = self.rng.choice(self.catalogue.customers), self.lines()
        order: Order = self.run(lambda: services.order_create(customer=customer, lines=lines, place=True))
        self.placed.append(order.pk)
        self.counts["placed"] += 1
        return order

    def edit(self) -> bool:
        """Change the quantity of a line of a placed order; False when there was none to edit."""
        if not self.placed:
            return False
        order_id, quantity = self.rng.choice(self.placed), self.rng.randint(1, 5)

        def change() -> bool:
            line = OrderLine.objects.filter(order_id=order_id, order__status=Order.Status.PLACED).first()
            if line is None:
                return False
            line.quantity = quantity
            line.full_clean()
            line.save()
            return True

        edited: bool = self.run(change)
        self.counts["edited"] += edited
        return edited

    def cancel(self) -> bool:
        """Cancel a placed order; False when there was none to cancel."""
        if not self.placed:
            return False
        order_id = self.placed.pop(self.rng.randrange(len(self.placed)))

        def change() -> bool:
            order = Order.objects.get(pk=order_id)
            if order.status != Order.Status.PLACED:
                return False
            services.order_set_status(order=order, status=Order.Status.CANCELLED)
            return True

        cancelled: bool = self.run(change)
        self.counts["cancelled"] += cancelled
        return cancelled

    def receive(self) -> None:
        """Receive stock of a random product."""
        sku, quantity = self.rng.choice(self.catalogue.skus), self.rng.randint(*self.receive_range)
        self.run(lambda: services.stock_receive(sku=sku, quantity=quantity, note="traffic"))
        self.counts["received"] += 1
