"""`python manage.py roles_sync`: create or update the Auditors and Operators groups."""

from typing import Any

from django.core.management.base import BaseCommand

from core.roles import roles_sync


class Command(BaseCommand):
    help = "Create or update the Auditors (read-only) and Operators (read + replay) groups. Runs after migrate too."

    def handle(self, *args: Any, **options: Any) -> None:
        for group, count in roles_sync().items():
            self.stdout.write(f"{group}: {count} permissions.")
