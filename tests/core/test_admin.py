"""The business users' admin, over HTTP as a logged-in staff user."""

from typing import Any

import pytest
from django.test import Client

from core import services
from core.models import Customer, Order, Product
from tests.core.helpers import opened
from tests.outbox.helpers import events

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/core/order/add/"


def order_form(customer: Customer, lines: list[tuple[Any, Any]], status: str = "placed") -> dict[str, Any]:
    """The POST body of the order add form with its inline lines."""
    data: dict[str, Any] = {
        "customer": customer.pk,
        "status": status,
        "lines-TOTAL_FORMS": len(lines),
        "lines-INITIAL_FORMS": 0,
        "lines-MIN_NUM_FORMS": 0,
        "lines-MAX_NUM_FORMS": 1000,
    }
    for i, (product, quantity) in enumerate(lines):
        data.update({f"lines-{i}-product": product, f"lines-{i}-quantity": quantity, f"lines-{i}-unit_price": ""})
    return data


def test_staff_user_adds_an_order_with_three_lines_in_one_submit(
    admin_client: Client, customer: Customer, products: list[Product]
) -> None:
    """One submit creates the placed order and its three lines at the products' prices."""
    data = order_form(customer, [(p.pk, i + 1) for i, p in enumerate(products)])
    response = admin_client.post(ADD_URL, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    order = Order.objects.get()
    assert order.status == Order.Status.PLACED
    assert order.placed_at is not None
    assert [(li.product_id, li.quantity, li.unit_price) for li in order.lines.all()] == [
        (p.pk, i + 1, p.price) for i, p in enumerate(products)
    ]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([(0, 0)], "Quantity must be a whole number from 1 to 1,000,000 (got 0)."),
        ([(0, -2)], "Quantity must be a whole number from 1 to 1,000,000 (got -2)."),
        ([(0, 1_000_001)], "Quantity must be a whole number from 1 to 1,000,000 (got 1000001)."),
        ([(999999, 1)], "Unknown product: it may have been deleted."),
        ([], "An order needs at least one line before it is placed."),
    ],
    ids=["zero-quantity", "negative-quantity", "too-large-quantity", "unknown-product", "empty-placed-order"],
)
def test_invalid_order_shows_the_error_and_saves_nothing(
    admin_client: Client, customer: Customer, products: list[Product], lines: list[tuple[int, int]], message: str
) -> None:
    """A bad line or an empty placed order re-shows the form with the reason; nothing is saved."""
    resolved = [(products[0].pk if product == 0 else product, qty) for product, qty in lines]
    events_before = events().count()
    response = admin_client.post(ADD_URL, order_form(customer, resolved))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert Order.objects.count() == 0
    assert events().count() == events_before


def test_closed_order_cannot_be_reopened_in_the_form(
    admin_client: Client, customer: Customer, products: list[Product]
) -> None:
    """Changing a fulfilled order back to draft is refused with the allowed transitions named."""
    order = services.order_create(customer=customer, lines=[services.LineRequest("KB-001", 1)], place=True)
    services.order_set_status(order=order, status=Order.Status.FULFILLED)
    line = order.lines.get()
    change_url = f"/admin/core/order/{order.pk}/change/"
    data = {
        **opened(admin_client, change_url),
        "customer": customer.pk,
        "status": "draft",
        "lines-TOTAL_FORMS": 1,
        "lines-INITIAL_FORMS": 1,
        "lines-MIN_NUM_FORMS": 0,
        "lines-MAX_NUM_FORMS": 1000,
        "lines-0-id": line.pk,
        "lines-0-order": order.pk,
        "lines-0-product": line.product_id,
        "lines-0-quantity": line.quantity,
        "lines-0-unit_price": line.unit_price,
    }
    response = admin_client.post(change_url, data)
    assert response.status_code == 200
    assert "cannot become draft" in response.content.decode()
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED


def test_place_action_refuses_an_empty_draft_and_places_the_rest(
    admin_client: Client, customer: Customer, products: list[Product]
) -> None:
    """The bulk place action reports the empty order's error and places the others."""
    empty = services.order_create(customer=customer, lines=[])
    full = services.order_create(customer=customer, lines=[services.LineRequest("KB-001", 1)])
    response = admin_client.post(
        "/admin/core/order/",
        {"action": "place_orders", "_selected_action": [empty.pk, full.pk]},
        follow=True,
    )
    content = response.content.decode()
    assert "at least one line" in content
    assert "1 order(s) now placed." in content
    empty.refresh_from_db()
    full.refresh_from_db()
    assert (empty.status, full.status) == (Order.Status.DRAFT, Order.Status.PLACED)


def test_stock_is_read_only_in_the_product_form(admin_client: Client, products: list[Product]) -> None:
    """A posted stock value is ignored: only the inventory consumer changes stock."""
    product = products[0]
    change_url = f"/admin/core/product/{product.pk}/change/"
    response = admin_client.post(
        change_url,
        {"sku": product.sku, "name": "Renamed", "price": "1.00", "stock": "999", **opened(admin_client, change_url)},
    )
    assert response.status_code == 302
    product.refresh_from_db()
    assert (product.name, product.stock) == ("Renamed", 0)


def test_csv_export_lists_the_selected_orders(
    admin_client: Client, customer: Customer, products: list[Product]
) -> None:
    """The export action streams a CSV with a header and one row per selected order."""
    orders = [services.order_create(customer=customer, lines=[services.LineRequest("KB-001", 1)]) for _ in range(2)]
    response = admin_client.post(
        "/admin/core/order/", {"action": "export_csv", "_selected_action": [o.pk for o in orders]}
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    rows = b"".join(response.streaming_content).decode().splitlines()  # type: ignore[attr-defined]
    assert rows[0].startswith("id,customer_id,status")
    assert [row.split(",")[0] for row in rows[1:]] == [str(o.pk) for o in orders]


def test_changelists_and_search_render(admin_client: Client, customer: Customer, products: list[Product]) -> None:
    """Every business changelist renders, with search and filters applied."""
    services.order_create(customer=customer, lines=[services.LineRequest("KB-001", 1)], place=True)
    services.stock_receive(sku="KB-001", quantity=3)
    for url in [
        "/admin/core/order/?q=ada&status__exact=placed",
        "/admin/core/product/?q=KB",
        "/admin/core/customer/?q=ada",
        "/admin/core/stockreceipt/?q=KB-001",
        "/admin/core/stockreceipt/add/",
    ]:
        response = admin_client.get(url)
        assert response.status_code == 200, url
    assert "KB-001" in admin_client.get("/admin/core/product/?q=KB").content.decode()
