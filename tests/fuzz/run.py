"""Run one fuzz target under atheris (coverage-guided, libFuzzer).

From the repository's root::

    python -m tests.fuzz.run TARGET [libFuzzer options] [CORPUS_DIR ...]

for example ``python -m tests.fuzz.run register_line -max_total_time=600
/tmp/new tests/fuzz/corpus/register_line`` (new inputs go to the first
directory). ``python -m tests.fuzz.run --list`` names the targets. binfmt and
pyelftools are instrumented for coverage; an input that breaks the contract
(:mod:`tests.fuzz.targets`) is written as ``crash-…`` and the run exits 1.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import atheris  # only here: the package is optional outside CI

    with atheris.instrument_imports(include=["binfmt", "elftools"]):
        from tests.fuzz.targets import TARGETS

    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"usage: python -m tests.fuzz.run {{{','.join(TARGETS)}}} [libFuzzer args]")
        return 0 if argv[1:2] == ["--list"] else 2
    target = TARGETS[argv[1]]

    def one_input(data: bytes) -> None:
        target(data)  # what it returns (accepted or not) is for the statistics only

    atheris.Setup([argv[0], *argv[2:]], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
