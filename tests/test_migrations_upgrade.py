"""A database made by an earlier version upgrades with `migrate` and keeps working.

tests/migrations/<commit>.sql.gz is such a database, made and filled by that version's own code
(scripts/migration_fixture.py; docs/operations.md, Deploying a new version). The test restores it into a
scratch database with psql, runs the current code's `migrate` on it, as a deploy does, and
then, through manage.py in fresh processes, as a deployment would:

- nothing is left to migrate, and the models match their migrations;
- every table of the old database is still there, with all its rows, and still a model's table;
- the old event log (tags, seals, the purged event, the signed checkpoint) verifies;
- as the app role `outbox_grants` sets up, the event the old relay left pending and new saves
  are relayed, consumed and sealed, and a new checkpoint follows the old one.

No git history is needed: the fixture is committed. The scratch database (and its app role) are
dropped at the end, also on failure.
"""

import gzip
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from django.db import connection
from psycopg import sql

from tests.processes import REPO, manage_run

FIXTURE = REPO / "tests" / "migrations" / "bb751a7.sql.gz"
TIMEOUT = 180  # seconds, for any one command

# What the fixture holds (scripts/migration_fixture.py), at least: the tables the test counts.
COUNTED = [
    "outbox_event",
    "outbox_seal",
    "outbox_delivery",
    "outbox_pending",
    "outbox_checkpoint",
    "outbox_replay",
    "outbox_replay_item",
    "email_notice",
    "inventory_movement",
    "inventory_source",
    "core_customer",
    "core_order",
    "core_orderline",
    "core_product",
    "core_stockreceipt",
    "auth_user",
    "auth_group",
]
# Tables that are no model's: Django's own record of what was applied.
NOT_MODELS = {"django_migrations"}

NEW_SAVES = """
from core import services
from tests.ledger.models import Invoice

barbara = services.customer_create(name="Barbara Liskov", email="barbara@example.com")
services.order_create(customer=barbara, lines=[services.LineRequest(sku="KB-001", quantity=2)], place=True)
services.stock_receive(sku="KB-001", quantity=10, note="After the upgrade")
Invoice.objects.create(number="INV-1", email="barbara@example.com", total=1200)
"""

MODEL_TABLES = """
import json
from django.apps import apps
print(json.dumps(sorted({m._meta.db_table for m in apps.get_models(include_auto_created=True)})))
"""

CHECKPOINT = """
from outbox.eventlog.checkpoints import checkpoint_take
print(checkpoint_take().token)
"""


@dataclass
class Upgraded:
    """The scratch database, restored from the fixture and migrated by the current code."""

    name: str
    env: dict[str, str]
    app_env: dict[str, str]
    tables_before: dict[str, int]
    checkpoint_before: str
    pending_before: int
    migrate_output: str

    def manage(self, *args: str, as_app: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `manage.py <args>` on the database, as the app role (or the owner), and require success."""
        result = manage_run(*args, env=self.app_env if as_app else self.env, timeout=TIMEOUT)
        assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def verify(self, *extra: str) -> dict:
        return json.loads(self.manage("outbox_verify", "--json", *extra).stdout)


def server() -> dict[str, str]:
    """libpq's parameters for the test database's server (the scratch database's)."""
    s = connection.settings_dict
    params = {"host": s["HOST"] or "127.0.0.1", "port": str(s["PORT"] or 5432), "user": s["USER"] or "postgres"}
    if s.get("PASSWORD"):
        params["password"] = s["PASSWORD"]
    return params


def connect(name: str) -> psycopg.Connection:
    """An autocommit connection to the database `name` on the test database's server."""
    return psycopg.connect(psycopg.conninfo.make_conninfo(dbname=name, connect_timeout=10, **server()), autocommit=True)


def admin(statement: sql.Composed) -> None:
    """Run a statement (CREATE or DROP DATABASE) from the server's maintenance database."""
    with connect("postgres") as conn:
        conn.execute(statement)


def query(name: str, text: str, params: list | None = None) -> list[tuple]:
    with connect(name) as conn:
        return conn.execute(text, params).fetchall()


def table_counts(name: str) -> dict[str, int]:
    """Every table of the public schema and its number of rows."""
    tables = [row[0] for row in query(name, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    counts = {}
    for table in tables:
        counts[table] = query(name, f'SELECT count(*) FROM "{table}"')[0][0]  # noqa: S608 - the catalog's names
    return counts


def fixture_keys() -> dict[str, str]:
    """The keys the fixture's log was sealed with, from its header (`-- NAME=value`)."""
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as f:
        head = [next(f) for _ in range(6)]
    keys = dict(re.findall(r"^-- (OUTBOX_SEAL_KEY|SECRET_KEY)=(\S+)$", "".join(head), re.MULTILINE))
    assert set(keys) == {"OUTBOX_SEAL_KEY", "SECRET_KEY"}, f"{FIXTURE.name} names no keys in its header"
    return keys


def restore(name: str) -> None:
    """Load the fixture into the database with psql, in one transaction."""
    psql = shutil.which("psql")
    assert psql, "psql is not on PATH (Debian: apt-get install postgresql-client); the upgrade test restores with it"
    params = server()
    env = {**os.environ, "PGHOST": params["host"], "PGPORT": params["port"], "PGUSER": params["user"]}
    env.update({"PGPASSWORD": params["password"]} if "password" in params else {})
    with gzip.open(FIXTURE, "rb") as f:
        script = f.read()
    result = subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-d", name, "-o", os.devnull],
        input=script,
        env=env,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"restoring {FIXTURE.name} failed:\n{result.stderr.decode(errors='replace')}"


def url(name: str, user: str) -> str:
    params = server()
    password = f":{params['password']}" if "password" in params else ""
    return f"postgres://{user}{password}@{params['host']}:{params['port']}/{name}"


@pytest.fixture(scope="module")
def upgraded() -> Iterator[Upgraded]:
    base = connection.settings_dict["NAME"]
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    name = f"{base}_upgrade{f'_{worker}' if worker else ''}"[:63]
    role = f"{name}_app"[:63]
    admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        restore(name)
        tables_before = table_counts(name)
        (token,) = query(
            name, "SELECT id || ':' || sealed || ':' || last_event_id || ':' || signature FROM outbox_checkpoint"
        )[0]
        (pending,) = query(name, "SELECT min(event_id) FROM outbox_pending")[0]
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "settings.test",
            "DATABASE_URL": url(name, server()["user"]),
            # The in-process broker: the relay runs the consumers itself; the shared Redis is left alone.
            "REDIS_URL": "",
            "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
            "SALES_SUMMARY_AT": "",
            "LOG_LEVEL": "WARNING",
            **fixture_keys(),
        }
        # As a deploy does (docs/operations.md): migrate as the owner, then the app role's grants.
        migrated = manage_run("migrate", "--noinput", env=env, timeout=TIMEOUT)
        assert migrated.returncode == 0, f"migrate failed on the old database:\n{migrated.stdout}\n{migrated.stderr}"
        if not query(name, "SELECT 1 FROM pg_roles WHERE rolname = %s", [role]):
            admin(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(sql.Identifier(role)))
        granted = manage_run("outbox_grants", "--role", role, "--apply", env=env, timeout=TIMEOUT)
        assert granted.returncode == 0, granted.stderr
        yield Upgraded(
            name=name,
            env=env,
            app_env={**env, "DATABASE_URL": url(name, role)},
            tables_before=tables_before,
            checkpoint_before=token,
            pending_before=pending,
            migrate_output=migrated.stdout,
        )
    finally:
        try:
            admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        finally:
            admin(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_the_fixture_holds_what_the_test_counts_on(upgraded: Upgraded) -> None:
    before = upgraded.tables_before
    empty = [table for table in COUNTED if not before.get(table)]
    assert not empty, f"{FIXTURE.name} has no rows in {empty}: regenerate it (scripts/migration_fixture.py)"
    assert before["outbox_pending"] == 1, "the fixture leaves one event pending, for the new relay"


def test_migrate_applies_the_new_migrations_and_leaves_nothing_to_do(upgraded: Upgraded) -> None:
    assert "Applying outbox.0012_dedupe... OK" in upgraded.migrate_output
    assert "Applying consumers.0006_notices_on_outbox_dedupe... OK" in upgraded.migrate_output
    upgraded.manage("migrate", "--check", as_app=False)
    # The models agree with the migrations: a model moved between modules got no migration of its own.
    assert "No changes detected" in upgraded.manage("makemigrations", "--check", "--dry-run", as_app=False).stdout
    upgraded.manage("check")


def test_every_old_table_keeps_its_rows_and_its_model(upgraded: Upgraded) -> None:
    after = table_counts(upgraded.name)
    before = upgraded.tables_before
    gone = sorted(set(before) - set(after))
    assert not gone, f"migrate dropped or renamed {gone}"
    changed = {table: (before[table], after[table]) for table in before if table != "django_migrations"}
    changed = {table: counts for table, counts in changed.items() if counts[0] != counts[1]}
    # The permissions and content types of the new models are added; no row of an old table goes.
    added_only = {"auth_permission", "django_content_type", "auth_group_permissions"}
    assert {table for table in changed if table not in added_only} == set(), changed
    assert all(new > old for old, new in changed.values()), changed
    models = set(json.loads(upgraded.manage("shell", "--no-imports", "-c", MODEL_TABLES).stdout))
    orphans = sorted(set(before) - models - NOT_MODELS)
    assert not orphans, f"tables of the old database that no model uses any more (its rows left behind): {orphans}"


def test_the_old_event_log_still_verifies(upgraded: Upgraded) -> None:
    # Its one pending event is old: unsealed for now, it is not reported as such here.
    a_decade = str(10 * 365 * 24 * 60)
    report = upgraded.verify("--unsealed-grace-minutes", a_decade, "--expect", upgraded.checkpoint_before)
    assert report["ok"], report["problems"]
    assert report["events"] == upgraded.tables_before["outbox_event"]
    assert report["checkpoint"] == upgraded.checkpoint_before


def test_the_old_pending_event_and_new_saves_are_relayed_consumed_and_sealed(upgraded: Upgraded) -> None:
    """Last in the module: it writes to the database that the tests above read as migrate left it."""
    name = upgraded.name
    (stock_before,) = query(name, "SELECT stock FROM core_product WHERE sku = 'KB-001'")[0]
    upgraded.manage("shell", "--no-imports", "-c", NEW_SAVES)
    relayed = upgraded.manage("outbox_relay", "--once", "--name", "upgrade-test")
    assert "Relayed" in relayed.stdout

    assert query(name, "SELECT count(*) FROM outbox_pending") == [(0,)]
    assert query(name, "SELECT consumer, status FROM outbox_delivery WHERE status <> 'done'") == []
    # Every event is sealed; from the pending one on, by the outbox's own consumer, and audited.
    assert (
        query(name, "SELECT id FROM outbox_event e WHERE NOT EXISTS (SELECT FROM outbox_seal WHERE event_id = e.id)")
        == []
    )
    for consumer in ("outbox_seal", "audit_log"):
        missing = query(
            name,
            "SELECT id FROM outbox_event e WHERE id >= %s AND NOT EXISTS (SELECT FROM outbox_delivery "
            "WHERE event_id = e.id AND consumer = %s AND status = 'done')",
            [upgraded.pending_before, consumer],
        )
        assert missing == [], f"events without a done {consumer} delivery: {missing}"
    # The consumers carry on from the old state: stock, notices, the example app's ledger and dedupe record.
    assert query(name, "SELECT stock FROM core_product WHERE sku = 'KB-001'") == [(stock_before + 10 - 2,)]
    assert query(name, "SELECT count(*) FROM email_notice") == [(upgraded.tables_before["email_notice"] + 1,)]
    assert query(name, "SELECT invoice, amount FROM ledger_ledgerentry") == [("INV-1", 1200)]
    # The e-mail notices' dedupe records: the old ones, moved by consumers 0006, and the new one.
    assert query(name, "SELECT consumer, status, count(*) FROM outbox_dedupe GROUP BY 1, 2 ORDER BY 1") == [
        ("email", "sent", upgraded.tables_before["email_notice"] + 1),
        ("invoice_mail", "sent", 1),
    ]
    unmatched = query(
        name,
        "SELECT n.id FROM email_notice n WHERE NOT EXISTS (SELECT FROM outbox_dedupe d WHERE d.consumer = 'email' "
        "AND d.key = 'order:' || n.order_id || ':' || n.kind AND d.token = n.token AND d.status = 'sent')",
    )
    assert unmatched == [], f"notices without their dedupe record: {unmatched}"

    # The whole log, old and new, verifies; a new checkpoint follows the old one, which still holds.
    token = upgraded.manage("shell", "--no-imports", "-c", CHECKPOINT).stdout.strip()
    assert token != upgraded.checkpoint_before
    report = upgraded.verify("--expect", upgraded.checkpoint_before)
    assert report["ok"], report["problems"]
    assert report["checkpoint"] == token
    (events,) = query(name, "SELECT count(*) FROM outbox_event")[0]
    assert report["events"] == events > upgraded.tables_before["outbox_event"]
    previous = query(name, "SELECT previous FROM outbox_checkpoint WHERE id = %s", [int(token.split(":")[0])])
    assert previous == [(upgraded.checkpoint_before.split(":")[3],)]
