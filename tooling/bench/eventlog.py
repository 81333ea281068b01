"""Event-log figures for `outbox_bench`: the auditors' admin pages at volume.

The history is written with set-based SQL (generate_series), as an audited shop would have
accumulated it over a year: orders (60% of events, six versions each, created a few at a time),
products (25%: two thousand of them, each with hundreds of stock receipts and price changes) and
customers (15%), by forty staff users, the system and anonymous visitors, each event delivered to
the consumers its type is routed to, a few failed or dead, the newest still in flight. Then real
admin requests are timed in this process, through Django's test client as a logged-in superuser.
"""

import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from outbox.relay import routing
from tooling.bench.relay import percentile

YEAR_START = datetime(2026, 1, 1, tzinfo=UTC)
PRODUCTS = 2000
STAFF = 40
IN_FLIGHT = 200  # the newest events' deliveries are still `published`
TIMED_REQUESTS = 20  # per page, after one untimed request

# Slots: g % 20 picks the aggregate type (12 order, 5 product, 3 customer slots in 20), and the
# aggregate and version follow from the type's own slot counter. Orders come in blocks of 1000,
# each block's orders taking their six versions in turn, so that an order's events lie close
# together in time but not side by side; products recur all year long.
_EVENTS = """
WITH slots AS (
    SELECT g,
           CASE WHEN g %% 20 < 12 THEN 'order' WHEN g %% 20 < 17 THEN 'product' ELSE 'customer' END AS agg,
           CASE WHEN g %% 20 < 12 THEN (g / 20) * 12 + g %% 20
                WHEN g %% 20 < 17 THEN (g / 20) * 5 + g %% 20 - 12
                ELSE (g / 20) * 3 + g %% 20 - 17 END AS slot,
           (g * 7919) %% 1000 AS who
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
), aggregates AS (
    SELECT g, agg, who,
           CASE agg WHEN 'order' THEN (slot / 6000) * 1000 + slot %% 1000 + 1
                    WHEN 'product' THEN slot %% %(products)s + 1
                    ELSE (slot / 2000) * 1000 + slot %% 1000 + 1 END AS aid,
           CASE agg WHEN 'order' THEN (slot %% 6000) / 1000 + 1
                    WHEN 'product' THEN slot / %(products)s + 1
                    ELSE (slot %% 2000) / 1000 + 1 END AS version,
           %(start)s::timestamptz + (g::float8 / %(n)s) * interval '365 days' AS at
    FROM slots
), typed AS (
    SELECT *,
           CASE agg
               WHEN 'order' THEN CASE
                   WHEN version = 1 THEN CASE WHEN aid %% 10 = 3 THEN 'order.created' ELSE 'order.placed' END
                   WHEN version <= 4 THEN 'order_line.added'
                   WHEN version = 5 THEN CASE WHEN aid %% 50 = 7 THEN 'order_line.removed'
                                              WHEN aid %% 25 = 1 THEN 'order.updated'
                                              ELSE 'order_line.changed' END
                   ELSE CASE WHEN aid %% 1000 = 999 THEN 'order.deleted'
                             WHEN aid %% 10 = 0 THEN 'order.cancelled'
                             ELSE 'order.fulfilled' END END
               WHEN 'product' THEN CASE
                   WHEN version = 1 THEN 'product.created'
                   WHEN (aid + version) %% 10 < 3 THEN 'product.updated'
                   ELSE 'stock.received' END
               ELSE CASE
                   WHEN version = 1 THEN 'customer.registered'
                   WHEN aid %% 200 = 17 THEN 'customer.deleted'
                   ELSE 'customer.updated' END
           END AS type,
           CASE WHEN who < 150 THEN 'system' WHEN who < 170 THEN 'anonymous'
                WHEN who = 999 THEN 'user:auditor' ELSE 'user:staff' || (who %% %(staff)s) END AS actor
    FROM aggregates
), inserted AS (
    INSERT INTO outbox_event
        (event_id, type, aggregatetype, aggregateid, aggregate_version, payload, actor, correlation_id, source,
         created_at)
    SELECT gen_random_uuid(), type, agg, aid::text, version,
           CASE
               WHEN type LIKE 'order\\_line.%%' THEN jsonb_build_object(
                   'state', jsonb_build_object('id', aid * 4 + least(version, 4), 'order_id', aid,
                                               'product_id', (aid * 7 + version) %% %(products)s + 1,
                                               'quantity', version, 'unit_price', '29.50'))
                   || CASE WHEN type = 'order_line.changed' THEN jsonb_build_object(
                          'changes', jsonb_build_object('quantity', jsonb_build_object('old', 1, 'new', version)))
                      ELSE '{}'::jsonb END
               WHEN agg = 'order' THEN jsonb_build_object(
                   'state', jsonb_build_object('id', aid, 'customer_id', aid %% 50000 + 1,
                                               'status', CASE type WHEN 'order.created' THEN 'draft'
                                                                   WHEN 'order.cancelled' THEN 'cancelled'
                                                                   WHEN 'order.fulfilled' THEN 'fulfilled'
                                                                   ELSE 'placed' END,
                                               'created_at', at, 'updated_at', at, 'placed_at', at,
                                               'closed_at', NULL))
                   || CASE WHEN type IN ('order.cancelled', 'order.fulfilled') THEN jsonb_build_object(
                          'changes', jsonb_build_object(
                              'status', jsonb_build_object('old', 'placed', 'new', split_part(type, '.', 2)),
                              'closed_at', jsonb_build_object('old', NULL, 'new', at)))
                      WHEN type = 'order.updated' THEN jsonb_build_object(
                          'changes', jsonb_build_object(
                              'customer_id', jsonb_build_object('old', aid %% 50000 + 1, 'new', aid %% 50000 + 2)))
                      ELSE '{}'::jsonb END
               WHEN type = 'stock.received' THEN jsonb_build_object(
                   'state', jsonb_build_object('id', g, 'product_id', aid, 'quantity', 10 + version %% 90,
                                               'note', '', 'created_at', at))
               WHEN agg = 'product' THEN jsonb_build_object(
                   'state', jsonb_build_object('id', aid, 'sku', 'SKU-' || aid, 'name', 'Product ' || aid,
                                               'price', (10 + version %% 50) || '.00', 'stock', 0))
                   || CASE WHEN type = 'product.updated' THEN jsonb_build_object(
                          'changes', jsonb_build_object('price', jsonb_build_object(
                              'old', (9 + version %% 50) || '.00', 'new', (10 + version %% 50) || '.00')))
                      ELSE '{}'::jsonb END
               ELSE jsonb_build_object(
                   'state', jsonb_build_object('id', aid, 'name', 'Customer ' || aid,
                                               'email', 'c' || aid || '-' || version || '@example.com',
                                               'created_at', at))
                   || CASE WHEN type = 'customer.updated' THEN jsonb_build_object(
                          'changes', jsonb_build_object('email', jsonb_build_object(
                              'old', 'c' || aid || '-1@example.com', 'new', 'c' || aid || '-2@example.com')))
                      ELSE '{}'::jsonb END
           END,
           actor, md5(g::text),
           CASE WHEN actor = 'system' THEN 'command:demo_data' WHEN actor = 'anonymous' THEN 'web' ELSE 'admin' END,
           at
    FROM typed
    RETURNING id, type
)
INSERT INTO outbox_delivery
    (event_id, consumer, status, publications, attempts, last_error, published_at, done_at, updated_at)
SELECT e.id, r.consumer, s.status, 1, CASE s.status WHEN 'published' THEN 0 WHEN 'done' THEN 1 ELSE 6 END,
       CASE WHEN s.status IN ('failed', 'dead') THEN 'ConnectionError: bench' ELSE '' END,
       now(), CASE s.status WHEN 'done' THEN now() END, now()
FROM inserted AS e
JOIN unnest(%(route_types)s::text[], %(route_consumers)s::text[]) AS r(type, consumer) ON r.type = e.type
CROSS JOIN LATERAL (
    SELECT CASE WHEN e.id > %(in_flight_after)s THEN 'published'
                WHEN (e.id * 31 + length(r.consumer)) %% 10000 < 5 THEN 'dead'
                WHEN (e.id * 31 + length(r.consumer)) %% 10000 < 20 THEN 'failed'
                ELSE 'done' END AS status
) AS s
"""

EVENT_TYPES = [
    "order.created",
    "order.placed",
    "order.cancelled",
    "order.fulfilled",
    "order.updated",
    "order.deleted",
    "order_line.added",
    "order_line.changed",
    "order_line.removed",
    "product.created",
    "product.updated",
    "stock.received",
    "customer.registered",
    "customer.updated",
    "customer.deleted",
]


def eventlog_create(*, n: int, chunk: int = 100_000) -> None:
    """Add `n` events as a year of a shop's history, with their deliveries; vacuum and analyze.

    A statement per `chunk` events, a few seconds each.
    """
    route_types, route_consumers = routing.route_pairs(EVENT_TYPES)
    with connection.cursor() as cursor:
        # The statement's estimated cost sets off JIT compilation of its expressions with full
        # optimization: tens of seconds of LLVM per statement, during which the backend does not
        # answer a shutdown (a fast restart of PostgreSQL waited for it past pg_ctl's 60 s).
        cursor.execute("SET jit = off")
        # The id the first event will take: the sequence's next value, which an emptied table's
        # max(id) does not tell (the relay figures' millions of events came before).
        cursor.execute("SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM outbox_event_id_seq")
        first = int(cursor.fetchone()[0])
    for lo in range(1, n + 1, chunk):
        hi = min(n, lo + chunk - 1)
        with connection.cursor() as cursor:
            cursor.execute(
                _EVENTS,
                {
                    "lo": lo,
                    "hi": hi,
                    "n": n,
                    "start": YEAR_START,
                    "products": PRODUCTS,
                    "staff": STAFF,
                    "route_types": route_types,
                    "route_consumers": route_consumers,
                    "in_flight_after": first + n - IN_FLIGHT - 1,
                },
            )
    with connection.cursor() as cursor:
        cursor.execute("RESET jit")
        for table in ("outbox_event", "outbox_delivery"):
            cursor.execute(f"VACUUM (ANALYZE) {table}")


def _wipe_log() -> None:
    """Empty the event log and its deliveries, so that the table holds exactly the bench's events.

    TRUNCATE fires no row trigger: the append-only guard (migration 0005) refuses row deletes.
    This runs on the bench's scratch database only, which is dropped afterwards.
    """
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_event, outbox_delivery, outbox_pending RESTART IDENTITY")


def _sample(sql: str, params: list[Any]) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row else None


def changelist_pages(*, n: int) -> dict[str, str]:
    """Return the changelist requests timed, by name: the unfiltered list, each filter (a common and
    a rare value where it has both) and each kind of search."""
    middle = n // 2
    event_id = _sample("SELECT id FROM outbox_event WHERE id >= %s ORDER BY id LIMIT 1", [middle])
    event_uuid = _sample("SELECT event_id FROM outbox_event WHERE id = %s", [event_id])
    order_id = _sample(
        "SELECT aggregateid FROM outbox_event WHERE id >= %s AND aggregatetype = 'order' ORDER BY id LIMIT 1",
        [middle],
    )
    mid_day = _sample("SELECT created_at::date FROM outbox_event WHERE id = %s", [event_id])
    base = "/admin/outbox/event/"
    pages = {
        "list": base,
        "list_page_5": f"{base}?p=5",
        "type_common": f"{base}?type=order_line.added",
        "type_rare": f"{base}?type=order.deleted",
        "aggregate_type": f"{base}?aggregate_type=customer",
        "actor_common": f"{base}?actor=system",
        "actor_rare": f"{base}?actor=user:auditor",
        "date_day": f"{base}?created_at__gte={mid_day}&created_at__lt={mid_day + timedelta(days=1)}",
        "date_from": f"{base}?created_at__gte={mid_day}",
        "search_event_id": f"{base}?q={event_id}",
        "search_event_uuid": f"{base}?q={event_uuid}",
        "search_aggregate": f"{base}?q=order:{order_id}",
        "search_aggregate_id": f"{base}?q={order_id}",
    }
    for consumer in sorted(routing.route_names()):
        for status in ("failed", "dead", "published"):
            pages[f"delivery_{consumer}_{status}"] = f"{base}?delivery={consumer}:{status}"
    pages["delivery_done"] = f"{base}?delivery=email:done"
    return pages


def timeline_pages(*, n: int, count: int) -> list[str]:
    """Return `count` timelines of aggregates spread over the log: orders, products, customers."""
    urls = []
    for i in range(count):
        event_id = max(1, (i * 7919 * 1009) % max(n, 1))
        row = None
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT aggregatetype, aggregateid FROM outbox_event WHERE id >= %s ORDER BY id LIMIT 1", [event_id]
            )
            row = cursor.fetchone()
        if row:
            urls.append(f"/admin/outbox/event/timeline/{row[0]}/{row[1]}/")
    return urls


def _time(client: Client, url: str) -> float:
    start = time.perf_counter()
    response = client.get(url)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} answered {response.status_code}, not 200")
    return elapsed * 1000


def eventlog_figures(*, events: int, requests: int = TIMED_REQUESTS) -> dict[str, Any]:
    """Measure eventlog_changelist_ms_p95 and aggregate_timeline_ms_p95 with `events` events."""
    _wipe_log()
    eventlog_create(n=events)
    user = User.objects.create_superuser("bench-auditor", "bench@example.com", None)
    # Django's test client, in this process, as a logged-in superuser; Host is one ALLOWED_HOSTS has.
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    by_page: dict[str, list[float]] = {}
    for name, url in changelist_pages(n=events).items():
        _time(client, url)  # the first request of a page warms its plan and templates, as a user's would
        by_page[name] = [_time(client, url) for _ in range(requests)]
    timelines = timeline_pages(n=events, count=requests * 5)
    _time(client, timelines[0])
    timeline_ms = [_time(client, url) for url in timelines]
    changelist_ms = [ms for samples in by_page.values() for ms in samples]
    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM outbox_delivery GROUP BY status ORDER BY status")
        deliveries = dict(cursor.fetchall())
    return {
        # What the pages were measured over: every status must be there for its filter to mean anything.
        "eventlog_deliveries_by_status": deliveries,
        "eventlog_changelist_ms_p95": round(percentile(changelist_ms, 0.95), 2),
        "eventlog_changelist_ms_p50": round(statistics.median(changelist_ms), 2),
        "eventlog_changelist_ms_p95_by_page": {
            name: round(percentile(samples, 0.95), 2) for name, samples in by_page.items()
        },
        "aggregate_timeline_ms_p95": round(percentile(timeline_ms, 0.95), 2),
        "aggregate_timeline_ms_p50": round(statistics.median(timeline_ms), 2),
    }
