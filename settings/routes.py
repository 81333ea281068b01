"""Which consumers receive which events: event type → Dramatiq actor names.

`"*"` routes every event type. The relay publishes each event to the union of its type's routes
and the wildcard's; `python manage.py check` fails (outbox.E002) on a route to an actor that the
worker does not define. docs/events.md lists what each consumer does with each type.
"""

OUTBOX_ROUTES: dict[str, list[str]] = {
    "*": ["audit_log"],
    # Stock: every change to what an order takes out of stock, and every receipt.
    "order.placed": ["inventory", "email"],
    "order.cancelled": ["inventory", "email"],
    "order.deleted": ["inventory"],
    "order_line.added": ["inventory"],
    "order_line.changed": ["inventory"],
    "order_line.removed": ["inventory"],
    "stock.received": ["inventory"],
    "stock.receipt_corrected": ["inventory"],
    "stock.receipt_removed": ["inventory"],
}
