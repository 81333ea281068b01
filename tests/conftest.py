"""Shared fixtures: business records made through the services, logged-in admin clients, the
brokers (Redis, and each broker in turn), and the application's database role."""

from collections.abc import Iterator
from decimal import Decimal
from io import StringIO

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client

from core import services
from core.models import Customer, Product
from tests.brokers import SuiteBroker, brokers


@pytest.fixture
def customer(db: None) -> Customer:
    return services.customer_create(name="Ada Lovelace", email="ada@example.com")


@pytest.fixture
def products(db: None) -> list[Product]:
    return [
        services.product_create(sku="KB-001", name="Keyboard", price=Decimal("89.00")),
        services.product_create(sku="MS-002", name="Mouse", price=Decimal("29.50")),
        services.product_create(sku="MN-003", name="Monitor", price=Decimal("249.00")),
    ]


@pytest.fixture
def staff_user(db: None) -> User:
    return User.objects.create_superuser("alice", "alice@example.com", "pw")


@pytest.fixture
def admin_client(staff_user: User) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def empty_queues() -> Iterator[None]:
    """Empty the tests' Redis database before and after: relays publish there, and no message may
    be left behind for another test's workers."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[SuiteBroker]:
    """Each broker in turn, empty before and after: the suite's Redis database, then its RabbitMQ
    virtual host. Processes get `broker.env()`."""
    chosen = brokers()[request.param]
    chosen.empty()
    yield chosen
    chosen.empty()


@pytest.fixture
def app_role() -> str:
    """A login role that owns nothing, with exactly the grants of `outbox_grants --apply`."""
    role = f"{connection.settings_dict['NAME']}_app"[:63]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
    call_command("outbox_grants", role=role, apply=True, stdout=StringIO())
    return role
