"""Demo data for trying the system on the embedded default."""

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction

from core import services
from core.models import Customer, Product

DEMO_USERNAME = "admin"
DEMO_PASSWORD = "admin"  # noqa: S105 - only ever created on the embedded default

PRODUCTS = [
    ("KB-001", "Mechanical keyboard", Decimal("89.00"), 40),
    ("MS-002", "Wireless mouse", Decimal("29.50"), 120),
    ("MN-003", "27-inch monitor", Decimal("249.00"), 15),
    ("CB-004", "USB-C cable", Decimal("9.90"), 300),
    ("HS-005", "Headset", Decimal("59.00"), 25),
]
CUSTOMERS = [("Ada Lovelace", "ada@example.com"), ("Grace Hopper", "grace@example.com")]


@transaction.atomic
def demo_data_create() -> list[str]:
    """Create demo products (with stock receipts), customers and one placed order, once.

    Returns a line per thing created; an empty list when the demo data already exists.
    """
    created: list[str] = []
    for sku, name, price, stock in PRODUCTS:
        if Product.objects.filter(sku=sku).exists():
            continue
        services.product_create(sku=sku, name=name, price=price)
        services.stock_receive(sku=sku, quantity=stock, note="Opening stock")
        created.append(f"product {sku} with a receipt of {stock}")
    for name, email in CUSTOMERS:
        if not Customer.objects.filter(email=email).exists():
            services.customer_create(name=name, email=email)
            created.append(f"customer {email}")
    if created:
        ada = Customer.objects.get(email=CUSTOMERS[0][1])
        services.order_create(
            customer=ada,
            lines=[services.LineRequest(sku="KB-001", quantity=1), services.LineRequest(sku="MS-002", quantity=2)],
            place=True,
        )
        created.append("a placed order for Ada Lovelace")
    return created


def demo_superuser_create() -> bool:
    """Create the demo superuser admin/admin unless it exists; return whether it was created."""
    user_model = get_user_model()
    if user_model.objects.filter(username=DEMO_USERNAME).exists():
        return False
    user_model.objects.create_superuser(DEMO_USERNAME, "admin@example.com", DEMO_PASSWORD)
    return True
