"""Fixtures of the outbox's tests: records of the outbox tests' own app (tests/outbox_app).

The suite's business fixtures (`customer`, `products`, made with core) are not for these tests:
the outbox is tested against an app it knows nothing about, so asking for them fails.
"""

from decimal import Decimal

import pytest

from tests.outbox_app.models import Item


@pytest.fixture
def items(db: None) -> list[Item]:
    """Three items in the catalogue, none in stock."""
    return [
        Item.objects.create(sku="KB-001", name="Keyboard", price=Decimal("89.00")),
        Item.objects.create(sku="MS-002", name="Mouse", price=Decimal("29.50")),
        Item.objects.create(sku="MN-003", name="Monitor", price=Decimal("249.00")),
    ]


@pytest.fixture
def customer() -> None:
    pytest.fail("tests/outbox uses the records of tests/outbox_app, not core's customers: ask for `items`.")


@pytest.fixture
def products() -> None:
    pytest.fail("tests/outbox uses the records of tests/outbox_app, not core's products: ask for `items`.")
