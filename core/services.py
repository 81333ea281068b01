"""Business writes. Admin, commands and tests call these; they own their transactions.

A service only changes records; the events that its saves write tell consumers what happened.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.db import connections, router, transaction
from django.db.models import QuerySet, Value
from django.db.models.functions import Lower
from django.utils import timezone

from core import conf
from core.errors import (
    DuplicateEmailError,
    EmptyOrderError,
    InsufficientStockError,
    InvalidQuantityError,
    InvalidTransitionError,
    UnknownProductError,
)
from core.models import QUANTITY_MAX, QUANTITY_MESSAGE, Customer, Order, OrderLine, Product, StockReceipt

Status = Order.Status

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    Status.DRAFT: frozenset({Status.PLACED, Status.CANCELLED}),
    Status.PLACED: frozenset({Status.CANCELLED, Status.FULFILLED}),
    Status.CANCELLED: frozenset(),
    Status.FULFILLED: frozenset(),
}


@dataclass(frozen=True)
class LineRequest:
    """One line of an order to create: a product by SKU and a quantity."""

    sku: str
    quantity: int


def quantity_check(*, quantity: int) -> None:
    """Raise InvalidQuantityError unless the quantity is from 1 to QUANTITY_MAX."""
    if not 1 <= quantity <= QUANTITY_MAX:
        raise InvalidQuantityError(QUANTITY_MESSAGE, code="quantity", params={"value": quantity})


def order_transition_check(*, current: str, new: str) -> None:
    """Raise InvalidTransitionError unless an order may move from `current` to `new`."""
    if current != new and new not in ALLOWED_TRANSITIONS[current]:
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS[current])) or "nothing: it is closed"
        raise InvalidTransitionError(
            f"An order that is {Status(current).label.lower()} cannot become "
            f"{Status(new).label.lower()}. From here it can become: {allowed}.",
            code="transition",
        )


def order_lines_check(*, status: str, line_count: int) -> None:
    """Raise EmptyOrderError if an order in `status` may not have `line_count` lines."""
    if status in (Status.PLACED, Status.FULFILLED) and line_count == 0:
        raise EmptyOrderError(
            "An order needs at least one line before it is placed. Add a line, or save it as a draft.",
            code="empty_order",
        )


OPEN_STATUSES = frozenset({Status.DRAFT, Status.PLACED})


def order_lines_change_check(*, order_id: int | None, current: str, new: str | None = None) -> None:
    """Raise InvalidTransitionError unless lines may be added, changed or removed on an order that
    is `current` now and, after the same save, `new`.

    A cancelled or fulfilled order's lines are what was cancelled or delivered: changing them
    would move stock for goods that never leave (or already left) the shelf.
    """
    name = f"Order #{order_id}" if order_id is not None else "This order"
    if current not in OPEN_STATUSES:
        raise InvalidTransitionError(
            f"{name} is {Status(current).label.lower()}: its lines can no longer be added, changed or "
            "removed. For a correction or a return, create a new order.",
            code="closed_order",
        )
    if new is not None and new not in OPEN_STATUSES:
        raise InvalidTransitionError(
            f"{name} cannot become {Status(new).label.lower()} in the same save that changes its lines. "
            "Save the line changes first, then change the status.",
            code="closed_order",
        )


# The statuses in which an order's lines are out of stock: the inventory consumer moves stock by
# the same rule that the beyond-stock check below applies.
TAKING_STATUSES = frozenset({Status.PLACED, Status.FULFILLED})


@dataclass(frozen=True)
class Shortfall:
    """A product of which an order takes more than is in stock."""

    product: Product
    wanted: int  # the units this change takes, beyond what the order took before it
    in_stock: int

    def __str__(self) -> str:
        return f"{self.wanted:,} of {self.product.sku} {self.product.name}, with {self.in_stock:,} in stock"


def order_stock_wanted(
    *, order_id: int | None, current: str, new: str, lines: Iterable[tuple[int, int]]
) -> dict[int, int]:
    """Return the units per product that an order moving from `current` to `new` with these
    (product id, quantity) lines takes out of stock, beyond what it had already taken.

    A draft takes nothing: its lines count once it is placed.
    """
    after: dict[int, int] = {}
    if new in TAKING_STATUSES:
        for product_id, quantity in lines:
            after[product_id] = after.get(product_id, 0) + quantity
    before: dict[int, int] = {}
    if order_id is not None and current in TAKING_STATUSES:
        for product_id, quantity in OrderLine.objects.filter(order_id=order_id).values_list("product_id", "quantity"):
            before[product_id] = before.get(product_id, 0) + quantity
    return {p: q - before.get(p, 0) for p, q in after.items() if q > before.get(p, 0)}


def order_stock_check(*, order_id: int | None, wanted: Mapping[int, int]) -> list[Shortfall]:
    """Return the products of which more is wanted than is in stock, by SKU; raise
    InsufficientStockError instead when the shop refuses such orders (conf.refuse_beyond_stock()).

    Stock is what the inventory consumer has applied so far: an order placed a moment ago may
    not be in it yet, so this is a warning about the shelf, not a reservation.
    """
    products = Product.objects.filter(pk__in=list(wanted)).order_by("sku")
    shortfalls = [Shortfall(p, wanted[p.pk], p.stock) for p in products if wanted[p.pk] > p.stock]
    if shortfalls and conf.refuse_beyond_stock():
        name = f"Order #{order_id}" if order_id is not None else "This order"
        raise InsufficientStockError(
            f"{name} would take more than is in stock: {'; '.join(str(s) for s in shortfalls)}. "
            "Lower the quantity, or receive the stock first.",
            code="beyond_stock",
        )
    return shortfalls


def order_status_stamp(*, order: Order, previous: str | None) -> None:
    """Set the order's placed/closed timestamps for a status change (does not save)."""
    if order.status == previous:
        return
    now = timezone.now()
    if order.status == Status.PLACED:
        order.placed_at = now
    elif order.status in (Status.CANCELLED, Status.FULFILLED):
        order.closed_at = now


def products_by_sku(*, skus: Sequence[str]) -> dict[str, Product]:
    """Return the products with these SKUs; raise UnknownProductError naming any that is missing."""
    found = {p.sku: p for p in Product.objects.filter(sku__in=set(skus))}
    missing = sorted(set(skus) - set(found))
    if missing:
        raise UnknownProductError(
            f"No product has SKU {', '.join(repr(s) for s in missing)}. Check the SKU, or create the product first.",
            code="unknown_sku",
        )
    return found


@transaction.atomic
def order_create(*, customer: Customer, lines: Sequence[LineRequest], place: bool = False) -> Order:
    """Create an order with its lines at the products' current prices, placed if `place`."""
    for line in lines:
        quantity_check(quantity=line.quantity)
    status = Status.PLACED if place else Status.DRAFT
    order_transition_check(current=Status.DRAFT, new=status)
    order_lines_check(status=status, line_count=len(lines))
    products = products_by_sku(skus=[line.sku for line in lines])
    order = Order(customer=customer, status=status)
    order_status_stamp(order=order, previous=Status.DRAFT)
    order.save()
    for line in lines:
        product = products[line.sku]
        OrderLine(order=order, product=product, quantity=line.quantity, unit_price=product.price).save()
    return order


@transaction.atomic
def order_set_status(*, order: Order, status: str) -> Order:
    """Move the order to `status` (place, cancel, fulfil), enforcing the allowed transitions."""
    order = Order.objects.select_for_update().get(pk=order.pk)
    order_transition_check(current=order.status, new=status)
    order_lines_check(status=status, line_count=order.lines.count())
    previous = order.status
    order.status = status
    order_status_stamp(order=order, previous=previous)
    order.save(update_fields=["status", "placed_at", "closed_at", "updated_at"])
    return order


@transaction.atomic
def order_line_add(*, order: Order, sku: str, quantity: int) -> OrderLine:
    """Add a line to a draft or placed order at the product's current price."""
    quantity_check(quantity=quantity)
    # Locked, so that a cancellation committing meanwhile cannot slip between check and insert.
    order = Order.objects.select_for_update().get(pk=order.pk)
    order_lines_change_check(order_id=order.pk, current=order.status)
    product = products_by_sku(skus=[sku])[sku]
    line = OrderLine(order=order, product=product, quantity=quantity, unit_price=product.price)
    line.save()
    return line


@transaction.atomic
def stock_receive(*, sku: str, quantity: int, note: str = "") -> StockReceipt:
    """Record goods received for the product with this SKU."""
    quantity_check(quantity=quantity)
    product = products_by_sku(skus=[sku])[sku]
    receipt = StockReceipt(product=product, quantity=quantity, note=note)
    receipt.save()
    return receipt


@transaction.atomic
def stock_receipt_correct(*, receipt: StockReceipt, quantity: int, note: str) -> StockReceipt:
    """Correct a receipt's quantity and note (a miscount, a typo); return it as saved.

    Its `stock.receipt_corrected` event tells the inventory consumer to move the difference.
    """
    quantity_check(quantity=quantity)
    locked = StockReceipt.objects.select_for_update().get(pk=receipt.pk)
    locked.quantity = quantity
    locked.note = note
    locked.full_clean()
    locked.save(update_fields=["quantity", "note"])
    return locked


@transaction.atomic
def product_create(*, sku: str, name: str, price: Decimal) -> Product:
    """Create a product with no stock."""
    product = Product(sku=sku, name=name, price=price)
    product.full_clean()
    product.save()
    return product


def customers_by_email(*, email: str) -> QuerySet[Customer]:
    """Return the customer with this e-mail address in any case (at most one), compared as the
    unique index compares them (lower() in the database), which also finds them by it."""
    return Customer.objects.alias(email_lower=Lower("email")).filter(email_lower=Lower(Value(email)))


def customer_email_check(*, email: str, customer_id: int | None = None) -> None:
    """Raise DuplicateEmailError naming the other customer who has this e-mail, in any case.

    Inside a transaction on PostgreSQL, the address is locked until it commits: two users saving
    one address at once (in two cases) are told apart here, the later after the earlier commits,
    instead of one of them meeting the unique index's error.
    """
    connection = connections[router.db_for_write(Customer)]
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext('core.customer.email:' || lower(%s)))", [email])
    same = customers_by_email(email=email)
    if customer_id is not None:
        same = same.exclude(pk=customer_id)
    other = same.first()
    if other is not None:
        raise DuplicateEmailError(
            f"{other.email} is already the e-mail of customer #{other.pk} ({other.name}); e-mail addresses "
            "are the same whatever their case. Open that customer instead, or use another address.",
            code="duplicate_email",
        )


@transaction.atomic
def customer_create(*, name: str, email: str) -> Customer:
    """Register a customer."""
    customer_email_check(email=email)
    customer = Customer(name=name, email=email)
    customer.full_clean()
    customer.save()
    return customer
