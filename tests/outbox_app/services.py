"""The outbox tests' changes that span rows: each in one transaction, as a business app's would."""

from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone

from tests.outbox_app.models import Item, Restock, Shipment, ShipmentLine


@transaction.atomic
def shipment_create(*, recipient: str, lines: Sequence[tuple[Item, int]], send: bool = False) -> Shipment:
    """Create a shipment with its lines (item, quantity), sent if `send`."""
    shipment = Shipment(recipient=recipient, status=Shipment.Status.SENT if send else Shipment.Status.DRAFT)
    shipment.save()
    for item, quantity in lines:
        ShipmentLine(shipment=shipment, item=item, quantity=quantity).save()
    return shipment


@transaction.atomic
def shipment_set_status(*, shipment: Shipment, status: str) -> Shipment:
    """Move the shipment to `status`; a cancelled one is closed now."""
    shipment = Shipment.objects.select_for_update().get(pk=shipment.pk)
    shipment.status = status
    if status == Shipment.Status.CANCELLED:
        shipment.closed_at = timezone.now()
    shipment.save(update_fields=["status", "closed_at"])
    return shipment


@transaction.atomic
def shipment_line_add(*, shipment: Shipment, item: Item, quantity: int) -> ShipmentLine:
    """Add a line to the shipment (no lock on the shipment: the outbox numbers the versions)."""
    line = ShipmentLine(shipment=shipment, item=item, quantity=quantity)
    line.save()
    return line


@transaction.atomic
def restock(*, item: Item, quantity: int) -> Restock:
    """Record units of the item received."""
    received = Restock(item=item, quantity=quantity)
    received.save()
    return received
