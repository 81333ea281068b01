"""Helpers for admin tests: clients that see each other's saves, and the forms they open."""

import re
from typing import Any

from django.contrib.auth.models import User
from django.test import Client

from core.models import Order
from outbox.emit.writer import events_flush


class CommittingClient(Client):
    """A test client whose requests each see the events of the ones before.

    A test runs in one transaction that never commits, so the events a request writes are still
    held for that commit when the next request reads versions: each request writes them first,
    as their commit would have in production.
    """

    def request(self, **request: Any) -> Any:
        events_flush()
        return super().request(**request)


def logged_in(username: str) -> CommittingClient:
    """Return a client logged in as a new superuser of this name."""
    client = CommittingClient()
    client.force_login(User.objects.create_superuser(username, f"{username}@example.com", "pw"))
    return client


def opened(client: Client, url: str) -> dict[str, str]:
    """Open a change form as a browser would; return the hidden version it carries, to post back."""
    events_flush()
    page = client.get(url).content.decode()
    return dict(re.findall(r'<input type="hidden" name="(opened_version)" value="([^"]*)"', page))


def order_change_form(order: Order, *, status: str, quantities: dict[int, int] | None = None) -> dict[str, Any]:
    """The POST body of an order's change form with its current lines (quantities replaced)."""
    lines = list(order.lines.order_by("id"))
    data: dict[str, Any] = {
        "customer": order.customer_id,
        "status": status,
        "lines-TOTAL_FORMS": len(lines),
        "lines-INITIAL_FORMS": len(lines),
        "lines-MIN_NUM_FORMS": 0,
        "lines-MAX_NUM_FORMS": 1000,
    }
    for i, line in enumerate(lines):
        quantity = (quantities or {}).get(line.pk, line.quantity)
        data.update(
            {
                f"lines-{i}-id": line.pk,
                f"lines-{i}-order": order.pk,
                f"lines-{i}-product": line.product_id,
                f"lines-{i}-quantity": quantity,
                f"lines-{i}-unit_price": line.unit_price,
            }
        )
    return data
