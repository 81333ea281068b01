"""Orders beyond stock: a warning naming the product, or with ORDERS_REFUSE_BEYOND_STOCK a refusal."""

from typing import Any

import pytest
from django.test import Client

from core import services
from core.models import Customer, Order, Product
from tests.core.helpers import opened, order_change_form
from tests.core.test_admin import ADD_URL, order_form

pytestmark = pytest.mark.django_db


@pytest.fixture
def shelf(products: list[Product]) -> Product:
    """KB-001 with 25 in stock (stock is the inventory consumer's field: set here without an event)."""
    Product.objects.filter(pk=products[0].pk).update(stock=25)
    return Product.objects.get(pk=products[0].pk)


def test_an_order_beyond_stock_is_saved_with_a_warning_naming_product_stock_and_quantity(
    admin_client: Client, customer: Customer, shelf: Product
) -> None:
    """1,000,000 ordered against 25 in stock no longer passes without a word."""
    response = admin_client.post(ADD_URL, order_form(customer, [(shelf.pk, 1_000_000)]), follow=True)
    order = Order.objects.get()
    assert order.status == Order.Status.PLACED
    assert f"Order #{order.pk} takes 1,000,000 of KB-001 Keyboard, with 25 in stock" in response.content.decode()


def test_an_order_within_stock_and_a_draft_beyond_it_get_no_warning(
    admin_client: Client, customer: Customer, shelf: Product
) -> None:
    within = admin_client.post(ADD_URL, order_form(customer, [(shelf.pk, 25)]), follow=True)
    draft = admin_client.post(ADD_URL, order_form(customer, [(shelf.pk, 500)], status="draft"), follow=True)
    for response in (within, draft):
        assert "in stock" not in response.content.decode()
    assert Order.objects.count() == 2


def test_placing_a_draft_beyond_stock_with_the_action_warns(
    admin_client: Client, customer: Customer, shelf: Product
) -> None:
    """A draft's lines count when it is placed."""
    draft = services.order_create(customer=customer, lines=[services.LineRequest(shelf.sku, 40)])
    response = admin_client.post(
        "/admin/core/order/", {"action": "place_orders", "_selected_action": [draft.pk]}, follow=True
    )
    assert f"Order #{draft.pk} takes 40 of KB-001 Keyboard, with 25 in stock" in response.content.decode()
    assert Order.objects.get(pk=draft.pk).status == Order.Status.PLACED


def test_raising_a_placed_order_s_line_warns_about_the_extra_units_only(
    admin_client: Client, customer: Customer, shelf: Product
) -> None:
    """A placed order's own units were counted when it was placed: only the increase is new."""
    order = services.order_create(customer=customer, lines=[services.LineRequest(shelf.sku, 20)], place=True)
    Product.objects.filter(pk=shelf.pk).update(stock=5)  # as the inventory consumer leaves it
    url = f"/admin/core/order/{order.pk}/change/"
    line = order.lines.get()
    unchanged = admin_client.post(
        url, {**order_change_form(order, status="placed"), **opened(admin_client, url)}, follow=True
    )
    assert "was changed successfully" in unchanged.content.decode()
    assert "in stock" not in unchanged.content.decode()
    raised: Any = admin_client.post(
        url,
        {**order_change_form(order, status="placed", quantities={line.pk: 30}), **opened(admin_client, url)},
        follow=True,
    )
    assert f"Order #{order.pk} takes 10 of KB-001 Keyboard, with 5 in stock" in raised.content.decode()


def test_with_orders_refused_beyond_stock_the_form_says_why_and_saves_nothing(
    admin_client: Client, customer: Customer, shelf: Product, settings: Any
) -> None:
    settings.ORDERS_REFUSE_BEYOND_STOCK = True
    response = admin_client.post(ADD_URL, order_form(customer, [(shelf.pk, 1_000_000)]))
    assert response.status_code == 200
    assert "This order would take more than is in stock: 1,000,000 of KB-001 Keyboard, with 25 in stock." in (
        response.content.decode()
    )
    assert Order.objects.count() == 0
    draft = services.order_create(customer=customer, lines=[services.LineRequest(shelf.sku, 40)])
    refused = admin_client.post(
        "/admin/core/order/", {"action": "place_orders", "_selected_action": [draft.pk]}, follow=True
    )
    assert f"Order #{draft.pk} would take more than is in stock" in refused.content.decode()
    assert Order.objects.get(pk=draft.pk).status == Order.Status.DRAFT
