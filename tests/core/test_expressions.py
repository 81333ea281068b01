"""Saves that set a field to an SQL expression, on real PostgreSQL."""

from decimal import Decimal

import pytest
from django.db.models import F

from core.models import Product
from tests.outbox.helpers import aggregate_events

pytestmark = pytest.mark.django_db


def test_a_price_raised_by_an_f_expression_is_saved_and_its_event_carries_the_new_price(
    products: list[Product],
) -> None:
    """`price = F("price") + 1` saves, and the event says what the price became, not the expression."""
    product = Product.objects.get(pk=products[0].pk)
    product.price = F("price") + 1
    product.save()
    assert product.price == Decimal("90.00")
    assert Product.objects.get(pk=product.pk).price == Decimal("90.00")
    event = aggregate_events("product", product.pk)[-1]
    assert event.event_type == "product.updated"
    assert event.payload["state"]["price"] == "90.00"
    assert event.payload["changes"] == {"price": {"old": "89.00", "new": "90.00"}}


def test_an_f_expression_with_update_fields_writes_the_resulting_value(products: list[Product]) -> None:
    product = Product.objects.get(pk=products[1].pk)
    product.price = F("price") * 2
    product.save(update_fields=["price"])
    event = aggregate_events("product", product.pk)[-1]
    assert event.payload["changes"] == {"price": {"old": "29.50", "new": "59.00"}}
