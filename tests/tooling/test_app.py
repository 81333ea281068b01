"""The tooling app is for development only: installed by settings.local and settings.test, imported
by no other app, and loadable where aiosmtpd (a development requirement) is not installed; and the
import rules between the apps (pyproject.toml's import-linter contracts) hold and catch a breach."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: import-linter's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
# Variables that select a deployment: removed so that settings.local falls back to the embedded default.
SELECTING = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "SQLITE_PATH")

# aiosmtpd blocked before Django starts: `import aiosmtpd` raises ImportError, as in a venv of
# requirements.txt alone.
WITHOUT_AIOSMTPD = """
import importlib, pkgutil, sys
sys.modules["aiosmtpd"] = None
import django
django.setup()
from django.conf import settings
from django.core.management import call_command, get_commands
import tooling
for module in pkgutil.walk_packages(tooling.__path__, "tooling."):
    importlib.import_module(module.name)
call_command("check")
print("INSTALLED=" + str("tooling" in settings.INSTALLED_APPS))
print("COMMANDS=" + ",".join(sorted(name for name, app in get_commands().items() if app == "tooling")))
"""


def test_the_tools_load_and_the_check_passes_without_aiosmtpd(tmp_path: Path) -> None:
    """`make run` installs requirements.txt only, and settings.local installs tooling: every tooling
    module imports, and `check` passes, with aiosmtpd absent."""
    env = {k: v for k, v in os.environ.items() if k not in SELECTING}
    env |= {"DJANGO_SETTINGS_MODULE": "settings.local", "SQLITE_PATH": str(tmp_path / "db.sqlite3")}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_AIOSMTPD],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert report["INSTALLED"] == "True"
    assert report["COMMANDS"] == "outbox_bench,outbox_chaos,simulate"


# A module of an app, an import it must not make, and the contract of pyproject.toml that says so.
BREACHES = [
    ("core/intruder.py", "import consumers.inventory", "core is the business"),
    ("core/intruder.py", "from tooling.processes import wait_until", "core is the business"),
    ("settings/intruder.py", "import consumers.email", "Nothing imports the consumers"),
    ("consumers/intruder.py", "from tooling import processes", "Nothing imports the tooling"),
    ("outbox/intruder.py", "from core.models import Order", "The outbox is generic"),
    ("core/intruder.py", "from outbox.relay.loop import Relay", "Apps use the outbox through its public API"),
    ("consumers/intruder.py", "from outbox.consume.run import consume", "Apps use the outbox through its public API"),
    ("tests/ledger/consumers.py", "from outbox.models import Event", "Apps use the outbox through its public API"),
]


# The outbox's public API: what the apps may import (docs/extending.md).
PUBLIC = {"outbox", "outbox.admin", "outbox.testing", "outbox.urls"}


def test_every_module_of_the_outbox_is_public_or_forbidden_to_the_apps() -> None:
    """A new module of the outbox is inside it until said otherwise: the public-API contract must
    name it, or the public list must, so that no module becomes an API by being forgotten."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in config if c["name"].startswith("Apps use the outbox through its public API")]
    forbidden = set(contract["forbidden_modules"])
    modules = {"outbox"} | {
        "outbox." + (p.stem if p.is_file() else p.name)
        for p in (ROOT / "outbox").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    modules |= {f"outbox.admin.{p.stem}" for p in (ROOT / "outbox" / "admin").glob("*.py") if p.stem != "__init__"}
    unaccounted = sorted(m for m in modules if m not in PUBLIC and m not in forbidden)
    assert unaccounted == [], f"modules of the outbox neither public nor forbidden to the apps: {unaccounted}"
    assert not PUBLIC & forbidden


def test_the_import_rules_hold() -> None:
    """`make lint` runs the same: every contract is kept by the code as it is."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "statement", "contract"), BREACHES)
def test_an_import_that_breaks_a_rule_fails_lint(tmp_path: Path, module: str, statement: str, contract: str) -> None:
    """A copy of the project with one forbidden import added: import-linter refuses it, naming the contract."""
    for top in ("core", "consumers", "outbox", "tooling", "settings", "tests"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__", "browser"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text((target.read_text() if target.exists() else "") + statement + "\n")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    report = " ".join(done.stdout.split())  # long contract names wrap
    # The named contract's line ends BROKEN (not KEPT).
    assert re.search(re.escape(contract) + r"(?:(?!KEPT|BROKEN).)* BROKEN", report), done.stdout
    assert module.removesuffix(".py").replace("/", ".") in report
