"""The lists that grow with the business (orders, receipts, the stock ledger, e-mail notices):
never counted, never a DISTINCT over the table, each search answered by an index."""

from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from consumers.models import EmailNotice, StockMovement
from core import services
from core.models import Customer, Order, Product
from outbox.testing import deliver
from tests.consumers.helpers import routed_ids

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop(customer: Customer, products: list[Product]) -> dict[str, Any]:
    """Two customers' orders, a receipt, the ledger the inventory consumer wrote, and two notices."""
    grace = services.customer_create(name="Grace Hopper", email="grace@example.com")
    services.stock_receive(sku="KB-001", quantity=10)
    ada_orders = [
        services.order_create(customer=customer, lines=[services.LineRequest("KB-001", 1)], place=True)
        for _ in range(2)
    ]
    grace_order = services.order_create(customer=grace, lines=[services.LineRequest("MS-002", 2)], place=True)
    deliver("inventory", routed_ids("inventory"))
    for order, sends in ((ada_orders[0], 1), (grace_order, 2)):
        EmailNotice.objects.create(
            order_id=order.pk,
            kind="order_confirmation",
            event_id=0,
            recipient="x@example.com",
            subject="s",
            sends=sends,
        )
    return {"ada": ada_orders, "grace": grace_order}


def _listed(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.content.decode()


@pytest.mark.parametrize(
    "url",
    [
        "/admin/core/order/",
        "/admin/core/order/?q=ada&status__exact=placed",
        "/admin/core/order/?q=grace%40example.com",
        "/admin/core/order/?created_at__gte=2026-01-01T00:00:00%2B00:00",
        "/admin/core/stockreceipt/?q=KB",
        "/admin/consumers/stockmovement/",
        "/admin/consumers/stockmovement/?q=KB-001",
        "/admin/consumers/emailnotice/?sends=more_than_once&kind__exact=order_confirmation",
    ],
)
def test_growing_lists_never_count_or_list_distinct_values(
    admin_client: Client, shop: dict[str, Any], url: str
) -> None:
    """No COUNT and no SELECT DISTINCT over the table, whatever the filter or search: both read every row."""
    with CaptureQueriesContext(connection) as queries:
        _listed(admin_client, url)
    scanning = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper() or "DISTINCT" in q["sql"]]
    assert scanning == []


def test_order_search_by_number_exact_email_or_part_of_a_name(admin_client: Client, shop: dict[str, Any]) -> None:
    ada, grace = shop["ada"], shop["grace"]

    def found(term: str) -> set[int]:
        page = _listed(admin_client, f"/admin/core/order/?q={term}")
        return {o.pk for o in [*ada, grace] if f"/admin/core/order/{o.pk}/change/" in page}

    assert found(str(grace.pk)) == {grace.pk}
    assert found(f"%23{ada[1].pk}") == {ada[1].pk}  # "#7", as the order is named
    assert found("grace%40example.com") == {grace.pk}
    assert found("GRACE%40Example.com") == {grace.pk}  # one customer per address, whatever its case
    assert found("lovel") == {o.pk for o in ada}
    assert found("nobody") == set()


def test_ledger_search_by_event_source_or_sku(admin_client: Client, shop: dict[str, Any]) -> None:
    grace = shop["grace"]
    movement = StockMovement.objects.get(source=f"order:{grace.pk}")
    for term in (str(movement.event_id), f"order:{grace.pk}", "MS-002"):
        page = _listed(admin_client, f"/admin/consumers/stockmovement/?q={term}")
        assert f"/admin/consumers/stockmovement/{movement.pk}/change/" in page, term
        others = StockMovement.objects.exclude(pk=movement.pk)
        assert not any(f"/admin/consumers/stockmovement/{m.pk}/change/" in page for m in others), term


def test_ledger_search_by_a_numeric_sku_finds_its_movements(admin_client: Client, shop: dict[str, Any]) -> None:
    """Digits may be an event id or a SKU: a product whose SKU is all digits is found by it."""
    product = services.product_create(sku="4006381333931", name="Pencil", price=Decimal("1.20"))
    services.stock_receive(sku=product.sku, quantity=5)
    deliver("inventory", routed_ids("inventory"))
    movement = StockMovement.objects.get(product=product)

    page = _listed(admin_client, f"/admin/consumers/stockmovement/?q={product.sku}")

    assert f"/admin/consumers/stockmovement/{movement.pk}/change/" in page
    others = StockMovement.objects.exclude(pk=movement.pk)
    assert not any(f"/admin/consumers/stockmovement/{m.pk}/change/" in page for m in others)


def test_one_products_movements_newest_first_are_read_from_an_index_in_order(shop: dict[str, Any]) -> None:
    """The ledger by SKU reads only the page it shows: the (product, id) index gives the movements
    newest first, with no sort of every movement of the product."""
    product = Product.objects.get(sku="KB-001")
    query = StockMovement.objects.filter(product_id=product.pk).order_by("-id")[:51]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # the tables are tiny; ask what an index does
        plan = query.explain()
    assert "inventory_movement_product_idx" in plan, plan
    assert "Sort" not in plan, plan


def test_an_order_search_matching_too_many_names_says_so(admin_client: Client, customer: Customer) -> None:
    """A name part matching more customers than a search takes lists the first ones and says what
    to search instead, rather than silently leaving orders out."""
    Customer.objects.bulk_create(
        Customer(name=f"Common Name {i:03d}", email=f"common{i}@example.com") for i in range(201)
    )
    page = _listed(admin_client, "/admin/core/order/?q=common")
    assert "More than 200 customers" in page
    assert "Search more of the name, or the exact e-mail." in page
    assert "More than 200 customers" not in _listed(admin_client, "/admin/core/order/?q=lovel")
    # An action posted from the searched list redirects back to it: the warning shows once.
    response = admin_client.post("/admin/core/order/?q=common", {"action": "place_orders", "index": 0}, follow=True)
    assert response.content.decode().count("More than 200 customers") == 1


def test_notices_sent_more_than_once_are_a_filter_and_orders_a_search(
    admin_client: Client, shop: dict[str, Any]
) -> None:
    resent = EmailNotice.objects.get(sends=2)
    once = EmailNotice.objects.get(sends=1)
    page = _listed(admin_client, "/admin/consumers/emailnotice/?sends=more_than_once")
    assert f"/{resent.pk}/change/" in page
    assert f"/{once.pk}/change/" not in page
    page = _listed(admin_client, f"/admin/consumers/emailnotice/?q={once.order_id}")
    assert f"/{once.pk}/change/" in page
    assert f"/{resent.pk}/change/" not in page
    page = _listed(admin_client, "/admin/consumers/emailnotice/?q=ada")
    assert "Search e-mail notices by order id" in page
    assert "/change/" not in page


def test_a_long_order_list_pages_by_next_and_previous(
    admin_client: Client, customer: Customer, products: list[Product]
) -> None:
    """Fifty a page; the next page is found by fetching one row more, never by counting."""
    orders = [
        services.order_create(customer=customer, lines=[services.LineRequest("KB-001", 1)], place=False)
        for _ in range(51)
    ]
    first = _listed(admin_client, "/admin/core/order/")
    assert 'rel="next"' in first
    assert "not counted" in first
    assert f"/admin/core/order/{orders[0].pk}/change/" not in first  # the oldest is on page 2
    second = _listed(admin_client, "/admin/core/order/?p=2")
    assert f"/admin/core/order/{orders[0].pk}/change/" in second
    assert 'rel="prev"' in second
    assert 'rel="next"' not in second
    assert Order.objects.count() == 51


@pytest.mark.parametrize(
    "url",
    [
        "/admin/core/order/?q=99999999999999999999",
        "/admin/consumers/stockmovement/?q=99999999999999999999",
        "/admin/consumers/emailnotice/?q=99999999999999999999",
        "/admin/outbox/delivery/?q=99999999999999999999",
        "/admin/outbox/event/?q=99999999999999999999",
        "/admin/core/order/?q=" + "9" * 5000,  # beyond what Python parses as an integer
        "/admin/outbox/event/?q=" + "9" * 5000,
    ],
)
def test_a_number_too_large_for_an_id_finds_nothing_instead_of_failing(admin_client: Client, url: str) -> None:
    """Beyond PostgreSQL's bigint a number is no id: the search misses instead of a database error."""
    page = _listed(admin_client, url)
    assert "/change/" not in page
