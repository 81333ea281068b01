"""The consumers' records in the admin, read-only: the stock ledger and the e-mail notices.

Both grow with every order, so their lists never count (outbox.admin.volume.Uncounted), and
each filter and search is answered by an index: searches are exact, not substring scans.
"""

import re
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from consumers.models import EmailNotice, StockMovement
from core.models import Product
from outbox.admin import UncountedAdmin, as_id

SOURCE = re.compile(r"(order|receipt):\d+")


@admin.register(StockMovement)
class StockMovementAdmin(UncountedAdmin):
    list_display = ["id", "created_at", "product", "quantity", "stock_after", "event_type", "source", "event_id"]
    search_fields = ["source"]  # shows the search box; search_exact() decides what a term means
    search_help_text = "A product's exact SKU, a source (order:7 or receipt:3), or an event id (42)."
    list_select_related = ["product"]
    raw_id_fields = ["product"]

    def search_exact(self, request: HttpRequest, queryset: QuerySet[Any], term: str) -> QuerySet[Any]:
        if SOURCE.fullmatch(term):
            return queryset.filter(source=term)
        # A product's SKU first (digits included: SKUs may be numeric), its movements read from
        # the (product, id) index; else digits are an event id.
        product_id = Product.objects.filter(sku=term).values_list("pk", flat=True).first()
        if product_id is not None:
            return queryset.filter(product_id=product_id)
        event_id = as_id(term)
        return queryset.filter(event_id=event_id) if event_id is not None else queryset.none()


class ResentFilter(admin.SimpleListFilter):
    """Notices that may have been sent more than once: the duplicate window (a worker died between
    the SMTP server's accept and its record). A send the server refused is not counted. A partial
    index holds just these."""

    title = "sends"
    parameter_name = "sends"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("more_than_once", "Possibly sent more than once")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(sends__gt=1) if self.value() == "more_than_once" else queryset


@admin.register(EmailNotice)
class EmailNoticeAdmin(UncountedAdmin):
    list_display = ["id", "created_at", "kind", "order_id", "recipient", "sends", "sent_at"]
    list_filter = [ResentFilter, "kind"]
    search_fields = ["order_id"]
    search_help_text = "An order id."

    def search_exact(self, request: HttpRequest, queryset: QuerySet[Any], term: str) -> QuerySet[Any]:
        order_id = as_id(term)
        if order_id is None:
            messages.warning(request, f"Search e-mail notices by order id (digits only): {term!r} is not one.")
            return queryset.none()
        return queryset.filter(order_id=order_id)
