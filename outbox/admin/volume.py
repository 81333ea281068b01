"""Admin pieces for tables of millions of rows: a changelist that never counts, and filters
whose choices and queries each ride an index.

Django's changelist counts the filtered queryset to paginate it (a `COUNT(*)` that reads every
matching row), and its default filters list their choices with a `SELECT DISTINCT` over the whole
table. Here a page fetches one row more than it shows, to know whether a next page exists;
choices come from an index skip scan or from configuration.
"""

from datetime import datetime, time
from typing import Any, TypeVar

from django.contrib import admin
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.contrib.admin.filters import SimpleListFilter
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import PAGE_VAR, ChangeList
from django.core.exceptions import BadRequest
from django.db.models import Exists, Model, OuterRef, QuerySet
from django.http import HttpRequest, HttpResponseBadRequest
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from outbox.eventlog import selectors as eventlog
from outbox.models import Delivery
from outbox.relay import routing

M = TypeVar("M", bound=Model)

# Choices listed by a filter; a value beyond them still filters when given in the URL.
FILTER_CHOICES = 100
# Up to this many deliveries in flight to a consumer, the status filter names their events.
IN_FLIGHT_LISTED = 10_000
# The deepest page offered: an OFFSET reads every row before it, and past PostgreSQL's bigint a
# page number is a database error. Deeper rows are reached by a filter (a date range, say).
MAX_PAGE = 20_000
# What a URL may add to the column of one of the admin's field filters: comparisons an index
# serves. `__contains`, `__regex` and the like read every row of the table.
INDEXED_LOOKUPS = frozenset({"exact", "isnull", "gt", "gte", "lt", "lte", "in", "id__exact", "pk__exact"})


class UncountedChangeList(ChangeList):
    """A changelist that never counts its rows: a page is fetched with one row more than it
    shows, which says whether a next page exists. Always in the admin's ordering, which an index
    serves: sorting millions of rows by another column is not offered."""

    has_next_page = False
    previous_page_query = ""
    next_page_query = ""

    def get_ordering(self, request: HttpRequest, queryset: QuerySet[Any]) -> list[Any]:
        return list(self.model_admin.get_ordering(request) or ["-pk"])

    def get_results(self, request: HttpRequest) -> None:
        page = max(self.page_num, 1)
        if page > MAX_PAGE:
            raise BadRequest(
                f"Page {page} is past the deepest page this list shows ({MAX_PAGE}): narrow the list with a "
                "filter (a date range) instead."
            )
        offset = (page - 1) * self.list_per_page
        rows = list(self.queryset[offset : offset + self.list_per_page + 1])
        self.page_num = page
        self.has_next_page = len(rows) > self.list_per_page
        self.result_list = rows[: self.list_per_page]
        # The rows up to this page, never a total: templates that print it are overridden.
        self.result_count = offset + len(self.result_list)
        self.full_result_count = None
        self.show_full_result_count = False
        self.show_admin_actions = True
        self.can_show_all = False
        self.multi_page = page > 1 or self.has_next_page
        self.paginator = None
        if page > 1:
            self.previous_page_query = self.get_query_string({PAGE_VAR: page - 1})
        if self.has_next_page:
            self.next_page_query = self.get_query_string({PAGE_VAR: page + 1})


def as_id(term: str) -> int | None:
    """Return the term as a row id if it is one (ASCII digits within PostgreSQL's bigint, an
    optional leading '#'), else None: a longer number would be a database error, not a miss."""
    return eventlog.as_bigint(term.removeprefix("#"))


class ReadOnly:
    """Mixed into an admin or an inline whose records are written by the system only: viewable,
    never added, changed or deleted."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class Uncounted(admin.ModelAdmin[M]):
    """The admin of a table that grows without bound (events, the stock ledger, orders): pages
    that never count, no facet counts, no date hierarchy (it lists the table's distinct dates),
    and only the admin's own ordering, which the primary key or an index serves. Its change list
    template, used by every app's admin that subclasses this, has a pagination, a search form and
    an action bar that name no total."""

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    sortable_by = ()
    list_per_page = 50
    date_hierarchy = None
    change_list_template = "admin/outbox/change_list.html"

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return UncountedChangeList

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        """Allow, from the URL, only the parameters of this admin's own filters.

        Django allows any lookup on a local field, so `?payload__contains=x` or
        `?event_type__regex=.*` would scan every row of a table of millions. The admin's
        filters each ride an index; a lookup outside them is refused (a 400).
        """
        for item in self.get_list_filter(request) if request is not None else self.list_filter:
            if isinstance(item, type) and issubclass(item, SimpleListFilter):
                if lookup == item.parameter_name:
                    return True
                continue
            name = item[0] if isinstance(item, (list, tuple)) else item
            if not isinstance(name, str):
                continue
            if lookup == name or (lookup.startswith(f"{name}__") and lookup[len(name) + 2 :] in INDEXED_LOOKUPS):
                return super().lookup_allowed(lookup, value, request)
        return False

    def search_exact(self, request: HttpRequest, queryset: QuerySet[M], term: str) -> QuerySet[M] | None:
        """Return the rows a (stripped, non-empty) search term names, found by an index; None for
        Django's own search, which ORs a substring match over every search field (a scan: fine for
        a small table or `=` fields only). Each admin of a large table says what a term means."""
        return None

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[M], search_term: str
    ) -> tuple[QuerySet[M], bool]:
        term = search_term.strip()
        found = self.search_exact(request, queryset, term) if term else queryset
        return (found, False) if found is not None else super().get_search_results(request, queryset, search_term)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        # The action bar's "All N selected" would name the rows of this page: say "matching" instead.
        extra_context = {"selection_note_all": f"All matching {self.opts.verbose_name_plural} selected"} | (
            extra_context or {}
        )
        # Both would be a 400 anyway; answered here, the page says what to do instead.
        try:
            return super().changelist_view(request, extra_context)
        except DisallowedModelAdminLookup as e:
            return HttpResponseBadRequest(
                f"{e}: this list takes only its own filters (the sidebar's), which an index answers.",
                content_type="text/plain",
            )
        except BadRequest as e:
            return HttpResponseBadRequest(str(e), content_type="text/plain")


class UncountedAdmin(ReadOnly, Uncounted[Any]):
    """Read-only, and fast at volume: no counts, no facet counts, no sorting by other columns."""


class EventColumnFilter(admin.SimpleListFilter):
    """Events with one value of an indexed column; the choices are read by an index skip scan."""

    column = ""  # the outbox_event column
    field = ""  # the model field

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = eventlog.distinct_values(self.column, limit=FILTER_CHOICES)
        chosen = self.value()
        if chosen is not None and chosen not in values:
            values.append(chosen)
        return [(value, value) for value in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.field: value})


class EventTypeFilter(EventColumnFilter):
    title = "event type"
    parameter_name = "type"
    column = "type"
    field = "event_type"


class AggregateTypeFilter(EventColumnFilter):
    title = "aggregate type"
    parameter_name = "aggregate_type"
    column = "aggregatetype"
    field = "aggregate_type"


class ActorFilter(EventColumnFilter):
    title = "actor"
    parameter_name = "actor"
    column = "actor"
    field = "actor"


class DeliveryStatusFilter(admin.SimpleListFilter):
    """Events by the status of their delivery to one consumer, e.g. `inventory: dead`."""

    title = "delivery status"
    parameter_name = "delivery"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            (f"{consumer}:{status}", f"{consumer}: {label.lower()}")
            for consumer in sorted(routing.route_names())
            for status, label in Delivery.Status.choices
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        consumer, _, status = value.rpartition(":")
        if not consumer or status not in Delivery.Status.values:
            raise IncorrectLookupParameters(f"Unknown delivery status {value!r}: use <consumer>:<status>.")
        deliveries = Delivery.objects.filter(consumer=consumer, status=status)
        matching = queryset.filter(Exists(deliveries.filter(event_id=OuterRef("pk"))))
        if status != Delivery.Status.PUBLISHED:
            # Done: most events, met at once walking back from the newest. Failed and dead: read
            # newest first from their partial index on (consumer, status, event_id), migration 0007.
            return matching
        # In flight: a few recent deliveries, on the partial index of published ones. Naming
        # their events lets PostgreSQL start from them; left to itself, it walked the delivery
        # table back by event id in parallel workers, each reading to the end for a match.
        events = list(deliveries.values_list("event_id", flat=True)[: IN_FLIGHT_LISTED + 1])
        return matching if len(events) > IN_FLIGHT_LISTED else queryset.filter(pk__in=events)


class ConsumerFilter(admin.SimpleListFilter):
    """Deliveries to one consumer, of those the routes name."""

    title = "consumer"
    parameter_name = "consumer"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in sorted(routing.route_names())]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(consumer=value)


def _moment(value: str) -> datetime:
    """A date (midnight, in the current time zone) or a date and time from a filter's URL."""
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            raise ValueError(value)
        moment = datetime.combine(day, time.min)
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


class CreatedRangeFilter(admin.DateFieldListFilter):
    """Django's date links (today, past 7 days, this month, this year) plus a from/before form
    for any range. Answered by the index on created_at, newest first."""

    template = "admin/outbox/date_range_filter.html"

    def choices(self, changelist: ChangeList) -> Any:
        # For the form: the range chosen, and the other parameters to keep as hidden fields.
        self.since = self.date_params.get(self.lookup_kwarg_since, "")
        self.until = self.date_params.get(self.lookup_kwarg_until, "")
        self.kept_params = [(k, v) for k, v in changelist.params.items() if not k.startswith(self.field_generic)]
        return super().choices(changelist)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        bounds = {}
        for key, values in self.used_parameters.items():
            value = values[-1] if isinstance(values, list) else values
            if key not in (self.lookup_kwarg_since, self.lookup_kwarg_until) or not value:
                continue
            try:
                bounds[key] = _moment(str(value))
            except ValueError as e:
                raise IncorrectLookupParameters(f"{value!r} is not a date (YYYY-MM-DD).") from e
        return queryset.filter(**bounds)
