"""Two business users editing one record at once, through the admin over HTTP, on PostgreSQL."""

import threading
import time
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from django.test import Client

from core import services
from core.models import Customer, Order, OrderLine, Product
from outbox.emit.context import event_context
from outbox.testing import deliver
from tests.consumers.helpers import routed_ids, stock
from tests.core.helpers import logged_in, opened, order_change_form
from tests.outbox.helpers import aggregate_events, conninfo

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(db: None) -> Client:
    return logged_in("alice")


@pytest.fixture
def bob(db: None) -> Client:
    return logged_in("bob")


@pytest.fixture
def stocked(products: list[Product]) -> list[Product]:
    """The three products with 10 each in stock, applied by the inventory consumer."""
    for product in products:
        services.stock_receive(sku=product.sku, quantity=10)
    deliver("inventory", routed_ids("inventory"))
    return products


def placed_order(customer: Customer, products: list[Product], quantity: int = 1) -> Order:
    return services.order_create(customer=customer, lines=[services.LineRequest(products[0].sku, quantity)], place=True)


def test_of_two_forms_opened_at_one_version_the_second_save_is_refused_saying_who_and_when(
    alice: Client, bob: Client, customer: Customer, products: list[Product]
) -> None:
    """The lost update: bob sets the line to 5; alice's form, opened before, still says 1 and
    would put it back. Hers is refused, naming bob and his change; the line stays at 5."""
    order = placed_order(customer, products)
    line = order.lines.get()
    url = f"/admin/core/order/{order.pk}/change/"
    alice_opened, bob_opened = opened(alice, url), opened(bob, url)
    assert alice_opened == bob_opened != {}

    saved = bob.post(url, {**order_change_form(order, status="placed", quantities={line.pk: 5}), **bob_opened})
    assert saved.status_code == 302, saved.content.decode()[:3000]

    stale = alice.post(url, {**order_change_form(order, status="placed", quantities={line.pk: 1}), **alice_opened})
    assert stale.status_code == 200
    page = stale.content.decode()
    assert f"Order #{order.pk} was changed by bob at " in page
    assert "(order_line.changed) after you opened this form" in page
    assert "Reload the page" in page
    assert OrderLine.objects.get(pk=line.pk).quantity == 5
    # Opened again, the form carries the new version and saves.
    again = alice.post(url, {**order_change_form(order, status="placed"), **opened(alice, url)})
    assert again.status_code == 302


def test_a_form_opened_before_an_order_was_cancelled_cannot_place_it_again(
    alice: Client, bob: Client, customer: Customer, stocked: list[Product]
) -> None:
    """Bob cancels with the list's action while alice has the order open; her save is refused and
    the order stays cancelled, its stock back on the shelf."""
    order = placed_order(customer, stocked, quantity=2)
    url = f"/admin/core/order/{order.pk}/change/"
    alice_opened = opened(alice, url)
    bob.post("/admin/core/order/", {"action": "cancel_orders", "_selected_action": [order.pk]})
    assert Order.objects.get(pk=order.pk).status == Order.Status.CANCELLED

    stale = alice.post(url, {**order_change_form(order, status="placed"), **alice_opened})
    assert stale.status_code == 200
    assert f"Order #{order.pk} was changed by bob at " in stale.content.decode()
    assert "(order.cancelled)" in stale.content.decode()
    assert Order.objects.get(pk=order.pk).status == Order.Status.CANCELLED
    assert [e.event_type for e in aggregate_events("order", order.pk)][-1] == "order.cancelled"
    deliver("inventory", routed_ids("inventory"))
    assert stock(stocked[0]) == [10]


def test_a_change_form_without_its_version_is_refused(alice: Client, customer: Customer) -> None:
    """A form that does not say what it was opened at cannot be checked, so it is not saved."""
    response = alice.post(f"/admin/core/customer/{customer.pk}/change/", {"name": "Ada King", "email": customer.email})
    assert response.status_code == 200
    assert "does not say which version of it you opened" in response.content.decode()
    assert Customer.objects.get(pk=customer.pk).name == "Ada Lovelace"


@pytest.mark.parametrize("record", ["customer", "product"])
def test_a_stale_customer_or_product_form_is_refused(
    alice: Client, bob: Client, customer: Customer, products: list[Product], record: str
) -> None:
    obj: Any = customer if record == "customer" else products[0]
    url = f"/admin/core/{record}/{obj.pk}/change/"
    if record == "customer":
        first, second = {"name": "Ada King", "email": obj.email}, {"name": "Ada Byron", "email": obj.email}
    else:
        first = {"sku": obj.sku, "name": obj.name, "price": "95.00"}
        second = {"sku": obj.sku, "name": obj.name, "price": "80.00"}
    alice_opened, bob_opened = opened(alice, url), opened(bob, url)
    assert bob.post(url, {**first, **bob_opened}).status_code == 302
    stale = alice.post(url, {**second, **alice_opened})
    assert stale.status_code == 200
    assert "was changed by bob at " in stale.content.decode()
    obj.refresh_from_db()
    assert (obj.name if record == "customer" else str(obj.price)) == ("Ada King" if record == "customer" else "95.00")


def test_stock_received_while_a_product_is_open_is_no_conflict_and_is_kept(
    alice: Client, products: list[Product]
) -> None:
    """A receipt changes only the product's stock, which its form does not edit: the price change
    saves, and the stock the inventory consumer set is not written back to its old value."""
    product = products[0]
    url = f"/admin/core/product/{product.pk}/change/"
    form = opened(alice, url)
    services.stock_receive(sku=product.sku, quantity=10)
    deliver("inventory", routed_ids("inventory"))
    response = alice.post(url, {"sku": product.sku, "name": product.name, "price": "95.00", **form})
    assert response.status_code == 302, response.content.decode()[:3000]
    product.refresh_from_db()
    assert (str(product.price), product.stock) == ("95.00", 10)


def _wait_for_a_lock_wait(timeout: float = 10.0) -> None:
    """Return once some session of the test database waits for a row lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(conninfo(), autocommit=True) as other:
        while time.monotonic() < deadline:
            row = other.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.02)
    raise AssertionError("no session started waiting for a lock")


@pytest.mark.django_db(transaction=True)
def test_a_save_racing_a_cancellation_waits_for_it_and_is_then_refused(
    alice: Client, customer: Customer, stocked: list[Product]
) -> None:
    """The two admins at once: alice's save reaches the order while bob's cancellation holds it.
    It waits for the lock, then sees the new version and is refused, instead of writing
    `placed` over the cancellation."""
    order = placed_order(customer, stocked, quantity=2)
    url = f"/admin/core/order/{order.pk}/change/"
    alice_opened = opened(alice, url)
    holding, release = threading.Event(), threading.Event()
    responses: list[Any] = []
    errors: list[BaseException] = []

    def cancel() -> None:
        try:
            with event_context(actor="user:bob"), transaction.atomic():
                services.order_set_status(order=order, status=Order.Status.CANCELLED)
                holding.set()
                release.wait(timeout=20)
        except BaseException as exc:
            errors.append(exc)
        finally:
            holding.set()
            connection.close()

    def save() -> None:
        try:
            responses.append(alice.post(url, {**order_change_form(order, status="placed"), **alice_opened}))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    bob_thread = threading.Thread(target=cancel)
    bob_thread.start()
    assert holding.wait(timeout=20)
    alice_thread = threading.Thread(target=save)
    alice_thread.start()
    try:
        _wait_for_a_lock_wait()
    finally:
        release.set()
        bob_thread.join(timeout=30)
        alice_thread.join(timeout=30)
    assert not errors
    assert responses[0].status_code == 200
    assert "was changed by bob at " in responses[0].content.decode()
    assert Order.objects.get(pk=order.pk).status == Order.Status.CANCELLED
    deliver("inventory", routed_ids("inventory"))
    assert stock(stocked[0]) == [10]
