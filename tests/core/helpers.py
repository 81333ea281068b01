"""Helpers for admin tests: clients that see each other's saves, and the forms they open."""

import re
from typing import Any

from django.contrib.auth.models import User
from django.test import Client

from outbox.writer import events_flush


class CommittingClient(Client):
    """A test client whose requests each see the events of the ones before.

    A test runs in one transaction that never commits, so the events a request writes are still
    held for that commit when the next request reads versions: each request writes them first,
    as their commit would have in production.
    """

    def request(self, **request: Any) -> Any:
        events_flush()
        return super().request(**request)


def logged_in(username: str) -> CommittingClient:
    """Return a client logged in as a new superuser of this name."""
    client = CommittingClient()
    client.force_login(User.objects.create_superuser(username, f"{username}@example.com", "pw"))
    return client


def opened(client: Client, url: str) -> dict[str, str]:
    """Open a change form as a browser would; return the hidden version it carries, to post back."""
    events_flush()
    page = client.get(url).content.decode()
    return dict(re.findall(r'<input type="hidden" name="(opened_version)" value="([^"]*)"', page))
