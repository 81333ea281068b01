"""Replay from the admin: the two actions' flows, each an intermediate page, then `outbox.ops.replay`.

An action's first post shows what would be sent (a dry run) with a form asking for the reason;
the form posts the same action back with `confirm`, and only then is anything sent. Both need
the `outbox.replay_delivery` permission, which the admin checks before offering the action and
which is checked again here.
"""

from collections.abc import Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from outbox.models import Delivery, Event
from outbox.ops.replay import Criteria, ReplayRefused, deliveries_for, in_flight_note, replay
from outbox.ops.replay import deliveries as count_deliveries
from outbox.relay import routing

# Larger replays belong to `python manage.py outbox_replay`, which sends in batches with progress.
ADMIN_REPLAY_LIMIT = 10_000
PREVIEW_ROWS = 100


def can_replay(request: HttpRequest) -> bool:
    """Whether the user may send deliveries again."""
    return request.user.has_perm("outbox.replay_delivery")


REPLAY_ACTIONS = frozenset({"replay_deliveries", "deliver_again"})


class ReplayGuard:
    """Mixed into the Event and Delivery admins: a replay posted without the permission is a 403.

    The admin does not offer the actions to such a user, and would answer a forged post by showing
    the list again; refusing it outright says plainly that it was not allowed.
    """

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        if request.method == "POST" and request.POST.get("action") in REPLAY_ACTIONS and not can_replay(request):
            raise PermissionDenied
        return super().changelist_view(request, extra_context)  # type: ignore[misc]


class ReplayForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        help_text="Recorded with the replay, with your name: say what went wrong and why sending again fixes it.",
    )
    force = forms.BooleanField(
        required=False,
        label="Include done deliveries (force)",
        help_text="The consumer then runs them again. Stock and e-mail still happen once; the audit log "
        "writes a second line.",
    )


class DeliverAgainForm(ReplayForm):
    consumer = forms.ChoiceField(help_text="Deliveries the events do not have yet are created for them.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        consumer = self.fields["consumer"]
        assert isinstance(consumer, forms.ChoiceField)
        consumer.choices = [(name, name) for name in sorted(routing.route_names())]
        self.order_fields(["consumer", "reason", "force"])


def replay_deliveries(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Delivery]
) -> TemplateResponse | None:
    """The Delivery admin's action: preview and form, then send the selected deliveries again."""
    if not can_replay(request):
        raise PermissionDenied
    deliveries = list(queryset.order_by("event_id", "consumer").select_related("event")[: ADMIN_REPLAY_LIMIT + 1])
    if _too_many(modeladmin, request, deliveries, "deliveries"):
        return None
    form = ReplayForm(request.POST if "confirm" in request.POST else None)
    if form.is_valid():
        _send(modeladmin, request, deliveries, form, Criteria(delivery_ids=[d.id for d in deliveries]))
        return None
    # The dry run sends and records nothing; replay() only wants a reason to be given.
    preview = replay(deliveries, requested_by="", reason="preview", source="admin", dry_run=True)
    context = {
        "preview": preview,
        "by_consumer": sorted(preview.by_consumer.items()),
        "deliveries": deliveries[:PREVIEW_ROWS],
        "more_deliveries": len(deliveries) > PREVIEW_ROWS,
    }
    return _confirm_page(
        modeladmin, request, action="replay_deliveries", title="Replay deliveries", form=form, **context
    )


def deliver_again(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Event]
) -> TemplateResponse | None:
    """The Event admin's action: per consumer what would go out, the form, then send the events
    to the consumer chosen (creating the deliveries they lack)."""
    if not can_replay(request):
        raise PermissionDenied
    events = list(queryset.order_by("id").defer("payload")[: ADMIN_REPLAY_LIMIT + 1])
    if _too_many(modeladmin, request, events, "events"):
        return None
    form = DeliverAgainForm(request.POST if "confirm" in request.POST else None)
    if form.is_valid():
        ids = [event.id for event in events]
        consumer = form.cleaned_data["consumer"]
        _send(modeladmin, request, deliveries_for(ids, consumer), form, Criteria(consumers=[consumer], event_ids=ids))
        return None
    context = {
        "events": events[:PREVIEW_ROWS],
        "more_events": len(events) > PREVIEW_ROWS,
        "consumers": _consumer_preview(events),
    }
    return _confirm_page(
        modeladmin, request, action="deliver_again", title="Deliver events again to a consumer", form=form, **context
    )


def _send(
    modeladmin: admin.ModelAdmin[Any],
    request: HttpRequest,
    deliveries: Sequence[Delivery],
    form: ReplayForm,
    criteria: Criteria,
) -> None:
    """Replay, then tell the operator what was sent and what was left out, or why nothing was."""
    recorded = criteria.as_dict()
    if request.POST.get("select_across") == "1":
        # Every row matching the list's filters was selected: record the filters too.
        recorded["changelist"] = request.GET.urlencode()
    try:
        summary = replay(
            deliveries,
            requested_by=f"user:{request.user.get_username()}",
            reason=form.cleaned_data["reason"],
            source="admin",
            criteria=recorded,
            force=form.cleaned_data["force"],
        )
    except ReplayRefused as e:
        modeladmin.message_user(request, f"Nothing was sent: {e}", messages.ERROR)
        return
    if summary.sent:
        consumers = ", ".join(f"{name}: {n}" for name, n in sorted(summary.by_consumer.items()))
        sent = f"Replay {summary.replay_id}: sent {count_deliveries(summary.sent)} again ({consumers})."
        modeladmin.message_user(request, sent, messages.SUCCESS)
    if summary.in_flight:
        modeladmin.message_user(request, in_flight_note(summary), messages.WARNING)
    if summary.refused_done:
        left_out = (
            f"{summary.refused_done} done deliveries were left out: tick “Include done deliveries (force)” "
            "to send them again."
        )
        modeladmin.message_user(request, left_out, messages.WARNING)
    if not summary.selected:
        modeladmin.message_user(request, "Nothing was sent: no deliveries were selected.", messages.WARNING)


def _consumer_preview(events: Sequence[Event]) -> list[dict[str, Any]]:
    """Per routed consumer: how many of the events would be sent again, sent for the first time,
    or left out as done."""
    ids = [event.id for event in events]
    statuses: dict[str, dict[int, str]] = {}
    rows = Delivery.objects.filter(event_id__in=ids).values_list("event_id", "consumer", "status")
    for event_id, consumer, status in rows:
        statuses.setdefault(consumer, {})[event_id] = status
    preview = []
    for consumer in sorted(routing.route_names()):
        known = statuses.get(consumer, {})
        done = sum(1 for status in known.values() if status == Delivery.Status.DONE)
        preview.append({"consumer": consumer, "send": len(known) - done, "create": len(ids) - len(known), "done": done})
    return preview


def _too_many(modeladmin: admin.ModelAdmin[Any], request: HttpRequest, rows: Sequence[object], what: str) -> bool:
    if len(rows) <= ADMIN_REPLAY_LIMIT:
        return False
    modeladmin.message_user(
        request,
        f"More than {ADMIN_REPLAY_LIMIT} {what} are selected: narrow the selection, or replay them with "
        "`python manage.py outbox_replay`, which sends them in batches and shows its progress.",
        messages.ERROR,
    )
    return True


def _confirm_page(
    modeladmin: admin.ModelAdmin[Any],
    request: HttpRequest,
    *,
    action: str,
    title: str,
    form: forms.Form,
    **context: Any,
) -> TemplateResponse:
    """The intermediate page: what would be sent, and the form that posts the action back confirmed."""
    return TemplateResponse(
        request,
        "admin/outbox/replay_confirm.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": title,
            "opts": modeladmin.opts,
            "form": form,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "media": modeladmin.media,
            **context,
        },
    )
