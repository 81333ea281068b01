"""The business rules, through the services."""

import pytest

from core import services
from core.errors import EmptyOrderError, InvalidQuantityError, InvalidTransitionError, UnknownProductError
from core.models import Customer, Order, Product

pytestmark = pytest.mark.django_db

Status = Order.Status


def line(sku: str, quantity: int = 1) -> services.LineRequest:
    return services.LineRequest(sku=sku, quantity=quantity)


def test_order_create_copies_current_prices_and_places(customer: Customer, products: list[Product]) -> None:
    """A placed order gets its lines at the products' prices and a placed_at time."""
    order = services.order_create(customer=customer, lines=[line("KB-001", 2), line("MS-002")], place=True)
    order.refresh_from_db()
    assert order.status == Status.PLACED
    assert order.placed_at is not None
    assert [(li.product.sku, li.quantity, li.unit_price) for li in order.lines.all()] == [
        ("KB-001", 2, products[0].price),
        ("MS-002", 1, products[1].price),
    ]


def test_unknown_sku_is_refused_with_the_sku_named(customer: Customer, products: list[Product]) -> None:
    """An unknown SKU names itself in the error and creates nothing."""
    with pytest.raises(UnknownProductError, match=r"'NOPE-9'.*create the product first"):
        services.order_create(customer=customer, lines=[line("KB-001"), line("NOPE-9")])
    assert Order.objects.count() == 0


@pytest.mark.parametrize("quantity", [0, -3, 1_000_001])
def test_quantity_out_of_range_is_refused(customer: Customer, products: list[Product], quantity: int) -> None:
    """Zero, negative and too large quantities are refused with one message saying what to do."""
    with pytest.raises(InvalidQuantityError, match=rf"from 1 to 1,000,000 \(got {quantity}\)"):
        services.order_create(customer=customer, lines=[line("KB-001", quantity)])
    with pytest.raises(InvalidQuantityError):
        services.stock_receive(sku="KB-001", quantity=quantity)
    assert Order.objects.count() == 0


def test_placing_an_empty_order_is_refused(customer: Customer) -> None:
    """An order without lines cannot be placed, neither at creation nor later."""
    with pytest.raises(EmptyOrderError, match="at least one line"):
        services.order_create(customer=customer, lines=[], place=True)
    draft = services.order_create(customer=customer, lines=[])
    with pytest.raises(EmptyOrderError):
        services.order_set_status(order=draft, status=Status.PLACED)
    draft.refresh_from_db()
    assert draft.status == Status.DRAFT


def test_status_transitions_follow_the_lifecycle(customer: Customer, products: list[Product]) -> None:
    """draft → placed → fulfilled is allowed; a closed order cannot be reopened or cancelled."""
    order = services.order_create(customer=customer, lines=[line("KB-001")])
    order = services.order_set_status(order=order, status=Status.PLACED)
    order = services.order_set_status(order=order, status=Status.FULFILLED)
    assert order.closed_at is not None
    with pytest.raises(InvalidTransitionError, match="cannot become cancelled"):
        services.order_set_status(order=order, status=Status.CANCELLED)
    order.refresh_from_db()
    assert order.status == Status.FULFILLED


def test_lines_cannot_be_added_to_a_closed_order(customer: Customer, products: list[Product]) -> None:
    """A cancelled order takes no new lines."""
    order = services.order_create(customer=customer, lines=[line("KB-001")], place=True)
    services.order_set_status(order=order, status=Status.CANCELLED)
    order.refresh_from_db()
    with pytest.raises(InvalidTransitionError, match="is cancelled: its lines can no longer be added"):
        services.order_line_add(order=order, sku="MS-002", quantity=1)
    assert order.lines.count() == 1


def test_a_line_added_through_a_stale_order_object_is_refused(customer: Customer, products: list[Product]) -> None:
    """The status is read from the locked row, not from the caller's copy that still says placed."""
    order = services.order_create(customer=customer, lines=[line("KB-001")], place=True)
    stale = Order.objects.get(pk=order.pk)
    services.order_set_status(order=order, status=Status.CANCELLED)
    with pytest.raises(InvalidTransitionError, match="is cancelled"):
        services.order_line_add(order=stale, sku="MS-002", quantity=1)
    assert order.lines.count() == 1


@pytest.mark.django_db(transaction=True)
def test_one_address_saved_twice_at_once_in_two_cases_is_refused_in_words() -> None:
    """The second save waits for the first to commit, then is told which customer has the address
    (it used to meet the unique index instead: a server error in the admin)."""
    import threading

    from django.db import connection, transaction

    from core.errors import DuplicateEmailError

    checked, release = threading.Event(), threading.Event()
    outcome: list[object] = []

    def second() -> None:
        checked.wait(10)
        try:
            services.customer_create(name="Ada again", email="ADA@example.com")
        except Exception as e:  # the outcome under test
            outcome.append(e)
        finally:
            connection.close()

    thread = threading.Thread(target=second)
    thread.start()
    with transaction.atomic():
        services.customer_email_check(email="ada@example.com")
        checked.set()
        release.wait(1)  # the second save runs meanwhile, and waits on the address
        Customer.objects.create(name="Ada", email="ada@example.com")
    thread.join(30)
    assert len(outcome) == 1
    assert isinstance(outcome[0], DuplicateEmailError), outcome
    assert "customer #" in str(outcome[0])
    assert Customer.objects.filter(email__iexact="ada@example.com").count() == 1
