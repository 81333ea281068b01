"""The business records that users edit in the admin."""

from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models

from outbox.emitting import EmittingModel


class Customer(EmittingModel):
    name = models.CharField(max_length=200)
    email = models.EmailField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


class Product(EmittingModel):
    sku = models.CharField("SKU", max_length=64, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0"))])
    # Maintained by the inventory consumer from the events; users never edit it.
    stock = models.IntegerField(default=0, editable=False)

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.CheckConstraint(condition=models.Q(price__gte=0), name="product_price_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} {self.name}"


class Order(EmittingModel):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PLACED = "placed", "Placed"
        CANCELLED = "cancelled", "Cancelled"
        FULFILLED = "fulfilled", "Fulfilled"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="orders")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    placed_at = models.DateTimeField(null=True, blank=True, editable=False)
    closed_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The daily sales summary's two days of orders (core/reports.py): placed that day, and
            # cancelled that day. Partial: drafts and open orders are in neither.
            models.Index(fields=["placed_at"], name="order_placed_at_idx", condition=models.Q(placed_at__isnull=False)),
            models.Index(fields=["closed_at"], name="order_cancelled_at_idx", condition=models.Q(status="cancelled")),
        ]

    def __str__(self) -> str:
        return f"Order #{self.pk}" if self.pk else "New order"


class OrderLine(EmittingModel):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="order_lines")
    quantity = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    unit_price = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        blank=True,
        help_text="Leave empty to use the product's current price.",
    )

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(quantity__gt=0), name="order_line_quantity_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id}"

    def clean(self) -> None:
        if self.unit_price is None and self.product_id is not None:
            self.unit_price = self.product.price


class StockReceipt(EmittingModel):
    """Goods received into stock: how business users add stock."""

    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="receipts")
    quantity = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(quantity__gt=0), name="stock_receipt_quantity_positive"),
        ]

    def __str__(self) -> str:
        return f"+{self.quantity} {self.product_id}"
