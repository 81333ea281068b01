"""Who made a change: the admin user over HTTP, or the command that ran."""

import os
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client

from tests.outbox.helpers import SHIPMENT_ADD_URL, events, shipment_form
from tests.outbox_app.models import Item, Shipment
from tests.processes import manage_run

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_admin_change_records_the_user_and_the_request_id(admin_client: Client, items: list[Item]) -> None:
    """Events from an admin submit carry the logged-in user, source admin, and the request id."""
    response = admin_client.post(SHIPMENT_ADD_URL, shipment_form([(items[0].pk, 1)]), HTTP_X_REQUEST_ID="req-42")
    assert response.status_code == 302
    assert response["X-Request-ID"] == "req-42"
    shipment = Shipment.objects.get()
    rows = set(
        events()
        .filter(aggregate_type="shipment", aggregate_id=str(shipment.pk))
        .values_list("actor", "source", "correlation_id")
    )
    assert rows == {("user:alice", "admin", "req-42")}


@pytest.mark.django_db
def test_unusable_request_id_is_replaced(admin_client: Client, items: list[Item]) -> None:
    """A request id with spaces or markup is not trusted: a fresh one is generated and echoed."""
    response = admin_client.post(SHIPMENT_ADD_URL, shipment_form([(items[0].pk, 1)]), HTTP_X_REQUEST_ID="<script> x")
    generated = response["X-Request-ID"]
    assert generated != "<script> x"
    assert len(generated) == 32
    assert set(events().values_list("correlation_id", flat=True).filter(source="admin")) == {generated}


@pytest.mark.django_db(transaction=True)
def test_management_command_changes_are_made_by_the_system_actor() -> None:
    """A change made from `manage.py shell` is stamped actor=system, source=command:shell."""
    s = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings.test",
        "DATABASE_URL": f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}",
    }
    code = "from tests.outbox_app.models import Item; Item.objects.create(sku='CMD-1', name='Cmd', price=1)"
    result = manage_run("shell", "-c", code, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    event = events().get(event_type="item.created")
    assert (event.actor, event.source) == ("system", "command:shell")
    assert len(event.correlation_id) == 32
