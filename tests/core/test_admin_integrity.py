"""What the admin lets business users save, and what the database refuses underneath it."""

import re
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.test import Client

from core import services
from core.models import Customer, Order, OrderLine, Product, StockReceipt
from tests.core.test_admin import ADD_URL, order_form

pytestmark = pytest.mark.django_db

QUANTITY_MESSAGE = "Quantity must be a whole number from 1 to 1,000,000"


def test_a_negative_unit_price_is_refused_by_the_form_and_by_the_database(
    admin_client: Client, customer: Customer, products: list[Product]
) -> None:
    """-1000.00 a unit never reaches an order (nor a customer's e-mail total)."""
    data = order_form(customer, [(products[0].pk, 1)])
    data["lines-0-unit_price"] = "-1000.00"
    response = admin_client.post(ADD_URL, data)
    assert response.status_code == 200
    assert "A unit price cannot be negative (got -1000.00)" in response.content.decode()
    assert Order.objects.count() == 0
    order = services.order_create(customer=customer, lines=[services.LineRequest("KB-001", 1)])
    with pytest.raises(IntegrityError, match="order_line_unit_price_not_negative"), transaction.atomic():
        OrderLine(order=order, product=products[0], quantity=1, unit_price=Decimal("-1000.00")).save()


def test_a_huge_stock_receipt_is_refused_by_the_form_and_by_the_database(
    admin_client: Client, products: list[Product]
) -> None:
    """2,147,483,647 units (what once poisoned the inventory consumer) gets the quantity message."""
    response = admin_client.post(
        "/admin/core/stockreceipt/add/", {"product": products[0].pk, "quantity": "2147483647", "note": ""}
    )
    assert response.status_code == 200
    assert f"{QUANTITY_MESSAGE} (got 2147483647)" in response.content.decode()
    assert StockReceipt.objects.count() == 0
    with pytest.raises(IntegrityError, match="stock_receipt_quantity_in_range"), transaction.atomic():
        StockReceipt(product=products[0], quantity=1_000_001).save()


def test_an_order_line_beyond_the_bound_is_refused_by_the_database(customer: Customer, products: list[Product]) -> None:
    order = services.order_create(customer=customer, lines=[services.LineRequest("KB-001", 1)])
    with pytest.raises(IntegrityError, match="order_line_quantity_in_range"), transaction.atomic():
        OrderLine(order=order, product=products[0], quantity=1_000_001, unit_price=Decimal("1")).save()


def test_quantity_inputs_allow_1_to_1_000_000(admin_client: Client, products: list[Product]) -> None:
    """The browser's own check agrees with the server's: no 0 in the spinner, no 2,147,483,647."""
    for url in [ADD_URL, "/admin/core/stockreceipt/add/"]:
        page = admin_client.get(url).content.decode()
        inputs = re.findall(r'<input type="number" name="[^"]*quantity"[^>]*>', page)
        assert inputs, url
        for tag in inputs:
            assert 'min="1"' in tag, tag
            assert 'max="1000000"' in tag, tag
