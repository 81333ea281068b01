"""The tools' database: a scratch database for a run, and its view of what the pipeline has yet to do."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

from outbox.relay import routing


@contextmanager
def scratch_database(*, verbosity: int = 0, suffix: str = "bench") -> Iterator[str]:
    """Create and migrate a throwaway database named `<database>_<suffix>`; drop it afterwards."""
    settings_dict = connection.settings_dict
    original = settings_dict["NAME"]
    settings_dict.setdefault("TEST", {})
    saved_test_name = settings_dict["TEST"].get("NAME")
    if connection.vendor != "sqlite":
        settings_dict["TEST"]["NAME"] = f"{original}_{suffix}"
    name = connection.creation.create_test_db(verbosity=verbosity, autoclobber=True, serialize=False)
    try:
        yield name
    finally:
        connection.creation.destroy_test_db(original, verbosity=verbosity)
        settings_dict["TEST"]["NAME"] = saved_test_name


def max_event_id() -> int:
    """Return the id of the latest event (0 when there is none)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM outbox_event")
        return int(cursor.fetchone()[0])


def routed_deliveries(*, after: int) -> tuple[int, dict[str, int]]:
    """Return the number of events after id `after` and, per consumer, the deliveries routed to it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT type, count(*) FROM outbox_event WHERE id > %s GROUP BY type", [after])
        rows = cursor.fetchall()
    expected: dict[str, int] = {}
    for event_type, count in rows:
        for consumer in routing.consumers_for(event_type):
            expected[consumer] = expected.get(consumer, 0) + count
    return sum(count for _, count in rows), expected


def undone_deliveries(*, after: int) -> int:
    """Return how many routed deliveries of the events after id `after` are not done (missing ones included)."""
    _, expected = routed_deliveries(after=after)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox_delivery WHERE event_id > %s AND status = 'done'", [after])
        return sum(expected.values()) - int(cursor.fetchone()[0])
