"""The two roles: Auditors read the record; Operators also replay deliveries.

`roles_sync()` creates or updates the groups (run after every migrate, and by
`python manage.py roles_sync`). Give people a role by adding them to the group, with
`is_staff` so they can log in to the admin.
"""

from django.apps import apps
from django.contrib.auth.models import Group, Permission

from outbox import consumer_records

AUDITORS = "Auditors"
OPERATORS = "Operators"

VIEWED = [
    "core.customer",
    "core.product",
    "core.order",
    "core.orderline",
    "core.stockreceipt",
    "outbox.event",
    "outbox.delivery",
    "outbox.replay",
    "outbox.replayitem",
    "outbox.backfill",
]


def roles() -> dict[str, list[str]]:
    """Return each role's permissions: viewing the records above and every consumer's (as each
    consumer's declaration names them), and for Operators, replaying deliveries."""
    viewed = [f"{label.split('.')[0]}.view_{label.split('.')[1]}" for label in [*VIEWED, *consumer_records()]]
    return {AUDITORS: viewed, OPERATORS: [*viewed, "outbox.replay_delivery"]}


def roles_sync() -> dict[str, int]:
    """Create the groups and set exactly their permissions; return {group: permission count}."""
    if not apps.is_installed("django.contrib.auth"):
        return {}
    result = {}
    for name, codes in roles().items():
        group, _ = Group.objects.get_or_create(name=name)
        permissions = []
        for code in codes:
            app_label, codename = code.split(".")
            permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
            if permission is None:
                raise LookupError(f"Permission {code} does not exist: run `python manage.py migrate` first.")
            permissions.append(permission)
        group.permissions.set(permissions)
        result[name] = len(permissions)
    return result
