"""The daily sales summary (core/reports.py): what it e-mails, and to whom, and that two relays
running it as their periodic job send it once."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test.utils import override_settings
from django.utils import timezone

from core import services
from core.models import Customer, Product
from core.reports import sales_summary_send
from outbox.models import JobRun
from tests.processes import two_relays_run_once
from tests.smtp import smtp_server

# The relays here publish to Redis: empty it around each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("empty_queues")


@pytest.fixture
def staff(db: None) -> list[User]:
    """Two active staff users with addresses, and users who must get nothing."""
    User.objects.create_user("inactive", "inactive@example.com", is_staff=True, is_active=False)
    User.objects.create_user("customer", "customer@example.com")
    User.objects.create_user("noaddress", "", is_staff=True)
    return [
        User.objects.create_user("bob", "bob@example.com", is_staff=True),
        User.objects.create_superuser("alice", "alice@example.com", "pw"),
    ]


def line(sku: str, quantity: int) -> services.LineRequest:
    return services.LineRequest(sku=sku, quantity=quantity)


@pytest.mark.django_db
def test_sales_summary_over_smtp_lists_the_days_orders_revenue_cancellations_and_top_products(
    customer: Customer, products: list[Product], staff: list[User]
) -> None:
    """Placed orders (a cancelled one among them), their revenue, the cancellation and the best
    sellers, e-mailed to each active staff user with an address, and to nobody else."""
    services.order_create(customer=customer, lines=[line("KB-001", 2), line("MS-002", 1)], place=True)
    services.order_create(customer=customer, lines=[line("MS-002", 3)], place=True)
    cancelled = services.order_create(customer=customer, lines=[line("MN-003", 1)], place=True)
    services.order_set_status(order=cancelled, status="cancelled")
    services.order_create(customer=customer, lines=[line("MN-003", 5)])  # a draft: not a sale

    with (
        smtp_server() as mailbox,
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST=mailbox.host,
            EMAIL_PORT=mailbox.port,
        ),
    ):
        outcome = sales_summary_send(day=timezone.localdate())

    assert outcome == f"sent the summary for {timezone.localdate()} to 2 staff"
    assert sorted(str(m["To"]) for m in mailbox.messages) == ["alice@example.com", "bob@example.com"]
    message = mailbox.messages[0]
    assert str(message["Subject"]) == f"Sales summary for {timezone.localdate():%A %d %B %Y}"
    body = message.get_content().replace("\r\n", "\n")
    # 2 x 89.00 + 29.50 + 3 x 29.50 + 249.00
    revenue = Decimal("178.00") + Decimal("29.50") + Decimal("88.50") + Decimal("249.00")
    assert "Orders placed:  3\n" in body
    assert f"Revenue:        {revenue:,.2f}\n" in body
    assert "Cancellations:  1 (249.00)\n" in body
    top = body.split("Top products (units sold):\n", 1)[1].splitlines()[:3]
    assert top == [
        "  MS-002  Mouse: 4 units, 118.00",
        "  KB-001  Keyboard: 2 units, 178.00",
        "  MN-003  Monitor: 1 units, 249.00",
    ]


@pytest.mark.django_db
def test_sales_summary_of_a_day_without_orders_says_so(staff: list[User]) -> None:
    """Yesterday (the default) had no orders: zeros, and no products."""
    with (
        smtp_server() as mailbox,
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST=mailbox.host,
            EMAIL_PORT=mailbox.port,
        ),
    ):
        sales_summary_send()
    body = mailbox.messages[0].get_content().replace("\r\n", "\n")
    assert f"Sales on {timezone.localdate() - timedelta(days=1)}" in body
    assert "Orders placed:  0\n" in body
    assert "No products sold." in body


@pytest.mark.django_db(transaction=True)
def test_two_relay_processes_send_the_daily_summary_once(tmp_path: Path, staff: list[User]) -> None:
    """Two real relays with the sales summary due: one JobRun, one e-mail per staff user."""
    with smtp_server() as mailbox:
        run = two_relays_run_once(
            tmp_path, "sales_summary", SALES_SUMMARY_AT="00:00", EMAIL_HOST=mailbox.host, EMAIL_PORT=str(mailbox.port)
        )
        assert run.outcome == f"ok: sent the summary for {timezone.localdate() - timedelta(days=1)} to 2 staff"
        assert JobRun.objects.count() == 1
        assert sorted(str(m["To"]) for m in mailbox.messages) == ["alice@example.com", "bob@example.com"]
