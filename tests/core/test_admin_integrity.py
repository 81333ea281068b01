"""What the admin lets business users save, and what the database refuses underneath it."""

import importlib
import re
from decimal import Decimal

import pytest
from django.apps import apps as django_apps
from django.contrib.admin.models import LogEntry
from django.db import IntegrityError, connection, transaction
from django.test import Client

from core import services
from core.errors import DuplicateEmailError
from core.models import Customer, Order, OrderLine, Product, StockReceipt
from tests.core.helpers import opened
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


def test_an_e_mail_in_another_case_is_refused_naming_the_customer_who_has_it(
    admin_client: Client, customer: Customer
) -> None:
    """ADA@example.com is ada@example.com: the form says which customer has it, and the
    database refuses it even past the form."""
    response = admin_client.post("/admin/core/customer/add/", {"name": "Ada L.", "email": "ADA@example.com"})
    assert response.status_code == 200
    assert f"ada@example.com is already the e-mail of customer #{customer.pk} (Ada Lovelace)" in (
        response.content.decode()
    )
    with pytest.raises(DuplicateEmailError, match=f"customer #{customer.pk}"):
        services.customer_create(name="Ada L.", email="Ada@Example.com")
    with pytest.raises(IntegrityError, match="customer_email_lower_uniq"), transaction.atomic():
        Customer(name="Ada L.", email="ADA@EXAMPLE.COM").save()
    assert list(Customer.objects.values_list("email", flat=True)) == ["ada@example.com"]


def test_a_customer_keeps_their_own_e_mail_when_its_case_changes(admin_client: Client, customer: Customer) -> None:
    """Their own address in another case is not a duplicate of itself."""
    change = f"/admin/core/customer/{customer.pk}/change/"
    response = admin_client.post(
        change, {"name": customer.name, "email": "Ada@example.com", **opened(admin_client, change)}
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    customer.refresh_from_db()
    assert customer.email == "Ada@example.com"
    # The admin's history names what changed, not the form's version.
    assert LogEntry.objects.get(object_id=str(customer.pk)).get_change_message() == "Changed Email."


def test_the_e_mail_migration_names_case_duplicates_instead_of_merging_them(customer: Customer) -> None:
    """Existing ADA@/ada@ customers stop the migration with both named; neither is changed."""
    migration = importlib.import_module("core.migrations.0004_customer_email_lower_unique")
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX customer_email_lower_uniq")  # as before the migration; rolled back
    other = Customer(name="Ada L.", email="ADA@example.com")
    other.save()
    with pytest.raises(RuntimeError) as refused, connection.schema_editor() as editor:
        migration.create(django_apps, editor)
    assert f"ada@example.com: customers #{customer.pk} ada@example.com, #{other.pk} ADA@example.com" in str(
        refused.value
    )
    assert "Merge each set into one customer" in str(refused.value)
    assert Customer.objects.count() == 2


def test_the_checks_migration_names_rows_that_break_a_new_rule(products: list[Product]) -> None:
    """The 2,147,483,647 receipt of old stops the migration with its id, to be corrected first."""
    migration = importlib.import_module("core.migrations.0003_quantity_and_price_checks")
    with connection.cursor() as cursor:  # as before the migration; rolled back with the test
        cursor.execute("ALTER TABLE core_stockreceipt DROP CONSTRAINT stock_receipt_quantity_in_range")
    poisoned = StockReceipt(product=products[0], quantity=2_147_483_647)
    poisoned.save()
    with connection.cursor() as cursor:  # the row's deferred foreign key checks, before more DDL
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    with pytest.raises(RuntimeError) as refused, connection.schema_editor() as editor:
        migration.add_checks(django_apps, editor)
    assert "core_stockreceipt has rows that break stock_receipt_quantity_in_range" in str(refused.value)
    assert f"ids [{poisoned.pk}]" in str(refused.value)
    assert StockReceipt.objects.get(pk=poisoned.pk).quantity == 2_147_483_647
