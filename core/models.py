"""The business records that users edit in the admin."""

from decimal import Decimal
from typing import Any

from django import forms
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Lower

from outbox import EmittingModel

# The most units one order line or one stock receipt may hold. Far above any real order, and far
# enough below the 64-bit stock and ledger columns that no sum of lines or receipts can overflow.
QUANTITY_MAX = 1_000_000
# One message for every quantity out of range, from the form, the model and the services alike.
QUANTITY_MESSAGE = (
    "Quantity must be a whole number from 1 to 1,000,000 (got %(value)s). "
    "For none, leave the line out; for more, enter it in several."
)


class QuantityField(models.PositiveIntegerField):
    """A number of units: 1 to QUANTITY_MAX, with QUANTITY_MESSAGE for anything else.

    The form field says the same (and its HTML input has min=1, max=QUANTITY_MAX), instead of
    PositiveIntegerField's "greater than or equal to 0" next to the validator's "... to 1".
    """

    default_validators = [
        MinValueValidator(1, message=QUANTITY_MESSAGE),
        MaxValueValidator(QUANTITY_MAX, message=QUANTITY_MESSAGE),
    ]

    def formfield(
        self,
        form_class: type[forms.Field] | None = None,
        choices_form_class: type[forms.ChoiceField] | None = None,
        **kwargs: Any,
    ) -> forms.Field | None:
        messages = {"min_value": QUANTITY_MESSAGE, "max_value": QUANTITY_MESSAGE}
        defaults: dict[str, Any] = {"min_value": 1, "max_value": QUANTITY_MAX, "error_messages": messages, **kwargs}
        if form_class is not None:
            defaults["form_class"] = form_class
        if choices_form_class is not None:
            defaults["choices_form_class"] = choices_form_class
        return super().formfield(**defaults)


QUANTITY_IN_RANGE = models.Q(quantity__gte=1, quantity__lte=QUANTITY_MAX)


class Customer(EmittingModel):
    name = models.CharField(max_length=200)
    email = models.EmailField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            # ADA@example.com and ada@example.com are one mailbox, so one customer; the order
            # search looks customers up by this index too. The exact unique index stays, for
            # lookups by the address as stored.
            models.UniqueConstraint(
                Lower("email"),
                name="customer_email_lower_uniq",
                violation_error_message="Another customer already has this e-mail address in another "
                "case. Open that customer instead of adding another.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


class Product(EmittingModel):
    sku = models.CharField("SKU", max_length=64, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0"))])
    # Maintained by the inventory consumer from the events; users never edit it.
    # 64-bit: the sum of every receipt and order line ever, which 32 bits cannot promise to hold.
    stock = models.BigIntegerField(default=0, editable=False)

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
    quantity = QuantityField()
    unit_price = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        blank=True,
        validators=[
            MinValueValidator(
                Decimal("0"),
                message="A unit price cannot be negative (got %(value)s). Enter 0 for a free item, "
                "or leave it empty for the product's current price.",
            )
        ],
        help_text="Leave empty to use the product's current price.",
    )

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=QUANTITY_IN_RANGE, name="order_line_quantity_in_range"),
            models.CheckConstraint(condition=models.Q(unit_price__gte=0), name="order_line_unit_price_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id}"

    def clean(self) -> None:
        if self.unit_price is None and self.product_id is not None:
            self.unit_price = self.product.price


class StockReceipt(EmittingModel):
    """Goods received into stock: how business users add stock."""

    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="receipts")
    quantity = QuantityField()
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=QUANTITY_IN_RANGE, name="stock_receipt_quantity_in_range"),
        ]

    def __str__(self) -> str:
        return f"+{self.quantity} {self.product_id}"
