"""The business app's settings, each read lazily so that tests and deployments can override them."""

from django.conf import settings


def refuse_beyond_stock() -> bool:
    """Whether an order that takes more of a product than is in stock is refused.

    Off by default (`ORDERS_REFUSE_BEYOND_STOCK`): such an order is saved with a warning, and the
    product's stock goes below zero, a backorder, until more is received.
    """
    return bool(getattr(settings, "ORDERS_REFUSE_BEYOND_STOCK", False))
