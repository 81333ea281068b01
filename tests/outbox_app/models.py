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


class Tally(EmittingModel):
    """A counter whose changes the ordered `sequence` consumer takes, one aggregate per tally.

    Its `count` tells that consumer how to fail, for the tests of order and poison
    (tests/outbox_app/consumers.py: `sequence_record`)."""

    name = models.CharField(max_length=100)
    count = models.IntegerField(default=0)

    def __str__(self) -> str:
        return self.name


class SequenceEntry(models.Model):
    """One event the ordered `sequence` consumer handled, in the order it handled them."""

    event_id = models.BigIntegerField(unique=True)
    tally_id = models.BigIntegerField()
    version = models.PositiveIntegerField()
    count = models.IntegerField()

    class Meta:
        verbose_name_plural = "sequence entries"

    def __str__(self) -> str:
        return f"tally {self.tally_id} v{self.version}"
