"""The pytest plugin works in a test suite outside this project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from binfmt.testing import require_or_skip

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "test_installer.py"


def _installed_plugin() -> bool:
    found: Any = entry_points()
    # Python 3.9 returns a dict of groups; 3.10+ an EntryPoints with select().
    group = (
        found.select(group="pytest11") if hasattr(found, "select") else found.get("pytest11", [])
    )
    return any(ep.value == "binfmt.testing" for ep in group)


def test_plugin_is_registered_as_an_entry_point() -> None:
    """Installing binfmt registers binfmt.testing with pytest (pytest11 entry point)."""
    if not _installed_plugin():
        require_or_skip("binfmt is not installed (pip install -e .), so no entry point exists")
    assert _installed_plugin()


def test_fixtures_work_in_an_outside_suite(tmp_path: Path) -> None:
    """The documented example suite passes when run on its own, away from this repository."""
    suite = tmp_path / "elsewhere"
    suite.mkdir()
    shutil.copy(EXAMPLE, suite / "test_installer.py")
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_installer.py"]
    # The package must be importable there; the plugin then loads through its entry
    # point when binfmt is installed, else it is named on the command line.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    probe = (
        "from importlib.metadata import entry_points as e; f = e(); "
        "g = f.select(group='pytest11') if hasattr(f, 'select') else f.get('pytest11', []); "
        "print(any(x.value == 'binfmt.testing' for x in g))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if found != "True":
        argv[3:3] = ["-p", "binfmt.testing"]
    proc = subprocess.run(argv, cwd=suite, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout
