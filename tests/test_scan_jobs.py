"""scan in processes (issue 15): the verdicts and the report are those of one job.

A tree with more directories than the processes take shards of (so the work
is really shared out, files of the first levels included), with failures
beyond ``max_listed`` (so which are listed does not depend on who found
them), unreadable directories and every kind of file; and the Debian roots.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from binfmt import Host, State, qemu
from binfmt.scan import FileResult, default_jobs, scan

from .test_archive import state_for

X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
KINDS = [
    qemu.get("x86_64").header(2),
    qemu.get("aarch64").header(2),
    qemu.get("riscv64").header(2),
    b"#!/bin/prog0\n",
    b"#!/missing/sh\n",
    b"data",
]


def big_tree(root: Path) -> None:
    for i in range(6):
        (root / f"prog{i}").write_bytes(KINDS[i % len(KINDS)])
        (root / f"prog{i}").chmod(0o755)
    (root / "bin").mkdir()
    (root / "bin" / "prog0").write_bytes(KINDS[0])
    (root / "bin" / "prog0").chmod(0o755)
    for a in range(12):
        for b in range(8):
            d = root / f"d{a}" / f"e{b}"
            d.mkdir(parents=True)
            for c in range(5):
                f = d / f"f{c}"
                f.write_bytes(KINDS[(a + b + c) % len(KINDS)])
                f.chmod(0o755 if c % 4 else 0o644)
            (d / "link").symlink_to("f0")
    os.mkfifo(root / "d0" / "fifo")
    locked = root / "d1" / "locked"
    locked.mkdir()
    locked.chmod(0)


def run(root: Path, jobs: int, state: State, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    found: dict[str, FileResult] = {}
    report = scan(str(root), state=state, host=X86, jobs=jobs, on_result=_keep(found), **kw)
    doc = report.to_dict()
    doc.pop("seconds")
    return doc, {p: (r, r.verdict) for p, r in found.items()}


def _keep(found: dict[str, FileResult]) -> Any:
    return lambda r: found.__setitem__(r.path, r)


@pytest.mark.parametrize("all_files", [False, True])
def test_jobs_give_the_verdicts_of_one_job(tmp_path: Path, all_files: bool) -> None:
    big_tree(tmp_path)
    state = state_for()
    one = run(tmp_path, 1, state, all_files=all_files, max_listed=7)
    for jobs in (2, 3, 8):
        assert run(tmp_path, jobs, state, all_files=all_files, max_listed=7) == one, jobs
    doc, results = one
    assert doc["failures_total"] > 7 and len(doc["failures"]) == 7
    assert [f["path"] for f in doc["failures"]] == sorted(f["path"] for f in doc["failures"])
    assert doc["examined"] == len(results) > 250
    if os.geteuid() != 0:
        assert doc["skipped"]["unreadable"] >= 1


@pytest.mark.qemu
def test_jobs_on_the_debian_roots() -> None:
    from .debian import CACHE, debian_root

    debian_root("arm64")  # skips unless fetched
    state = state_for()
    assert run(CACHE, 2, state) == run(CACHE, 1, state)


def test_default_jobs_is_the_cpus_this_process_may_use() -> None:
    assert default_jobs() == len(os.sched_getaffinity(0))
