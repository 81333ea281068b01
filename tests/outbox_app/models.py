"""The outbox tests' records: items in stock, restocks of them, shipments of items with their
lines, and the journal that a consumer keeps of every event."""

from django.core.validators import MinValueValidator
from django.db import models

from outbox import EmittingModel


class Item(EmittingModel):
    sku = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    # Kept by the `stocktake` consumer from the events: untracked, so changing it writes no event.
    stock = models.BigIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["sku"]

    def __str__(self) -> str:
        return self.sku


class Restock(EmittingModel):
    """Units of an item received: its events join the item's aggregate."""

    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="restocks")
    quantity = models.PositiveIntegerField(validators=[MinValueValidator(1)])

    def __str__(self) -> str:
        return f"+{self.quantity} {self.item_id}"


class Shipment(EmittingModel):
    """An aggregate with child rows: a shipment and its lines share one version sequence."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SENT = "sent", "Sent"
        CANCELLED = "cancelled", "Cancelled"

    recipient = models.EmailField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT)
    closed_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Shipment #{self.pk}" if self.pk else "New shipment"


class ShipmentLine(EmittingModel):
    shipment = models.ForeignKey(Shipment, on_delete=models.CASCADE, related_name="lines")
    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="shipment_lines")
    quantity = models.PositiveIntegerField(validators=[MinValueValidator(1)])

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.item_id}"


class JournalEntry(models.Model):
    """One line of the `journal` consumer's record: one per event, with the event's seal."""

    event_id = models.BigIntegerField(db_index=True)
    event_type = models.CharField(max_length=100)
    aggregate = models.CharField(max_length=200)
    seal = models.CharField(max_length=64)

    class Meta:
        verbose_name_plural = "journal entries"

    def __str__(self) -> str:
        return f"{self.event_type} {self.aggregate}"
