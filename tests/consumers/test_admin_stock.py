"""The admin's changes that move stock, through to the inventory consumer, on PostgreSQL."""

from typing import Any

import pytest
from django.test import Client

from consumers import inventory
from core import services
from core.models import Customer, Order, OrderLine, Product
from tests.consumers.helpers import routed_ids, stock
from tests.core.helpers import opened
from tests.core.test_admin_concurrency import order_change_form

pytestmark = pytest.mark.django_db


def test_a_fulfilled_order_s_lines_are_read_only_and_a_posted_change_moves_no_stock(
    admin_client: Client, customer: Customer, stocked: list[Product]
) -> None:
    """7 more units once left stock for a fulfilled order; now the lines cannot change at all."""
    order = services.order_create(customer=customer, lines=[services.LineRequest(stocked[0].sku, 1)], place=True)
    services.order_set_status(order=order, status=Order.Status.FULFILLED)
    inventory.apply_events(event_ids=routed_ids("inventory"))
    assert stock(stocked[0]) == [9]
    url = f"/admin/core/order/{order.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert 'name="lines-0-quantity"' not in page  # shown, not editable
    assert 'name="lines-__prefix__-product"' not in page  # no row to add one
    line = order.lines.get()
    data = order_change_form(order, status="fulfilled", quantities={line.pk: 8})
    data.update(
        {
            "lines-TOTAL_FORMS": 2,
            "lines-1-order": order.pk,
            "lines-1-product": stocked[1].pk,
            "lines-1-quantity": 7,
            "lines-1-unit_price": "",
            **opened(admin_client, url),
        }
    )
    admin_client.post(url, data)
    assert list(OrderLine.objects.filter(order=order).values_list("product_id", "quantity")) == [(stocked[0].pk, 1)]
    inventory.apply_events(event_ids=routed_ids("inventory"))
    assert stock(*stocked) == [9, 10, 10]


@pytest.mark.parametrize("status", ["fulfilled", "cancelled"])
def test_lines_cannot_change_in_the_save_that_closes_the_order(
    admin_client: Client, customer: Customer, stocked: list[Product], status: str
) -> None:
    order = services.order_create(customer=customer, lines=[services.LineRequest(stocked[0].sku, 1)], place=True)
    url = f"/admin/core/order/{order.pk}/change/"
    line = order.lines.get()
    data: dict[str, Any] = {
        **order_change_form(order, status=status, quantities={line.pk: 8}),
        **opened(admin_client, url),
    }
    response = admin_client.post(url, data)
    assert response.status_code == 200
    assert f"Order #{order.pk} cannot become {status} in the same save that changes its lines." in (
        response.content.decode()
    )
    order.refresh_from_db()
    assert (order.status, order.lines.get().quantity) == (Order.Status.PLACED, 1)
