"""The daily sales summary: yesterday's orders, e-mailed to the active staff users.

A report, not a reaction to a change: it reads the records and sends staff what they say. The
relays run it once a day as a periodic job (OUTBOX_PERIODIC_JOBS["sales_summary"]), so it is
sent once per day whatever the number of relays. A day is a calendar day in TIME_ZONE.
"""

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core import mail
from django.db.models import DecimalField, ExpressionWrapper, F, Sum
from django.utils import timezone

from core.models import Order, OrderLine

logger = logging.getLogger(__name__)

TOP_PRODUCTS = 5
_LINE_TOTAL = ExpressionWrapper(
    F("quantity") * F("unit_price"), output_field=DecimalField(max_digits=14, decimal_places=2)
)


@dataclass(frozen=True)
class ProductSales:
    """One product's share of a day's placed orders."""

    sku: str
    name: str
    units: int
    revenue: Decimal


@dataclass(frozen=True)
class SalesSummary:
    """What was sold on one day."""

    day: date
    # Orders placed that day, including any cancelled since, and the total of their lines.
    orders_placed: int
    revenue: Decimal
    # Orders cancelled that day, whenever they were placed, and the total of their lines.
    cancellations: int
    cancelled_value: Decimal
    top_products: list[ProductSales] = field(default_factory=list)


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    tz = timezone.get_current_timezone()
    start = datetime.combine(day, time.min, tzinfo=tz)
    return start, datetime.combine(day + timedelta(days=1), time.min, tzinfo=tz)


def sales_summary(*, day: date) -> SalesSummary:
    """Return the summary of the orders placed and cancelled on `day`."""
    start, end = _day_bounds(day)
    placed = Order.objects.filter(placed_at__gte=start, placed_at__lt=end)
    cancelled = Order.objects.filter(status=Order.Status.CANCELLED, closed_at__gte=start, closed_at__lt=end)
    placed_lines = OrderLine.objects.filter(order__in=placed)
    cancelled_lines = OrderLine.objects.filter(order__in=cancelled)
    top = (
        placed_lines.values("product__sku", "product__name")
        .annotate(units=Sum("quantity"), revenue=Sum(_LINE_TOTAL))
        .order_by("-units", "-revenue", "product__sku")[:TOP_PRODUCTS]
    )
    return SalesSummary(
        day=day,
        orders_placed=placed.count(),
        revenue=placed_lines.aggregate(total=Sum(_LINE_TOTAL))["total"] or Decimal("0.00"),
        cancellations=cancelled.count(),
        cancelled_value=cancelled_lines.aggregate(total=Sum(_LINE_TOTAL))["total"] or Decimal("0.00"),
        top_products=[
            ProductSales(sku=row["product__sku"], name=row["product__name"], units=row["units"], revenue=row["revenue"])
            for row in top
        ],
    )


def sales_summary_text(summary: SalesSummary) -> tuple[str, str]:
    """Return the e-mail's subject and plain-text body for `summary`."""
    subject = f"Sales summary for {summary.day:%A %d %B %Y}"
    lines = [
        f"Sales on {summary.day.isoformat()} ({timezone.get_current_timezone_name()}).",
        "",
        f"Orders placed:  {summary.orders_placed}",
        f"Revenue:        {summary.revenue:,.2f}",
        f"Cancellations:  {summary.cancellations} ({summary.cancelled_value:,.2f})",
        "",
    ]
    if summary.top_products:
        lines.append("Top products (units sold):")
        width = max(len(p.sku) for p in summary.top_products)
        for product in summary.top_products:
            lines.append(f"  {product.sku.ljust(width)}  {product.name}: {product.units} units, {product.revenue:,.2f}")
    else:
        lines.append("No products sold.")
    lines += [
        "",
        "Placed orders count every order placed that day, including those cancelled since; "
        "cancellations count the orders cancelled that day, whenever they were placed.",
    ]
    return subject, "\n".join(lines) + "\n"


def staff_recipients() -> list[str]:
    """Return the e-mail addresses of the active staff users, sorted, without duplicates."""
    users = get_user_model().objects.filter(is_active=True, is_staff=True).exclude(email="")
    return sorted(set(users.values_list("email", flat=True)))


def sales_summary_send(*, day: date | None = None) -> str:
    """E-mail the summary of `day` (default: yesterday) to each active staff user; return what was sent.

    One message per recipient, over one SMTP connection, so that no one sees the others' addresses.
    """
    day = day or timezone.localdate() - timedelta(days=1)
    recipients = staff_recipients()
    if not recipients:
        logger.warning("Sales summary for %s not sent: no active staff user has an e-mail address", day)
        return f"not sent for {day}: no active staff user has an e-mail address"
    subject, body = sales_summary_text(sales_summary(day=day))
    messages = [mail.EmailMessage(subject=subject, body=body, to=[address]) for address in recipients]
    with mail.get_connection() as connection:
        sent = connection.send_messages(messages)
    logger.info("Sales summary for %s sent to %d staff", day, sent)
    return f"sent the summary for {day} to {sent} staff"
