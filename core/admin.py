"""Admin for business users. Business rules live in core.services; the admin only adapts.

Orders and stock receipts grow with the business: their lists never count
(outbox.admin.volume.Uncounted), and an order search is answered by an index.
"""

import csv
from collections.abc import Iterator, Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import ValidationError
from django.db.models import Model, QuerySet
from django.http import HttpRequest, StreamingHttpResponse

from core import services
from core.models import Customer, Order, OrderLine, Product, StockReceipt
from outbox import Event
from outbox.admin import Uncounted, VersionCheckedAdmin, VersionedForm, as_id


class ValidAutocompleteSelect(AutocompleteSelect):
    """Django's autocomplete widget, which re-shows a refused form without looking up a posted
    value that is no key at all (`1 OR 1=1`): Django's own passes it to the database and fails."""

    def optgroups(self, name: str, value: Sequence[str], attr: dict[str, Any] | None = None) -> Any:
        target = self.field.remote_field.model._meta.get_field(self.field.remote_field.field_name)
        keys = []
        for item in value:
            try:
                keys.append(target.clean(item, None))
            except ValidationError:
                continue  # the form says why it is refused; the widget shows no choice for it
        return super().optgroups(name, [str(key) for key in keys], attr)


class ValidAutocomplete:
    """Mixed into an admin or inline: its autocomplete fields use ValidAutocompleteSelect."""

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if "widget" not in kwargs and db_field.name in self.get_autocomplete_fields(request):  # type: ignore[attr-defined]
            kwargs["widget"] = ValidAutocompleteSelect(db_field, self.admin_site, using=kwargs.get("using"))  # type: ignore[attr-defined]
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]


class _Echo:
    def write(self, value: str) -> str:
        return value


@admin.action(description="Export selected as CSV", permissions=["view"])
def export_csv(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]
) -> StreamingHttpResponse:
    """Stream the selected rows as CSV, one column per concrete field."""
    model: type[Model] = modeladmin.model
    fields = [f.attname for f in model._meta.concrete_fields]
    writer = csv.writer(_Echo())

    def rows() -> Iterator[str]:
        yield writer.writerow(fields)
        for row in queryset.order_by("pk").values_list(*fields).iterator(chunk_size=2000):
            yield writer.writerow(row)

    response = StreamingHttpResponse(rows(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{model._meta.model_name}s.csv"'
    return response


class CustomerForm(VersionedForm):
    class Meta:
        model = Customer
        fields = ["name", "email"]

    def clean_email(self) -> str:
        email: str = self.cleaned_data["email"]
        services.customer_email_check(email=email, customer_id=self.instance.pk)
        return email


@admin.register(Customer)
class CustomerAdmin(VersionCheckedAdmin[Customer]):
    form = CustomerForm
    list_display = ["name", "email", "created_at"]
    search_fields = ["name", "email"]
    actions = [export_csv]
    show_full_result_count = False


class StockLevelFilter(admin.SimpleListFilter):
    """Products by stock: backordered (below zero, placed orders wait for stock), out, in."""

    title = "stock"
    parameter_name = "stock"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("backordered", "Backordered (below zero)"), ("out", "Out of stock"), ("in", "In stock")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        conditions = {"backordered": {"stock__lt": 0}, "out": {"stock": 0}, "in": {"stock__gt": 0}}
        chosen = conditions.get(self.value() or "")
        return queryset.filter(**chosen) if chosen else queryset


@admin.register(Product)
class ProductAdmin(VersionCheckedAdmin[Product]):
    list_display = ["sku", "name", "price", "stock"]
    list_filter = [StockLevelFilter]
    search_fields = ["sku", "name"]
    readonly_fields = ["stock"]
    actions = [export_csv]
    show_full_result_count = False
    # The product's aggregate also holds its stock receipts, which change only its stock (shown
    # read-only here): a receipt arriving while someone edits the price is no conflict.
    narrowed_versions = True

    def version_events(self, obj: Product) -> QuerySet[Event]:
        return super().version_events(obj).filter(event_type__startswith="product.")


class OrderLineFormSet(forms.BaseInlineFormSet):
    # Products this save takes more of than is in stock, for the admin's warning after it saves.
    shortfalls: list[services.Shortfall]

    def clean(self) -> None:
        super().clean()
        self.shortfalls = []
        order = self.instance
        deleted = [form for form in self.forms if getattr(form, "cleaned_data", {}).get("DELETE", False)]
        kept = [form for form in self.forms if form.has_changed() or form.instance.pk if form not in deleted]
        touched = deleted or [form for form in kept if form.has_changed()]
        # The status in the database: the order form's clean() has locked the row already.
        current = (
            Order.objects.filter(pk=order.pk).values_list("status", flat=True).first() if order.pk is not None else None
        ) or Order.Status.DRAFT
        if touched:
            services.order_lines_change_check(order_id=order.pk, current=current, new=order.status)
        services.order_lines_check(status=order.status, line_count=len(kept))
        if any(form.errors for form in self.forms):
            return
        # A read-only line's cleaned_data is its initial data, where the product is its id.
        lines = [
            (getattr(f.cleaned_data["product"], "pk", f.cleaned_data["product"]), f.cleaned_data["quantity"])
            for f in kept
        ]
        wanted = services.order_stock_wanted(order_id=order.pk, current=current, new=order.status, lines=lines)
        self.shortfalls = services.order_stock_check(order_id=order.pk, wanted=wanted)


class OrderLineForm(forms.ModelForm[OrderLine]):
    class Meta:
        model = OrderLine
        fields = ["product", "quantity", "unit_price"]
        error_messages = {
            "product": {
                "invalid_choice": "Unknown product: it may have been deleted. Pick one from the list "
                "(search by SKU or name), or create it first."
            }
        }


class OrderLineInline(ValidAutocomplete, admin.TabularInline[OrderLine, Order]):
    model = OrderLine
    form = OrderLineForm
    formset = OrderLineFormSet
    autocomplete_fields = ["product"]
    extra = 3

    # A cancelled or fulfilled order's lines are shown read-only: nothing there can change them
    # (services.order_lines_change_check says why, and refuses the saves that try).
    def _open(self, obj: Order | None) -> bool:
        return obj is None or obj.pk is None or obj.status in services.OPEN_STATUSES

    def has_add_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return self._open(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:  # type: ignore[override]
        return self._open(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:  # type: ignore[override]
        return self._open(obj) and super().has_delete_permission(request, obj)


class OrderForm(VersionedForm):
    class Meta:
        model = Order
        fields = ["customer", "status"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()  # on a change, locks the order: `locked` is its row as it is now
        new = cleaned.get("status")
        if new is not None:
            # The status in the database, under the lock, not the one the form was opened with:
            # an order cancelled meanwhile is not placed again by a form that still says placed.
            current = self.locked.status if isinstance(self.locked, Order) else Order.Status.DRAFT
            try:
                services.order_transition_check(current=current, new=new)
            except ValidationError as e:
                self.add_error("status", e)
        return cleaned


# Customers named in an order search, at most: a broader name is a request to be more precise.
ORDER_SEARCH_CUSTOMERS = 200


@admin.register(Order)
class OrderAdmin(ValidAutocomplete, VersionCheckedAdmin[Order], Uncounted[Order]):
    form = OrderForm
    inlines = [OrderLineInline]
    list_display = ["__str__", "customer", "status", "created_at", "placed_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["customer__email"]  # shows the search box; search_exact() decides what a term means
    search_help_text = (
        "An order number (7), a customer's whole e-mail address (in any case), or part of a customer's name."
    )
    autocomplete_fields = ["customer"]
    readonly_fields = ["created_at", "updated_at", "placed_at", "closed_at"]
    list_select_related = ["customer"]
    actions = [export_csv, "place_orders", "cancel_orders"]

    def search_exact(self, request: HttpRequest, queryset: QuerySet[Order], term: str) -> QuerySet[Order]:
        # Each form of term rides an index: the primary key, the unique e-mail, or the customers
        # found by name and then their orders by customer, never a scan of every order.
        order_id = as_id(term)
        if order_id is not None:
            return queryset.filter(pk=order_id)
        if "@" in term:
            # Addresses are unique whatever their case: read from the lower(email) index.
            return queryset.filter(customer_id__in=services.customers_by_email(email=term).values("pk"))
        customers = list(
            Customer.objects.filter(name__icontains=term).values_list("pk", flat=True)[: ORDER_SEARCH_CUSTOMERS + 1]
        )
        if len(customers) > ORDER_SEARCH_CUSTOMERS:
            customers = customers[:ORDER_SEARCH_CUSTOMERS]
            # Once, on the page shown: an action's POST runs the search too, then redirects here.
            if request.method == "GET":
                messages.warning(
                    request,
                    f"More than {ORDER_SEARCH_CUSTOMERS} customers' names contain {term!r}: these are the orders "
                    f"of the first {ORDER_SEARCH_CUSTOMERS} by name. Search more of the name, or the exact e-mail.",
                )
        return queryset.filter(customer_id__in=customers)

    def save_model(self, request: HttpRequest, obj: Order, form: forms.ModelForm[Order], change: bool) -> None:
        locked = getattr(form, "locked", None)
        previous = locked.status if isinstance(locked, Order) else Order.Status.DRAFT
        services.order_status_stamp(order=obj, previous=previous)
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        for formset in formsets:
            for shortfall in getattr(formset, "shortfalls", []):
                self._warn_beyond_stock(request, form.instance, shortfall)

    def _warn_beyond_stock(self, request: HttpRequest, order: Order, shortfall: services.Shortfall) -> None:
        self.message_user(
            request,
            f"{order} takes {shortfall}: the product is backordered (stock below zero) until more is "
            "received. Lower the quantity if that is not what you meant.",
            messages.WARNING,
        )

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Order], status: str) -> None:
        done = 0
        for order in queryset:
            try:
                lines = order.lines.values_list("product_id", "quantity")
                wanted = services.order_stock_wanted(order_id=order.pk, current=order.status, new=status, lines=lines)
                shortfalls = services.order_stock_check(order_id=order.pk, wanted=wanted)
                services.order_set_status(order=order, status=status)
                for shortfall in shortfalls:
                    self._warn_beyond_stock(request, order, shortfall)
                done += 1
            except ValidationError as e:
                self.message_user(request, f"{order}: {' '.join(e.messages)}", messages.ERROR)
        if done:
            self.message_user(request, f"{done} order(s) now {Order.Status(status).label.lower()}.", messages.SUCCESS)

    @admin.action(description="Place selected orders", permissions=["change"])
    def place_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        self._set_status(request, queryset, Order.Status.PLACED)

    @admin.action(description="Cancel selected orders", permissions=["change"])
    def cancel_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        self._set_status(request, queryset, Order.Status.CANCELLED)


@admin.register(StockReceipt)
class StockReceiptAdmin(ValidAutocomplete, VersionCheckedAdmin[StockReceipt], Uncounted[StockReceipt]):
    """Receipts are a ledger: added, and corrected (quantity and note) by users allowed to change
    them, never deleted. A correction is an event like any other: the inventory consumer moves
    the difference, and the event log keeps what the receipt said before."""

    list_display = ["__str__", "product", "quantity", "note", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["product__sku", "product__name", "note"]
    autocomplete_fields = ["product"]
    actions = [export_csv]
    # A receipt's events share the product's aggregate with its product and every other receipt
    # of it; a form for this receipt conflicts only with a change to this receipt.
    narrowed_versions = True

    def version_events(self, obj: StockReceipt) -> QuerySet[Event]:
        return super().version_events(obj).filter(event_type__startswith="stock.", payload__state__id=obj.pk)

    def get_readonly_fields(self, request: HttpRequest, obj: StockReceipt | None = None) -> list[str]:
        # A correction says how many arrived, not of what: it moves the difference on one product.
        return ["product", "created_at"] if obj is not None else []

    def save_model(
        self, request: HttpRequest, obj: StockReceipt, form: forms.ModelForm[StockReceipt], change: bool
    ) -> None:
        if change:
            services.stock_receipt_correct(receipt=obj, quantity=obj.quantity, note=obj.note)
        else:
            super().save_model(request, obj, form, change)

    def has_delete_permission(self, request: HttpRequest, obj: StockReceipt | None = None) -> bool:
        return False
