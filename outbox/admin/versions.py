"""Optimistic concurrency for the admin's change forms: a form saved from a stale version is refused.

A change form carries, in a hidden field, the version of its record when it was opened: the
outbox's version of the record's aggregate (outbox_aggregate), which every save of the record,
and of its inline children, raises in the save's own transaction. On save, inside the admin's
transaction, the record's row is locked (SELECT … FOR UPDATE) and the version read again; if it
moved, the form is refused, naming who changed the record and when (its latest event). A
concurrent save of the same form waits for the lock and then finds the version moved.

Without the lock, two admins who opened one order at once both passed any check on the values
they had loaded, and the later save silently undid the earlier (a cancelled order placed again).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from django import forms
from django.contrib import admin
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property

from outbox.emit.registry import spec_for
from outbox.models import AggregateVersion, Event

M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class LastChange:
    """The latest event of a record: its version, who wrote it, when, and what it was."""

    version: int
    actor: str
    at: datetime
    event_type: str

    def describe(self) -> str:
        """Return "bob at 2026-12-03 12:40:05 UTC (order.cancelled)", for a message to a user."""
        who = self.actor.removeprefix("user:")
        when = timezone.localtime(self.at).strftime("%Y-%m-%d %H:%M:%S %Z")
        return f"{who} at {when} ({self.event_type})"


def aggregate_of(obj: Model) -> tuple[str, str]:
    """Return the (aggregate type, aggregate id) that an emitting record's events belong to."""
    spec = spec_for(type(obj))
    return spec.aggregate_type, str(spec.aggregate_id(obj))


def aggregate_version(*, aggregate_type: str, aggregate_id: str) -> int:
    """Return the latest committed version of an aggregate: 0 if it has no events."""
    versions = AggregateVersion.objects.filter(aggregate_type=aggregate_type, aggregate_id=aggregate_id)
    found = list(versions.values_list("version", flat=True)[:1])
    return found[0] if found else 0


def aggregate_events(*, aggregate_type: str, aggregate_id: str) -> QuerySet[Event]:
    """Return every event of an aggregate (unordered)."""
    return Event.objects.filter(aggregate_type=aggregate_type, aggregate_id=aggregate_id)


def last_change(events: QuerySet[Event]) -> LastChange | None:
    """Return the latest of these events of one aggregate, or None if there is none.

    Read backwards along the (aggregate, version) unique index, stopping at the first match.
    """
    row = (
        events.order_by("-aggregate_version")
        .values_list("aggregate_version", "actor", "created_at", "event_type")
        .first()
    )
    if row is None:
        return None
    version, actor, at, event_type = row
    return LastChange(version=version, actor=actor, at=at, event_type=event_type)


class VersionedForm(forms.ModelForm[Any]):
    """A change form that carries its record's version and is refused once that version is stale.

    The admin (VersionCheckedAdmin) says what the version is; `clean()` locks the record and
    compares, and leaves the locked row in `locked` for checks that need the record as it is now.
    """

    opened_version = forms.IntegerField(widget=forms.HiddenInput, required=False)
    versions: ClassVar["VersionCheckedAdmin[Any] | None"] = None
    locked: Model | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.versions is not None and self.instance.pk is not None and not self.is_bound:
            self.initial["opened_version"] = self.versions.version_of(self.instance)

    @cached_property
    def changed_data(self) -> list[str]:
        # The version is how the form was opened, not a change: kept out of the admin's history.
        return [name for name in super().changed_data if name != "opened_version"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.versions is not None and self.instance.pk is not None:
            self.locked = self.versions.version_check(form=self)
        return cleaned


class VersionCheckedAdmin(admin.ModelAdmin[M]):
    """A ModelAdmin whose change form is refused when the record changed after it was opened.

    Its `form` must be a VersionedForm. By default the version is the whole aggregate's, so that
    an order's form also notices a change to one of its lines; `version_events()` narrows it
    when the aggregate holds changes that the form does not show (see ProductAdmin).
    """

    form: Any = VersionedForm
    # Only whole-aggregate versions come from outbox_aggregate; a narrowed one from the event log.
    narrowed_versions = False

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        if not issubclass(form, VersionedForm):
            raise ImproperlyConfigured(f"{type(self).__name__}.form must be a outbox.admin.VersionedForm.")
        # A class of its own on each call (modelform_factory), so this marks this request's form only.
        form.versions = self
        return form

    def version_events(self, obj: M) -> QuerySet[Event]:
        """Return the events that count as changes to the record the form shows."""
        aggregate_type, aggregate_id = aggregate_of(obj)
        return aggregate_events(aggregate_type=aggregate_type, aggregate_id=aggregate_id)

    def version_of(self, obj: M) -> int:
        """Return the record's current version, the token its change form carries."""
        if not self.narrowed_versions:
            aggregate_type, aggregate_id = aggregate_of(obj)
            return aggregate_version(aggregate_type=aggregate_type, aggregate_id=aggregate_id)
        change = last_change(self.version_events(obj))
        return change.version if change is not None else 0

    def version_check(self, *, form: VersionedForm) -> Model:
        """Lock the form's record and return it as it is now; raise ValidationError, saying who
        changed it and when, if its version is not the one the form was opened at.

        Must run inside the admin's transaction (it does: forms are validated in it), which
        holds the lock until the save commits.
        """
        instance = form.instance
        model = type(instance)
        # "Order #7", "Stock receipt #12": by id, since a record's own text may be what changed.
        label = f"{str(model._meta.verbose_name).capitalize()} #{instance.pk}"
        try:
            # NO KEY: it still excludes every other writer of the row (and the services' FOR UPDATE),
            # but lets order lines referencing a product being edited be inserted meanwhile.
            locked = model._default_manager.select_for_update(no_key=True).get(pk=instance.pk)
        except model.DoesNotExist:
            change = last_change(self.version_events(instance))
            by = f" by {change.describe()}" if change is not None else ""
            raise ValidationError(
                f"{label} was deleted{by} after you opened this form, so nothing was saved.", code="deleted"
            ) from None
        opened = form.cleaned_data.get("opened_version")
        if opened is None:
            raise ValidationError(
                f"This form for {label} does not say which version of it you opened, so it cannot tell "
                "whether someone changed it since. Reload the page and make your change again.",
                code="no_version",
            )
        current = self.version_of(locked)
        if current != opened:
            change = last_change(self.version_events(locked))
            by = f"by {change.describe()}" if change is not None else "by someone else"
            raise ValidationError(
                f"{label} was changed {by} after you opened this form (version {opened}, now {current}), "
                "so your changes were not saved. Reload the page to see the record as it is now, "
                "then make your change again.",
                code="stale",
            )
        _adopt_unshown_fields(instance, locked, form)
        return locked


def _adopt_unshown_fields(instance: Model, locked: Model, form: forms.ModelForm[Any]) -> None:
    """Give the instance the locked row's values of the fields the form does not show.

    The admin loaded the instance before the lock; a field that consumers maintain without an
    event (a product's stock) may have moved since, and a full save would write the old value back.
    """
    for field in type(instance)._meta.concrete_fields:
        if field.primary_key or field.name in form.fields:
            continue
        setattr(instance, field.attname, getattr(locked, field.attname))
    loaded = getattr(locked, "_outbox_loaded", None)
    if loaded is not None:
        instance._outbox_loaded = dict(loaded)  # type: ignore[attr-defined]
