"""Fixtures for the consumers: a real SMTP server, and a stocked catalogue."""

from collections.abc import Iterator
from typing import Any

import pytest

from core import services
from core.models import Product
from tests.smtp import Mailbox, smtp_server


@pytest.fixture
def mailbox(settings: Any) -> Iterator[Mailbox]:
    """An SMTP server on loopback that Django's SMTP backend sends to."""
    with smtp_server() as box:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST = box.host
        settings.EMAIL_PORT = box.port
        settings.EMAIL_TIMEOUT = 5
        yield box


@pytest.fixture
def stocked(products: list[Product]) -> list[Product]:
    """The three products, each with a receipt of 10 (not yet applied by the inventory consumer)."""
    for product in products:
        services.stock_receive(sku=product.sku, quantity=10, note="opening")
    return products
