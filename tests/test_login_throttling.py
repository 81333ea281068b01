"""Admin logins are throttled (django-axes): a username guessed at from one address is locked out
for a while; other users, and the right password after the cool-off or an unlock, get in."""

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture
def alice() -> User:
    return User.objects.create_superuser("alice", "alice@example.com", "right-password-1")


def login(client: Client, username: str, password: str, address: str = "10.0.0.7") -> Any:
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def test_thirty_wrong_passwords_lock_the_login_and_then_the_right_one_is_refused(alice: User) -> None:
    client = Client()
    for _ in range(30):
        login(client, "alice", "wrong")
    response = login(client, "alice", "right-password-1")
    assert response.status_code == 429
    page = " ".join(response.content.decode().split())
    assert "Too many failed logins for “alice” from your address (5 in a row)" in page
    assert "15 minutes after the last failed attempt" in page
    assert "axes_reset_username alice" in page
    assert not logged_in(client)


def test_five_failures_lock_but_four_do_not(alice: User) -> None:
    client = Client()
    for _ in range(4):
        assert login(client, "alice", "wrong").status_code == 200  # the form again, with its error
    assert login(client, "alice", "right-password-1").status_code == 302
    assert logged_in(client)


def test_another_user_from_the_same_address_and_the_same_user_from_another_are_not_locked(alice: User) -> None:
    User.objects.create_superuser("bob", "bob@example.com", "bobs-password-1")
    for _ in range(10):
        login(Client(), "alice", "wrong")
    bob = Client()
    assert login(bob, "bob", "bobs-password-1").status_code == 302
    assert logged_in(bob)
    elsewhere = Client()
    assert login(elsewhere, "alice", "right-password-1", address="10.0.0.8").status_code == 302


def test_an_operator_unlocks_a_user_with_axes_reset_username(alice: User) -> None:
    for _ in range(5):
        login(Client(), "alice", "wrong")
    assert login(Client(), "alice", "right-password-1").status_code == 429
    call_command("axes_reset_username", "alice")
    assert login(Client(), "alice", "right-password-1").status_code == 302


def test_the_lock_ends_after_the_cool_off(alice: User, settings: Any) -> None:
    settings.AXES_COOLOFF_TIME = timedelta(seconds=0.5)
    for _ in range(5):
        login(Client(), "alice", "wrong")
    from axes.models import AccessAttempt

    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(seconds=1))
    assert login(Client(), "alice", "right-password-1").status_code == 302
