"""The business consumers run as the application's database role, the one that owns nothing:
inventory, e-mail and the audit log do their work, and a forged event is refused by the real
worker. (The outbox's own guarantees against that role: tests/outbox/test_least_privilege.py.)"""

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from core import services
from core.models import Product
from outbox.eventlog.sealing import verify
from outbox.models import Checkpoint, Delivery, Pending, Seal
from tests.outbox.helpers import as_role
from tests.processes import app_role_env, processes
from tests.smtp import smtp_server
from tooling.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LONG_GRACE = timedelta(days=1)


def forge_receipt(role: str, product: Product, quantity: int) -> int:
    """Insert a stock receipt's event by SQL, as an intruder holding the app role would."""
    with as_role(role) as intruder, intruder.transaction():
        version = intruder.execute(
            "INSERT INTO outbox_aggregate AS a (aggregatetype, aggregateid, version) VALUES ('product', %s, 1) "
            "ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = a.version + 1 RETURNING version",
            [str(product.pk)],
        ).fetchone()
        assert version is not None
        payload = {"state": {"id": 999_999, "product_id": product.pk, "quantity": quantity, "note": ""}}
        row = intruder.execute(
            "INSERT INTO outbox_event (event_id, type, aggregatetype, aggregateid, aggregate_version, payload, actor,"
            " correlation_id, source) VALUES (gen_random_uuid(), 'stock.received', 'product', %s, %s, %s, "
            "'user:admin', 'c0ffee', 'admin') RETURNING id",
            [str(product.pk), version[0], json.dumps(payload)],
        ).fetchone()
        assert row is not None
        intruder.execute(
            "INSERT INTO outbox_pending (event_id, type, claimed_by, claims) VALUES (%s, %s, '', 0)",
            [
                row[0],
                "stock.received",
            ],
        )
    return int(row[0])


def test_the_pipeline_runs_as_the_app_role_and_refuses_a_forged_event(app_role: str, tmp_path: Path) -> None:
    """Relay and worker processes connected as the role that owns nothing: every consumer works,
    seals and checkpoints are written, and a forged row is refused by the real worker."""
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    customer = services.customer_create(name="Ada", email="ada@example.com")
    product = services.product_create(sku="KB-1", name="Keyboard", price=Decimal("10.00"))
    services.stock_receive(sku="KB-1", quantity=5)
    with smtp_server() as mail:
        env = app_role_env(app_role, smtp_host=mail.host, smtp_port=mail.port)
        with processes(tmp_path, **env) as procs:
            procs.relay("r1")
            procs.worker()
            order = services.order_create(customer=customer, lines=[services.LineRequest("KB-1", 2)], place=True)
            forged = forge_receipt(app_role, product, 500)

            def settled() -> bool:
                return (
                    not Pending.objects.exists()
                    and Delivery.objects.filter(status="published").count() == 0
                    and Delivery.objects.filter(event_id=forged, status="dead").count() == 3  # stock, audit, seal
                )

            wait_until(settled, timeout=60, what="every delivery to be done or dead")
            wait_until(lambda: mail.count() == 1, timeout=30, what="the order's confirmation")
            wait_until(
                lambda: Checkpoint.objects.filter(last_event_id__gte=forged - 1).exists(),
                timeout=30,
                what="a checkpoint from the relay",
            )
    product.refresh_from_db()
    assert product.stock == 3
    assert Delivery.objects.filter(event__aggregate_id=str(order.pk), status="done").count() >= 2
    assert not Seal.objects.filter(event_id=forged).exists()
    assert set(Delivery.objects.exclude(event_id=forged).values_list("status", flat=True)) == {"done"}
    assert sorted((p.kind, p.event_id) for p in verify(unsealed_grace=LONG_GRACE).problems or []) == [
        ("forged", forged)
    ]
