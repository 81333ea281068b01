"""`python manage.py demo_data`: demo records, and on the embedded default a demo superuser."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from core.demo import DEMO_PASSWORD, DEMO_USERNAME, demo_data_create, demo_superuser_create


class Command(BaseCommand):
    help = "Create demo products, customers and an order; on the embedded default also admin/admin."

    def handle(self, *args: Any, **options: Any) -> None:
        created = demo_data_create()
        for line in created:
            self.stdout.write(f"Created {line}.")
        if not created:
            self.stdout.write("Demo data already present.")
        if settings.EMBEDDED:
            if demo_superuser_create():
                self.stdout.write(f"Created superuser {DEMO_USERNAME} / {DEMO_PASSWORD}.")
        else:
            self.stdout.write("Not the embedded default: no demo superuser (use createsuperuser).")
