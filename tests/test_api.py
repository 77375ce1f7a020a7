"""The public API: what `import binfmt` gives, and what it costs."""

from __future__ import annotations

import subprocess
import sys

import binfmt


def test_all_is_sorted_and_resolves() -> None:
    """__all__ is sorted (constants first, as ruff sorts it) and every name exists."""
    names = list(binfmt.__all__)
    assert names == sorted(
        names, key=lambda n: (not n.isupper(), n.swapcase() if n.isupper() else n)
    )
    for name in names:
        assert getattr(binfmt, name) is not None


def test_import_does_no_heavy_work() -> None:
    """`import binfmt` loads neither pyelftools nor the ELF reader, the CLI or argparse."""
    code = (
        "import sys, binfmt\n"
        "heavy = [m for m in ('elftools', 'binfmt.elf', 'binfmt.prediction', 'binfmt.cli',"
        " 'argparse') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_predict_is_the_function_and_loads_lazily() -> None:
    """binfmt.predict is the prediction function; Verdict and Finding come with it."""
    verdict = binfmt.predict("/bin/sh", state=binfmt.State("/x", False), host=binfmt.Host.detect())
    assert isinstance(verdict, binfmt.Verdict)
    assert verdict.handler in ("native", "script")
    assert binfmt.Finding("c", "info", "m").to_dict()["code"] == "c"
