"""On PostgreSQL, committing an event notifies listeners; a rollback notifies nobody."""

from decimal import Decimal

import psycopg
import pytest
from django.db import transaction

from tests.outbox.helpers import conninfo
from tests.outbox_app.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


def test_commit_notifies_once_and_rollback_not_at_all() -> None:
    """A listener hears one notification per committed transaction, none for a rolled-back one."""
    with psycopg.connect(conninfo(), autocommit=True) as listener:
        listener.execute("LISTEN outbox_event")
        with pytest.raises(RuntimeError), transaction.atomic():
            Item.objects.create(sku="N-0", name="rolled back", price=Decimal("1"))
            raise RuntimeError("roll back")
        with transaction.atomic():
            for i in range(3):
                Item.objects.create(sku=f"N-{i + 1}", name="committed", price=Decimal("1"))
        heard = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in heard] == ["outbox_event"]
        assert list(listener.notifies(timeout=0.5)) == []
