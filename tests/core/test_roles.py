"""The Auditors and Operators roles (core/roles.py): their permissions, and what an auditor may
do in the admin, over HTTP."""

from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from core import services
from outbox.models import Delivery, Event, Replay
from tests import processes
from tests.outbox.helpers import events

pytestmark = pytest.mark.usefixtures("empty_queues")


def queued(queue: str = "audit") -> list[int]:
    return processes.queued(queue)


@pytest.fixture
def deliveries(db: None) -> list[Delivery]:
    for i in range(3):
        services.customer_create(name=f"C{i}", email=f"c{i}@example.com")
    ids = list(events().order_by("id").values_list("id", flat=True))
    return [
        Delivery.objects.create(event_id=ids[0], consumer="audit_log", status="dead", attempts=6, last_error="boom"),
        Delivery.objects.create(event_id=ids[1], consumer="audit_log", status="failed", attempts=1, last_error="x"),
        Delivery.objects.create(event_id=ids[2], consumer="audit_log", status="done", attempts=1),
    ]


def test_roles_exist_with_their_permissions(db: None) -> None:
    auditors = set(Group.objects.get(name="Auditors").permissions.values_list("codename", flat=True))
    operators = set(Group.objects.get(name="Operators").permissions.values_list("codename", flat=True))
    assert {"view_event", "view_delivery", "view_order", "view_stockmovement"} <= auditors
    assert not any(code.startswith(("add_", "change_", "delete_")) for code in auditors)
    assert operators - auditors == {"replay_delivery"}


@pytest.fixture
def auditor(db: None) -> Client:
    user = User.objects.create_user("ivy", "ivy@example.com", "pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Auditors"))
    client = Client()
    client.force_login(user)
    return client


def test_an_auditor_reads_but_cannot_change_delete_or_replay(auditor: Client, deliveries: list[Delivery]) -> None:
    order = services.order_create(
        customer=services.customer_create(name="Z", email="z@example.com"),
        lines=[
            services.LineRequest(sku=services.product_create(sku="P1", name="P", price=Decimal("1.00")).sku, quantity=1)
        ],
    )
    assert auditor.get("/admin/core/order/").status_code == 200
    assert auditor.get(f"/admin/core/order/{order.pk}/change/").status_code == 200
    assert auditor.post(f"/admin/core/order/{order.pk}/change/", {"status": "cancelled"}).status_code == 403
    assert auditor.post(f"/admin/core/order/{order.pk}/delete/", {"post": "yes"}).status_code == 403
    event = Event.objects.first()
    assert event is not None
    assert auditor.post(f"/admin/outbox/event/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    response = auditor.post(
        "/admin/outbox/delivery/", {"action": "replay_deliveries", "_selected_action": [deliveries[0].pk]}
    )
    assert response.status_code == 403
    assert queued() == []
    assert not Replay.objects.exists()
