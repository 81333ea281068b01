"""Which business records emit which events: the one place that says so.

Every order-related event uses the order as its aggregate, so an order's lines and status
changes share one version sequence. See docs/events.md for the payloads.
"""

from core.models import Customer, Order, OrderLine, Product, StockReceipt
from outbox.emit.registry import Change, ChangeKind, by_kind, register

ORDER_STATUS_EVENTS = {
    Order.Status.DRAFT: "order.created",
    Order.Status.PLACED: "order.placed",
    Order.Status.CANCELLED: "order.cancelled",
    Order.Status.FULFILLED: "order.fulfilled",
}


def order_event_type(change: Change) -> str | None:
    """Name an order change by what happened to the order: created, placed, cancelled…"""
    if change.kind is ChangeKind.DELETED:
        return "order.deleted"
    order = change.instance
    assert isinstance(order, Order)
    if change.kind is ChangeKind.CREATED or "status" in change.changes:
        return ORDER_STATUS_EVENTS[Order.Status(order.status)]
    return "order.updated" if change.changes else None


def register_all() -> None:
    """Declare the emitting models (called once, from CoreConfig.ready)."""
    register(
        Customer,
        aggregate_type="customer",
        event_type=by_kind(created="customer.registered", updated="customer.updated", deleted="customer.deleted"),
    )
    register(
        Product,
        aggregate_type="product",
        event_type=by_kind(created="product.created", updated="product.updated", deleted="product.deleted"),
        untracked_fields=("stock",),
    )
    register(
        Order,
        aggregate_type="order",
        event_type=order_event_type,
        untracked_fields=("updated_at",),
    )
    register(
        OrderLine,
        aggregate_type="order",
        aggregate_id=lambda line: line.order_id,
        event_type=by_kind(created="order_line.added", updated="order_line.changed", deleted="order_line.removed"),
    )
    register(
        StockReceipt,
        aggregate_type="product",
        aggregate_id=lambda receipt: receipt.product_id,
        event_type=by_kind(
            created="stock.received", updated="stock.receipt_corrected", deleted="stock.receipt_removed"
        ),
    )
