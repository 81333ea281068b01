"""Which consumers receive which events: event type → Dramatiq actor names.

`"*"` routes every event type. The relay publishes each event to the union of its type's routes
and the wildcard's; `python manage.py check` fails (outbox.E002) on a route to an actor that the
worker does not define.
"""

OUTBOX_ROUTES: dict[str, list[str]] = {
    "*": ["audit_log"],
}
