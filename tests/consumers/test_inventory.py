"""The inventory consumer on real PostgreSQL: the stock ledger, exactly once, in any order."""

import logging
import threading
from typing import Any

import pytest
from django.db import connection

from consumers.models import StockMovement
from core import services
from core.models import Customer, OrderLine, Product, StockReceipt
from outbox.models import Delivery
from outbox.testing import deliver
from tests.consumers.helpers import routed_ids, statuses, stock
from tests.outbox.helpers import events


def place(customer: Customer, products: list[Product], quantities: tuple[int, ...] = (2, 1, 3)) -> Any:
    lines = [services.LineRequest(sku=p.sku, quantity=q) for p, q in zip(products, quantities, strict=True)]
    return services.order_create(customer=customer, lines=lines, place=True)


def test_a_placed_order_takes_stock_for_every_line_exactly_once(customer: Customer, stocked: list[Product]) -> None:
    """The admin's shape (order.placed before its three order_line.added): all three lines move."""
    order = place(customer, stocked)
    ids = routed_ids("inventory")
    deliver("inventory", ids)
    assert stock(*stocked) == [8, 9, 7]
    moves = StockMovement.objects.filter(source=f"order:{order.pk}")
    assert sorted((m.product_id, m.quantity) for m in moves) == sorted(
        [(stocked[0].pk, -2), (stocked[1].pk, -1), (stocked[2].pk, -3)]
    )
    assert set(statuses("inventory").values()) == {"done"}
    # The same message again, and each event in a message of its own: nothing moves.
    deliver("inventory", ids)
    for event_id in ids:
        deliver("inventory", [event_id])
    assert stock(*stocked) == [8, 9, 7]
    assert StockMovement.objects.count() == 6  # three receipts, three lines


def test_events_in_reverse_order_give_the_same_stock(customer: Customer, stocked: list[Product]) -> None:
    """Lines arriving before their order.placed, receipts last: the result does not depend on order."""
    order = place(customer, stocked)
    services.order_set_status(order=order, status="cancelled")
    second = place(customer, stocked, (1, 1, 1))
    for event_id in reversed(routed_ids("inventory")):
        deliver("inventory", [event_id])
    assert stock(*stocked) == [9, 9, 9]
    assert sum(m.quantity for m in StockMovement.objects.filter(source=f"order:{order.pk}")) == 0
    assert sum(m.quantity for m in StockMovement.objects.filter(source=f"order:{second.pk}")) == -3


def test_cancelling_a_placed_order_puts_its_stock_back(customer: Customer, stocked: list[Product]) -> None:
    order = place(customer, stocked)
    deliver("inventory", routed_ids("inventory"))
    services.order_set_status(order=order, status="cancelled")
    deliver("inventory", routed_ids("inventory"))
    assert stock(*stocked) == [10, 10, 10]
    back = StockMovement.objects.filter(event_type="order.cancelled")
    assert sorted(m.quantity for m in back) == [1, 2, 3]


def test_a_line_edited_on_a_placed_order_moves_the_difference(customer: Customer, stocked: list[Product]) -> None:
    order = place(customer, stocked)
    deliver("inventory", routed_ids("inventory"))
    line = OrderLine.objects.get(order=order, product=stocked[0])
    line.quantity = 5
    line.save()
    OrderLine.objects.get(order=order, product=stocked[1]).delete()
    deliver("inventory", routed_ids("inventory"))
    assert stock(*stocked) == [5, 10, 7]
    changed = StockMovement.objects.get(event_type="order_line.changed")
    assert (changed.product_id, changed.quantity, changed.stock_after) == (stocked[0].pk, -3, 5)
    assert StockMovement.objects.get(event_type="order_line.removed").quantity == 1


def test_a_draft_order_moves_nothing_until_it_is_placed(customer: Customer, stocked: list[Product]) -> None:
    order = services.order_create(customer=customer, lines=[services.LineRequest(sku=stocked[0].sku, quantity=4)])
    deliver("inventory", routed_ids("inventory"))
    assert stock(*stocked) == [10, 10, 10]
    services.order_set_status(order=order, status="placed")
    deliver("inventory", routed_ids("inventory"))
    assert stock(*stocked) == [6, 10, 10]


def test_stock_goes_negative_as_a_logged_backorder(
    customer: Customer, stocked: list[Product], caplog: pytest.LogCaptureFixture
) -> None:
    """A placed order is a fact: the consumer applies it even past zero, and says so."""
    place(customer, stocked, (12, 1, 1))
    with caplog.at_level(logging.WARNING, logger="consumers.inventory"):
        deliver("inventory", routed_ids("inventory"))
    assert stock(*stocked) == [-2, 9, 9]
    assert f"product {stocked[0].pk} is backordered: stock -2" in caplog.text
    assert set(statuses("inventory").values()) == {"done"}


def test_receipts_put_stock_in_and_a_removed_receipt_takes_it_out(products: list[Product]) -> None:
    receipt = services.stock_receive(sku=products[0].sku, quantity=7)
    deliver("inventory", routed_ids("inventory"))
    assert stock(products[0]) == [7]
    StockReceipt.objects.get(pk=receipt.pk).delete()
    deliver("inventory", routed_ids("inventory"))
    assert stock(products[0]) == [0]


def test_stock_beyond_32_bits_is_applied_not_refused(products: list[Product]) -> None:
    """Stock and the ledger are 64-bit: a receipt that takes stock past 2,147,483,647 is applied,
    where it once failed every retry with "integer out of range" and went dead."""
    Product.objects.filter(pk=products[0].pk).update(stock=2_147_000_000)  # stock is untracked: no event
    receipt = services.stock_receive(sku=products[0].sku, quantity=1_000_000)
    deliver("inventory", routed_ids("inventory"))
    assert stock(products[0]) == [2_148_000_000]
    movement = StockMovement.objects.get(source=f"receipt:{receipt.pk}")
    assert (movement.quantity, movement.stock_after) == (1_000_000, 2_148_000_000)
    assert set(statuses("inventory").values()) == {"done"}


def test_an_event_the_consumer_does_not_handle_is_dead_at_once_with_the_reason(customer: Customer) -> None:
    """A route that should not exist: the delivery says what to fix; nothing else is blocked."""
    deliver("inventory", [e.id for e in events()])
    delivery = Delivery.objects.get(consumer="inventory")
    assert delivery.status == "dead"
    assert "does not handle customer.registered events" in delivery.last_error


@pytest.mark.django_db(transaction=True)
def test_two_workers_applying_the_same_events_at_once_move_stock_once(
    customer: Customer, stocked: list[Product]
) -> None:
    """Concurrent duplicates (two relays, a redelivery): the source lock lets one apply each event."""
    for _ in range(5):
        place(customer, stocked, (1, 1, 1))
    ids = routed_ids("inventory")
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker(order: list[int]) -> None:
        try:
            start.wait(timeout=10)
            deliver("inventory", order)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(ids if i % 2 else ids[::-1],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert stock(*stocked) == [5, 5, 5]
    assert StockMovement.objects.filter(source__startswith="order:").count() == 15


def test_the_admin_shows_backordered_products_and_the_ledger_read_only(
    admin_client: Any, customer: Customer, stocked: list[Product]
) -> None:
    place(customer, stocked, (12, 1, 1))
    deliver("inventory", routed_ids("inventory"))
    page = admin_client.get("/admin/core/product/?stock=backordered").content.decode()
    assert stocked[0].sku in page
    assert stocked[1].sku not in page
    ledger = admin_client.get("/admin/consumers/stockmovement/")
    assert ledger.status_code == 200
    assert "-12" in ledger.content.decode()
    movement = StockMovement.objects.first()
    assert movement is not None
    delete = admin_client.post(f"/admin/consumers/stockmovement/{movement.pk}/delete/", {"post": "yes"})
    assert delete.status_code == 403
    assert StockMovement.objects.filter(pk=movement.pk).exists()
