"""The outbox's public API: everything an app needs to emit events and to consume them.

    from outbox import EmittingModel, register, by_kind, consumer

    class Invoice(EmittingModel): ...
    register(Invoice, aggregate_type="invoice", event_type=by_kind(created="invoice.issued"))

    @consumer("ledger", events=["invoice.issued"])
    def post_invoice(event): ...

Apps import these names from `outbox` and nothing deeper (docs/extending.md). They load on first
use, so that importing the package while Django sets up its apps loads no model.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from outbox import testing
    from outbox.consume.declare import Kind, consumer, consumer_records
    from outbox.consume.external import DedupeKey
    from outbox.consume.run import PermanentError, RetryableError
    from outbox.emit.context import event_context
    from outbox.emit.model import EmittingModel
    from outbox.emit.registry import Change, ChangeKind, by_kind, register
    from outbox.emit.schemas import upcaster
    from outbox.errors import OutboxError, RegistrationError
    from outbox.eventlog.sealing import seal_many as seals
    from outbox.models import Event

_EXPORTS = {
    "EmittingModel": ("outbox.emit.model", "EmittingModel"),
    "register": ("outbox.emit.registry", "register"),
    "by_kind": ("outbox.emit.registry", "by_kind"),
    "Change": ("outbox.emit.registry", "Change"),
    "ChangeKind": ("outbox.emit.registry", "ChangeKind"),
    "upcaster": ("outbox.emit.schemas", "upcaster"),
    "event_context": ("outbox.emit.context", "event_context"),
    "consumer": ("outbox.consume.declare", "consumer"),
    "Kind": ("outbox.consume.declare", "Kind"),
    "consumer_records": ("outbox.consume.declare", "consumer_records"),
    "DedupeKey": ("outbox.consume.external", "DedupeKey"),
    "Event": ("outbox.models", "Event"),
    "PermanentError": ("outbox.consume.run", "PermanentError"),
    "RetryableError": ("outbox.consume.run", "RetryableError"),
    "OutboxError": ("outbox.errors", "OutboxError"),
    "RegistrationError": ("outbox.errors", "RegistrationError"),
    "seals": ("outbox.eventlog.sealing", "seal_many"),
    "testing": ("outbox.testing", None),
}

__all__ = [
    "Change",
    "ChangeKind",
    "DedupeKey",
    "EmittingModel",
    "Event",
    "Kind",
    "OutboxError",
    "PermanentError",
    "RegistrationError",
    "RetryableError",
    "by_kind",
    "consumer",
    "consumer_records",
    "event_context",
    "register",
    "seals",
    "testing",
    "upcaster",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'outbox' has no attribute {name!r}") from None
    loaded = import_module(module)
    return loaded if attribute is None else getattr(loaded, attribute)
