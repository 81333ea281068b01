"""The shop's admin works as the application's database role, the one that owns nothing.
(The outbox's own guarantees against that role: tests/outbox/test_least_privilege.py.)"""

from decimal import Decimal

import pytest

from core import services
from tests.processes import database_url, manage_run

pytestmark = pytest.mark.django_db(transaction=True)

ADMIN_SCRIPT = """
from django.contrib.auth.models import User
from django.test import Client
from core.models import Order, Product
from outbox.models import Event

user = User.objects.create_superuser("app-admin", "a@example.com", "pw")
client = Client()
client.force_login(user)
product = Product.objects.get(sku="KB-1")
response = client.post("/admin/core/order/add/", {
    "customer": "CUSTOMER_ID", "status": "placed",
    "lines-TOTAL_FORMS": "1", "lines-INITIAL_FORMS": "0", "lines-MIN_NUM_FORMS": "0", "lines-MAX_NUM_FORMS": "1000",
    "lines-0-product": str(product.pk), "lines-0-quantity": "2", "lines-0-unit_price": "",
})
assert response.status_code == 302, response.content.decode()[:3000]
for url in ("/admin/core/order/", "/admin/outbox/event/", "/admin/outbox/delivery/", "/admin/outbox/dashboard/"):
    assert client.get(url).status_code == 200, url
print("EVENTS", Event.objects.filter(aggregate_type="order").count())
"""


def test_the_admin_works_as_the_app_role(app_role: str) -> None:
    """A business user's save through the admin, on a connection of the role that owns nothing."""
    customer = services.customer_create(name="Ada", email="ada@example.com")
    services.product_create(sku="KB-1", name="Keyboard", price=Decimal("10.00"))
    env = {
        "DJANGO_SETTINGS_MODULE": "settings.test",
        "DATABASE_URL": database_url().replace("postgres://postgres@", f"postgres://{app_role}@"),
        "PATH": "/usr/bin:/bin",
    }
    env["ALLOWED_HOSTS"] = "testserver"
    script = ADMIN_SCRIPT.replace("CUSTOMER_ID", str(customer.pk))
    result = manage_run("shell", "-c", script, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "EVENTS 2" in result.stdout
