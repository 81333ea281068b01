"""The admin's changes that move stock, through to the inventory consumer, on PostgreSQL."""

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from consumers.models import StockMovement
from core import services
from core.models import Customer, Order, OrderLine, Product, StockReceipt
from outbox.models import Event
from outbox.testing import deliver
from tests.consumers.helpers import routed_ids, stock
from tests.core.helpers import CommittingClient, opened, order_change_form

pytestmark = pytest.mark.django_db


def test_a_fulfilled_order_s_lines_are_read_only_and_a_posted_change_moves_no_stock(
    admin_client: Client, customer: Customer, stocked: list[Product]
) -> None:
    """7 more units once left stock for a fulfilled order; now the lines cannot change at all."""
    order = services.order_create(customer=customer, lines=[services.LineRequest(stocked[0].sku, 1)], place=True)
    services.order_set_status(order=order, status=Order.Status.FULFILLED)
    deliver("inventory", routed_ids("inventory"))
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
    deliver("inventory", routed_ids("inventory"))
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


def receipt_url(receipt: StockReceipt) -> str:
    return f"/admin/core/stockreceipt/{receipt.pk}/change/"


def test_a_receipt_corrected_in_the_admin_moves_the_difference_in_stock(
    admin_client: Client, products: list[Product]
) -> None:
    """10 counted, 4 arrived: the correction's event takes 6 back out, once."""
    receipt = services.stock_receive(sku=products[0].sku, quantity=10, note="counted at the door")
    deliver("inventory", routed_ids("inventory"))
    assert stock(products[0]) == [10]
    before = set(routed_ids("inventory"))
    url = receipt_url(receipt)
    response = admin_client.post(url, {"quantity": 4, "note": "recounted: 4", **opened(admin_client, url)})
    assert response.status_code == 302, response.content.decode()[:3000]
    new = [event_id for event_id in routed_ids("inventory") if event_id not in before]
    corrected = Event.objects.get(pk__in=new)
    assert corrected.event_type == "stock.receipt_corrected"
    assert corrected.payload["changes"]["quantity"] == {"old": 10, "new": 4}
    deliver("inventory", new)
    deliver("inventory", new)  # a duplicate moves nothing
    assert stock(products[0]) == [4]
    movement = StockMovement.objects.get(event_id=corrected.pk)
    assert (movement.quantity, movement.stock_after) == (-6, 4)
    assert StockReceipt.objects.get(pk=receipt.pk).note == "recounted: 4"


def test_a_receipt_correction_needs_the_change_permission(client: Client, products: list[Product]) -> None:
    """A clerk who may record receipts (view, add) cannot correct one."""
    clerk = User.objects.create_user("clerk", "clerk@example.com", "pw", is_staff=True)
    clerk.user_permissions.set(
        Permission.objects.filter(codename__in=["view_stockreceipt", "add_stockreceipt", "view_product"])
    )
    client.force_login(clerk)
    receipt = services.stock_receive(sku=products[0].sku, quantity=10)
    url = receipt_url(receipt)
    response = client.post(url, {"quantity": 4, "note": "", **opened(client, url)})
    assert response.status_code == 403
    assert StockReceipt.objects.get(pk=receipt.pk).quantity == 10


def test_a_stale_receipt_form_is_refused_but_another_receipt_of_the_product_is_no_conflict(
    staff_user: User, products: list[Product]
) -> None:
    admin_client = CommittingClient()
    admin_client.force_login(staff_user)
    receipt = services.stock_receive(sku=products[0].sku, quantity=10)
    url = receipt_url(receipt)
    form = opened(admin_client, url)
    services.stock_receive(sku=products[0].sku, quantity=3)  # the same product's aggregate, not this receipt
    assert admin_client.post(url, {"quantity": 9, "note": "", **form}).status_code == 302
    stale = admin_client.post(url, {"quantity": 8, "note": "", **form})
    assert stale.status_code == 200
    assert f"Stock receipt #{receipt.pk} was changed by alice at " in stale.content.decode()
    assert "(stock.receipt_corrected)" in stale.content.decode()
    assert StockReceipt.objects.get(pk=receipt.pk).quantity == 9
