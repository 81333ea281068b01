"""The outbox tests' records in the admin: the requests whose events carry the user's name."""

from django.contrib import admin

from tests.outbox_app.models import Item, Shipment, ShipmentLine


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin[Item]):
    list_display = ["sku", "name", "price", "stock"]


class ShipmentLineInline(admin.TabularInline[ShipmentLine, Shipment]):
    model = ShipmentLine
    extra = 0


@admin.register(Shipment)
class ShipmentAdmin(admin.ModelAdmin[Shipment]):
    inlines = [ShipmentLineInline]
    list_display = ["__str__", "recipient", "status", "closed_at"]
