"""The tooling app is for development only: installed by settings.local and settings.test, imported
by no other app, and loadable where aiosmtpd (a development requirement) is not installed."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Variables that select a deployment: removed so that settings.local falls back to the embedded default.
SELECTING = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "SQLITE_PATH")
# The one import of the consumers outside them, until the consumer API lands (its function says so).
CONSUMERS_IMPORTS_ALLOWED = {("tooling/bench/pipeline.py", "consumers.email")}

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


def _imports(path: Path) -> set[str]:
    """The modules that the file imports, at its top level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _importers(prefix: str, *, outside: tuple[str, ...]) -> set[tuple[str, str]]:
    """(file, module) for each import of `prefix` (or a module below it) in the apps outside `outside`."""
    found = set()
    for path in ROOT.glob("*/**/*.py"):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith((".", "tests/", *(f"{app}/" for app in outside))):
            continue
        found |= {(relative, m) for m in _imports(path) if m == prefix or m.startswith(prefix + ".")}
    return found


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


def test_no_other_app_imports_tooling() -> None:
    assert _importers("tooling", outside=("tooling",)) == set()


def test_nothing_imports_the_consumers() -> None:
    """The consumers are loaded by discovery; no other code imports them (tooling reads their
    records through the app registry)."""
    assert _importers("consumers", outside=("consumers",)) == CONSUMERS_IMPORTS_ALLOWED
