"""Make tests/migrations/<commit>.sql.gz: a database as an earlier version of the project left it.

    .venv/bin/python scripts/migration_fixture.py [COMMIT]      # default bb751a7

It exports COMMIT's tree (`git archive`) to a temporary directory and, with that version's own
code (run by this virtualenv's Python), migrates a fresh scratch PostgreSQL database and fills it
as its processes would: demo products with their receipts, customers, orders placed, edited and
cancelled, a corrected receipt, a staff user; its relay (`outbox_relay --once` on the in-process
broker, which runs the consumers in the relay) turns them into deliveries, stock movements, e-mail
notices (Django's in-memory backend), audit lines and seals; a replay of a done delivery, a signed
checkpoint, one settled event purged through `outbox_purge_events()`, and one event left pending,
for the new relay to publish. Then `pg_dump --no-owner --no-privileges` writes it, gzipped, with
a header naming the commit and the keys it was sealed with, and the scratch database is dropped.

tests/test_migrations_upgrade.py restores the file and upgrades it with the current code: git
history is needed only here, never by the test. Run it again (and commit the file) only to move
the fixture to another starting version, after adjusting FILL, REPLAY and SETTLE below to the
modules that version has.

The server is DATABASE_URL's (default postgres://postgres@127.0.0.1:5432/test); the scratch
database is named after its database, `<name>_fixture`, and dropped at the end, also on failure.
"""

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COMMIT = "bb751a7"
TIMEOUT = 300  # seconds, for any one step

# The fixture's keys: public, used for nothing but this fixture. The test reads them back from the
# file's header, so that the events' tags, seals and checkpoints verify with the key they were made with.
SEAL_KEY = "hex:" + "f1" * 32
SECRET_KEY = "migration-fixture-secret-key-public-used-for-nothing-else"  # noqa: S105 - public, as said

# Run in the old version's `manage.py shell`: only names that version has.
FILL = """
from decimal import Decimal

from django.contrib.auth import get_user_model

from core import services
from core.demo import demo_data_create
from core.models import Customer, Order, StockReceipt
from outbox.context import event_context

get_user_model().objects.create_superuser("admin", "admin@example.com", "fixture-password")
demo_data_create()
grace = Customer.objects.get(email="grace@example.com")
with event_context(actor="user:admin", source="admin"):
    draft = services.order_create(customer=grace, lines=[services.LineRequest(sku="MN-003", quantity=1)])
    services.order_line_add(order=draft, sku="CB-004", quantity=3)
    services.order_set_status(order=draft, status=Order.Status.PLACED)
    services.order_set_status(order=draft, status=Order.Status.CANCELLED)
    receipt = StockReceipt.objects.get(product__sku="HS-005")
    services.stock_receipt_correct(receipt=receipt, quantity=24, note="Opening stock, one damaged")
    ada = Customer.objects.get(email="ada@example.com")
    services.order_set_status(order=Order.objects.get(customer=ada), status=Order.Status.FULFILLED)
    services.order_create(customer=ada, lines=[services.LineRequest(sku="HS-005", quantity=1)], place=True)
    services.customer_create(name="Alan Turing", email="Alan.Turing@example.com")
"""

REPLAY = """
from outbox.models import Delivery
from outbox.replay import replay

done = Delivery.objects.filter(consumer="email", status="done").order_by("event_id")[:1]
summary = replay(done, requested_by="user:admin", reason="customer asked for the confirmation again",
                 source="fixture", force=True)
assert summary.sent == 1, summary
"""

SETTLE = """
from django.db import connection

from core import services
from outbox.checkpoints import checkpoint_take
from outbox.models import Delivery, Event, Pending, Seal

assert not Pending.objects.exists(), "the relay left events pending"
assert not Delivery.objects.exclude(status="done").exists(), "a delivery is not done"
assert Seal.objects.count() == Event.objects.count(), "an event is not sealed"
assert checkpoint_take() is not None
# The retention purge's own function, on the oldest event (a settled, sealed product.created).
first = Event.objects.order_by("id").first()
with connection.cursor() as cursor:
    cursor.execute("SELECT outbox_purge_events(%s::bigint[])", [[first.id]])
    assert cursor.fetchone()[0] == 1
# Written after the processes stopped relaying: still pending when the new code starts.
services.customer_create(name="Edsger Dijkstra", email="edsger@example.com")
"""


def database_url() -> str:
    return os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")


def server(url: str) -> dict[str, str]:
    """libpq's connection parameters of DATABASE_URL, less the database."""
    parts = urlsplit(url)
    params = {"host": parts.hostname or "127.0.0.1", "port": str(parts.port or 5432)}
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    return params


def scratch_url(url: str, name: str) -> str:
    return urlsplit(url)._replace(path=f"/{name}").geturl()


def admin(params: dict[str, str], statement: sql.Composed) -> None:
    with psycopg.connect(psycopg.conninfo.make_conninfo(dbname="postgres", **params), autocommit=True) as conn:
        conn.execute(statement)


def run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command to its end; stop the script with its output if it fails."""
    done = subprocess.run(  # noqa: S603 - our own commands
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if done.returncode != 0:
        sys.exit(f"{' '.join(args[:4])}... failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def export(commit: str, into: Path) -> None:
    """Write the commit's tree into the directory (git archive | tar -x)."""
    archive = into / "tree.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", commit], cwd=REPO, stdout=out, check=True, timeout=TIMEOUT)  # noqa: S603, S607
    subprocess.run(["tar", "-xf", str(archive), "-C", str(into)], check=True, timeout=TIMEOUT)  # noqa: S603, S607
    archive.unlink()


def fill(tree: Path, url: str) -> None:
    """Migrate and fill the scratch database with the old version's code, as its processes would."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings.test",
        "DATABASE_URL": url,
        # The in-process broker: the relay runs the consumers itself, and no Redis is involved.
        "REDIS_URL": "",
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        "SECRET_KEY": SECRET_KEY,
        "OUTBOX_SEAL_KEY": SEAL_KEY,
        "SALES_SUMMARY_AT": "",
    }
    env.pop("PYTHONPATH", None)  # the old tree's modules, and no others of the same names
    manage = [sys.executable, "manage.py"]
    run([*manage, "migrate", "--noinput", "-v0"], cwd=tree, env=env)
    run([*manage, "shell", "-c", FILL], cwd=tree, env=env)
    run([*manage, "outbox_relay", "--once", "--name", "fixture"], cwd=tree, env=env)
    run([*manage, "shell", "-c", REPLAY], cwd=tree, env=env)
    # The replayed delivery is due at once for the relay's sweeper, which sends it again.
    run([*manage, "outbox_relay", "--once", "--name", "fixture"], cwd=tree, env=env)
    run([*manage, "shell", "-c", SETTLE], cwd=tree, env=env)


def dump(params: dict[str, str], name: str) -> str:
    """The database as plain SQL, restorable on any cluster: no owners, no grants, no roles."""
    env = {**os.environ, "PGHOST": params["host"], "PGPORT": params["port"], "PGDATABASE": name}
    env.update({"PGUSER": params["user"]} if "user" in params else {})
    env.update({"PGPASSWORD": params["password"]} if "password" in params else {})
    text = run(["pg_dump", "--no-owner", "--no-privileges", "--no-comments"], cwd=REPO, env=env)
    # pg_dump 15.14 and later fence the script with \restrict; older psql clients do not know it.
    fences = ("\\restrict", "\\unrestrict")
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(fences))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "commit", nargs="?", default=DEFAULT_COMMIT, help=f"The version to start from ({DEFAULT_COMMIT})"
    )
    parser.add_argument("--output", type=Path, help="Where to write it (default tests/migrations/<commit>.sql.gz).")
    options = parser.parse_args()
    commit = run(["git", "rev-parse", "--short", f"{options.commit}^{{commit}}"], cwd=REPO).strip()
    output = options.output or REPO / "tests" / "migrations" / f"{commit}.sql.gz"
    url = database_url()
    params = server(url)
    name = f"{urlsplit(url).path.lstrip('/') or 'test'}_fixture"
    identifier = sql.Identifier(name)
    admin(params, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
    admin(params, sql.SQL("CREATE DATABASE {}").format(identifier))
    try:
        with tempfile.TemporaryDirectory(prefix=f"migration-fixture-{commit}-") as tmp:
            tree = Path(tmp)
            export(commit, tree)
            fill(tree, scratch_url(url, name))
        text = dump(params, name)
    finally:
        admin(params, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
    header = (
        f"-- A database made by commit {commit} of this project, filled through its own code:\n"
        f"-- scripts/migration_fixture.py {commit} (regenerate with it; docs/operations.md).\n"
        f"-- OUTBOX_SEAL_KEY={SEAL_KEY}\n"
        f"-- SECRET_KEY={SECRET_KEY}\n"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same dump gives the same bytes.
    with output.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
        out.write((header + text).encode())
    shown = output.relative_to(REPO) if output.is_relative_to(REPO) else output
    print(f"Wrote {shown} ({output.stat().st_size} bytes).")


if __name__ == "__main__":
    main()
