"""`python manage.py outbox_grants --role NAME [--apply]`: least privilege for the application's role."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from outbox.ops.grants import GrantError, grants_apply, grants_plan


class Command(BaseCommand):
    help = (
        "Print (or, with --apply, run) the SQL that gives ROLE exactly the privileges the web, relay and "
        "workers need: no UPDATE, DELETE or TRUNCATE on the event log, and nothing it owns. Run it as the "
        "tables' owner after every migrate; running it again changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--role", required=True, help="The application's database role, e.g. shop_app.")
        parser.add_argument("--apply", action="store_true", help="Run the statements instead of printing them.")
        parser.add_argument("--database", default="default", help="The database alias (default: default).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["apply"]:
                plan = grants_apply(role=options["role"], using=options["database"])
            else:
                plan = grants_plan(role=options["role"], using=options["database"])
        except GrantError as e:
            raise CommandError(str(e)) from e
        if options["apply"]:
            self.stdout.write(
                f"Role {plan.role} now holds exactly its privileges on {plan.tables} tables "
                f"({len(plan.statements)} statements)."
            )
            return
        self.stdout.write(f"-- Least privilege for {plan.role}; run as the tables' owner, after migrate.")
        for statement in plan.statements:
            self.stdout.write(statement + ";")
