"""The outbox in the admin: the event log for auditors, deliveries and replays for operators.

Everything here is read-only (events are facts; deliveries and replays are written by the relay,
the consumers and `outbox.ops.replay`), and built for millions of rows (`outbox.admin.volume`). The
one write is replay, an action behind the `outbox.replay_delivery` permission that asks for a
reason and shows what it will send before it sends anything.

Apps' admins use the same parts from here, the outbox's admin API: `UncountedAdmin` and
`Uncounted` (lists that never count), `as_id`, and `VersionCheckedAdmin` with `VersionedForm`
(change forms refused when saved from a stale version of their aggregate).
"""

from collections.abc import Callable, Iterable
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from outbox.admin import replay as admin_replay
from outbox.admin.versions import VersionCheckedAdmin, VersionedForm
from outbox.admin.volume import (
    ActorFilter,
    AggregateTypeFilter,
    ConsumerFilter,
    CreatedRangeFilter,
    DeliveryStatusFilter,
    EventTypeFilter,
    ReadOnly,
    Uncounted,
    UncountedAdmin,
    as_id,
)
from outbox.eventlog import selectors as eventlog
from outbox.models import Backfill, Delivery, Event, Replay, ReplayItem

__all__ = ["Uncounted", "UncountedAdmin", "VersionCheckedAdmin", "VersionedForm", "as_id"]

TIMELINE_PAGE = 50

EXPORTS: dict[str, tuple[Callable[[QuerySet[Event]], Iterable[str]], str, str]] = {
    "csv": (eventlog.export_csv, "text/csv", "csv"),
    "jsonl": (eventlog.export_jsonl, "application/jsonl", "jsonl"),
}


def _export(queryset: QuerySet[Event], kind: str) -> StreamingHttpResponse:
    write, content_type, extension = EXPORTS[kind]
    response = StreamingHttpResponse(write(queryset), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="events.{extension}"'
    return response


@admin.action(description="Export selected as CSV", permissions=["view"])
def export_events_csv(modeladmin: "EventAdmin", request: HttpRequest, queryset: QuerySet[Event]) -> HttpResponseBase:
    """Stream the selected events as CSV, oldest first."""
    return _export(queryset, "csv")


@admin.action(description="Export selected as JSON Lines", permissions=["view"])
def export_events_jsonl(modeladmin: "EventAdmin", request: HttpRequest, queryset: QuerySet[Event]) -> HttpResponseBase:
    """Stream the selected events as JSON Lines, oldest first."""
    return _export(queryset, "jsonl")


class DeliveryInline(ReadOnly, admin.TabularInline[Delivery, Event]):
    model = Delivery
    readonly_fields = fields = (
        "consumer",
        "status",
        "attempts",
        "publications",
        "published_at",
        "done_at",
        "last_error",
    )
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Event)
class EventAdmin(admin_replay.ReplayGuard, UncountedAdmin):
    """The event log for auditors: filter, search by exact ids, read an aggregate's timeline, export."""

    change_list_template = "admin/outbox/event/change_list.html"  # the export links, on the uncounted list
    list_display = ["id", "created_at", "event_type", "aggregate", "aggregate_version", "actor", "source"]
    list_display_links = ["id"]
    list_filter = [
        EventTypeFilter,
        AggregateTypeFilter,
        ActorFilter,
        DeliveryStatusFilter,
        ("created_at", CreatedRangeFilter),
    ]
    # Marks the search box; search_exact() does the search, by exact ids only.
    search_fields = ["=id"]
    search_help_text = "An event id or UUID, or an aggregate: 7 (any type) or order:7. Exact matches only."
    actions = [export_events_csv, export_events_jsonl, "deliver_again"]
    inlines = [DeliveryInline]
    fieldsets = [
        (
            None,
            {"fields": ["id", "event_id", "event_type", "aggregate", "aggregate_version", "schema", "created_at"]},
        ),
        ("Who", {"fields": ["actor", "source", "correlation_id"]}),
        ("What changed", {"fields": ["changed_fields", "payload_pretty", "payload_written"]}),
    ]
    readonly_fields = [
        "id",
        "event_id",
        "event_type",
        "aggregate",
        "aggregate_version",
        "schema",
        "created_at",
        "actor",
        "source",
        "correlation_id",
        "changed_fields",
        "payload_pretty",
        "payload_written",
    ]

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path(
                "timeline/<str:aggregate_type>/<path:aggregate_id>/",
                view(self.timeline_view),
                name="outbox_event_timeline",
            ),
            path("export.<str:kind>", view(self.export_view), name="outbox_event_export"),
            *super().get_urls(),
        ]

    def get_ordering(self, request: HttpRequest) -> list[str]:
        # Within a date range, newest first by time: the created_at index then reads one page of
        # rows wherever the range lies, where the primary key would be walked back from the newest
        # event through every event after the range.
        if any(key.startswith("created_at__") for key in request.GET):
            return ["-created_at", "-id"]
        return ["-id"]

    def search_exact(self, request: HttpRequest, queryset: QuerySet[Event], term: str) -> QuerySet[Event]:
        return queryset.filter(eventlog.event_search(term))

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Event | None:
        # The change page shows the payload at its type's current schema version, as readers get it.
        event = super().get_object(request, object_id, from_field)
        if event is not None:
            eventlog.readable(event)
        return event

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return admin_replay.can_replay(request)

    @admin.display(description="aggregate")
    def aggregate(self, event: Event) -> str:
        url = reverse("admin:outbox_event_timeline", args=[event.aggregate_type, event.aggregate_id])
        return format_html('<a href="{}" title="Timeline">{}:{}</a>', url, event.aggregate_type, event.aggregate_id)

    @admin.display(description="changed fields")
    def changed_fields(self, event: Event) -> str:
        found = eventlog.changes(event)
        if not found:
            return "None recorded: the event holds a whole row (created, or deleted), its state below."
        return format_html(
            '<table class="outbox-changes"><tbody>{}</tbody></table>',
            format_html_join(
                "",
                "<tr><th>{}</th><td>{}</td><td>→</td><td>{}</td></tr>",
                ((c.field, _show(c.old), _show(c.new)) for c in found),
            ),
        )

    @admin.display(description="payload")
    def payload_pretty(self, event: Event) -> str:
        return format_html('<pre class="outbox-payload">{}</pre>', eventlog.payload_pretty(event))

    @admin.display(description="schema version")
    def schema(self, event: Event) -> str:
        written, _ = event.stored()
        error = eventlog.readable(event)  # what get_object() found: the same answer every time
        if error:
            return f"{written}, shown as written: it cannot be brought to the current version. {error}"
        if written != event.schema_version:
            return f"{event.schema_version}: written at version {written}, shown upcast (the row is unchanged)"
        return str(written)

    @admin.display(description="payload as written")
    def payload_written(self, event: Event) -> str:
        written, _ = event.stored()
        if written == event.schema_version:
            return "The payload above, as written."
        return format_html('<pre class="outbox-payload">{}</pre>', eventlog.payload_pretty(event, written=True))

    def timeline_view(self, request: HttpRequest, aggregate_type: str, aggregate_id: str) -> HttpResponse:
        """An aggregate's events in version order, a page at a time, each with what it changed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            after = max(int(request.GET.get("after", 0)), 0)
        except ValueError:
            return HttpResponseBadRequest("`after` is a version number.")
        events = eventlog.timeline(aggregate_type, aggregate_id, after_version=after, limit=TIMELINE_PAGE + 1)
        more = len(events) > TIMELINE_PAGE
        events = events[:TIMELINE_PAGE]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Timeline of {aggregate_type}:{aggregate_id}",
            "opts": self.opts,
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
            "rows": [(event, eventlog.changes(event), eventlog.payload_pretty(event)) for event in events],
            "after": after,
            "next_after": events[-1].aggregate_version if more else None,
        }
        return TemplateResponse(request, "admin/outbox/event/timeline.html", context)

    def export_view(self, request: HttpRequest, kind: str) -> HttpResponseBase:
        """Every event the changelist shows for the same query string (filters and search), streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if kind not in EXPORTS:
            return HttpResponseBadRequest(f"Export as one of: {', '.join(EXPORTS)}.")
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters as e:
            return HttpResponseBadRequest(f"These filters are not valid: {e}")
        return _export(changelist.queryset, kind)

    @admin.action(description="Deliver again to a consumer…", permissions=["replay"])
    def deliver_again(self, request: HttpRequest, queryset: QuerySet[Event]) -> HttpResponseBase | None:
        """Ask for the consumer and the reason, show what would be sent, then replay."""
        return admin_replay.deliver_again(self, request, queryset)


def _show(value: object) -> str:
    return "null" if value is None else str(value)


@admin.register(Delivery)
class DeliveryAdmin(admin_replay.ReplayGuard, UncountedAdmin):
    """Deliveries for operators: find failed and dead ones, and replay them."""

    list_display = [
        "id",
        "event_link",
        "event_type",
        "consumer",
        "status",
        "attempts",
        "publications",
        "published_at",
        "done_at",
        "updated_at",
        "error",
    ]
    list_display_links = ["id"]
    list_filter = [ConsumerFilter, "status"]
    list_select_related = ["event"]
    search_fields = ["=event_id"]
    search_help_text = "An event id or UUID. Exact matches only."
    ordering = ["-id"]
    actions = ["replay_deliveries"]
    readonly_fields = fields = (
        "id",
        "event_link",
        "consumer",
        "status",
        "attempts",
        "publications",
        "published_at",
        "started_at",
        "done_at",
        "updated_at",
        "last_error",
    )

    def search_exact(self, request: HttpRequest, queryset: QuerySet[Delivery], term: str) -> QuerySet[Delivery]:
        event_id = as_id(term)
        if event_id is not None:
            return queryset.filter(event_id=event_id)
        return queryset.filter(event_id__in=Event.objects.filter(eventlog.event_search(term)).values("id"))

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return admin_replay.can_replay(request)

    @admin.display(description="event")
    def event_link(self, delivery: Delivery) -> str:
        url = reverse("admin:outbox_event_change", args=[delivery.event_id])
        return format_html('<a href="{}">{}</a>', url, delivery.event_id)

    @admin.display(description="event type")
    def event_type(self, delivery: Delivery) -> str:
        return delivery.event.event_type

    @admin.display(description="last error")
    def error(self, delivery: Delivery) -> str:
        return delivery.last_error[:80]

    @admin.action(description="Replay selected deliveries", permissions=["replay"])
    def replay_deliveries(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> HttpResponseBase | None:
        """Ask for the reason, show what would be sent, then send the deliveries again."""
        return admin_replay.replay_deliveries(self, request, queryset)


class ItemsFormSet(forms.BaseInlineFormSet):
    """A replay's items, the first ones only: a replay may hold thousands."""

    def get_queryset(self) -> QuerySet[Any]:
        if not hasattr(self, "_shown"):
            self._shown = super().get_queryset()[: ReplayItemInline.shown]
        return self._shown


class ReplayItemInline(ReadOnly, admin.TabularInline[ReplayItem, Replay]):
    model = ReplayItem
    formset = ItemsFormSet
    shown = 500
    readonly_fields = fields = (
        "event",
        "consumer",
        "previous_status",
    )
    extra = 0
    can_delete = False
    verbose_name_plural = f"items (the first {shown})"

    @admin.display(description="event")
    def event(self, item: ReplayItem) -> str:
        url = reverse("admin:outbox_event_change", args=[item.event_id])
        return format_html('<a href="{}">{}</a>', url, item.event_id)


@admin.register(Replay)
class ReplayAdmin(UncountedAdmin):
    """Who sent which deliveries again, when and why: a record, never edited."""

    list_display = ["id", "created_at", "requested_by", "source", "deliveries", "forced", "short_reason"]
    list_display_links = ["id"]
    list_filter = ["source", "forced"]
    search_fields = ["=requested_by"]
    search_help_text = "Who asked, exactly: user:<username>."
    ordering = ["-id"]
    inlines = [ReplayItemInline]
    readonly_fields = fields = (
        "id",
        "created_at",
        "requested_by",
        "source",
        "reason",
        "criteria",
        "forced",
        "deliveries",
    )

    @admin.display(description="reason")
    def short_reason(self, record: Replay) -> str:
        return record.reason if len(record.reason) <= 80 else record.reason[:79] + "…"


@admin.register(Backfill)
class BackfillAdmin(UncountedAdmin):
    """Each consumer given the history after the fact (`outbox_backfill`), and how far it got."""

    list_display = ["id", "consumer", "status", "progress_shown", "created", "skipped", "rate", "started_at", "beat_at"]
    list_display_links = ["id"]
    list_filter = ["status", "consumer"]
    ordering = ["-id"]
    readonly_fields = fields = (
        "id",
        "consumer",
        "status",
        "progress_shown",
        "types",
        "after",
        "since",
        "upto",
        "cursor",
        "created",
        "skipped",
        "rate",
        "requested_by",
        "runner",
        "started_at",
        "beat_at",
        "finished_at",
    )

    @admin.display(description="progress")
    def progress_shown(self, record: Backfill) -> str:
        return f"{record.progress:.0%} (event {record.cursor} of {record.upto})"
