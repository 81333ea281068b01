"""The consumers' records in the admin, read-only: the stock ledger and the e-mail notices."""

from typing import Any

from django.contrib import admin

from consumers.models import EmailNotice, StockMovement
from outbox.admin_volume import ReadOnly


class ReadOnlyAdmin(ReadOnly, admin.ModelAdmin[Any]):
    """Written by consumers only: viewable, never added, changed or deleted in the admin."""

    show_full_result_count = False


@admin.register(StockMovement)
class StockMovementAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "product", "quantity", "stock_after", "event_type", "source", "event_id"]
    list_filter = ["event_type"]
    search_fields = ["=source", "=event_id", "product__sku"]
    list_select_related = ["product"]
    raw_id_fields = ["product"]


@admin.register(EmailNotice)
class EmailNoticeAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "kind", "order_id", "recipient", "status", "sends", "sent_at"]
    list_filter = ["kind", "status"]
    search_fields = ["=order_id", "recipient"]
