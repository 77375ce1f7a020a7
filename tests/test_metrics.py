"""``binfmt metrics``: Prometheus text exposition, parsed by ``prometheus_client``'s own parser.

Every family is checked for its type and samples on a fake node
(``tests/data/ps``), label values with hostile text must survive the parser,
names must follow Prometheus's conventions, and the file must be written
atomically: a reader polling it while it is rewritten never sees a partial file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from binfmt import Host, qemu
from binfmt.emulated import processes
from binfmt.metrics import collect, exposition, write
from binfmt.procfs import BinfmtMisc, State
from binfmt.testing import make_fake_procfs
from binfmt.verify import TargetResult, VerifyReport

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "tests" / "data" / "ps" / "containerd-systemd-v2"

FAMILIES = {
    "binfmt_host_info",
    "binfmt_misc_mounted",
    "binfmt_misc_enabled",
    "binfmt_entry_enabled",
    "binfmt_entry_interpreter_present",
    "binfmt_platform_supported",
    "binfmt_verify_success",
    "binfmt_emulated_processes",
    "binfmt_emulated_cpu_seconds",
    "binfmt_emulated_resident_memory_bytes",
    "binfmt_stale_interpreter_processes",
    "binfmt_processes_unreadable",
}


def _parse(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(family: Any) -> list[tuple[dict[str, str], float]]:
    return [(dict(s.labels), s.value) for s in family.samples]


def _node_text() -> str:
    state = BinfmtMisc(str(NODE / "binfmt_misc")).state()
    report = processes(state, proc=str(NODE / "proc"), host_root=str(NODE / "host"))
    verify = VerifyReport(
        (
            TargetResult("x86_64", ("linux/amd64",), "native"),
            TargetResult("aarch64", ("linux/arm64",), "works", entry="qemu-aarch64"),
            TargetResult("riscv64", ("linux/riscv64",), "entry-missing"),
        ),
        enabled=True,
    )
    families = collect(
        state, Host.detect(), report=report, verify=verify, host_root=str(NODE / "host")
    )
    return exposition(families)


def test_every_family_parses_with_its_type_and_samples() -> None:
    parsed = _parse(_node_text())
    assert set(parsed) == FAMILIES
    for family in parsed.values():
        assert family.type == "gauge", family.name
        assert family.documentation, family.name
    host = Host.detect()
    assert _samples(parsed["binfmt_host_info"]) == [
        ({"machine": host.machine, "kernel": host.release}, 1.0)
    ]
    assert _samples(parsed["binfmt_misc_mounted"]) == [({}, 1.0)]
    assert _samples(parsed["binfmt_misc_enabled"]) == [({}, 1.0)]
    entries = {s[0]["entry"]: s for s in _samples(parsed["binfmt_entry_enabled"])}
    assert set(entries) == {"qemu-aarch64", "qemu-arm", "qemu-s390x"}
    assert entries["qemu-arm"] == (
        {
            "entry": "qemu-arm",
            "target": "arm",
            "platform": "linux/arm/v7",
            "flags": "P",
            "interpreter": "/usr/libexec/qemu-binfmt/arm-binfmt-P",
        },
        1.0,
    )
    present = {s[0]["entry"]: s[1] for s in _samples(parsed["binfmt_entry_interpreter_present"])}
    assert present == {"qemu-aarch64": 1.0, "qemu-arm": 1.0, "qemu-s390x": 1.0}
    modes = {
        (s[0]["platform"], s[0]["mode"]) for s in _samples(parsed["binfmt_platform_supported"])
    }
    assert ("linux/amd64", "native") in modes
    assert {p for p, m in modes if m == "emulated"} >= {"linux/arm64", "linux/s390x"}
    verify = {
        s[0]["target"]: (s[0]["status"], s[1]) for s in _samples(parsed["binfmt_verify_success"])
    }
    assert verify == {
        "x86_64": ("native", 1.0),
        "aarch64": ("works", 1.0),
        "riscv64": ("entry-missing", 0.0),
    }
    count = {
        (s[0]["platform"], s[0]["pod"]): s[1] for s in _samples(parsed["binfmt_emulated_processes"])
    }
    assert count == {
        ("linux/arm64", "web-7d9f8b6c4-x2kqp"): 1.0,
        ("linux/arm64", "nightly-report-29471520-5bq8d"): 1.0,
        ("linux/arm/v7", "legacy-api-0"): 1.0,
        ("linux/s390x", ""): 1.0,
    }
    cpu = {s[0]["pod"]: s[1] for s in _samples(parsed["binfmt_emulated_cpu_seconds"])}
    assert cpu["web-7d9f8b6c4-x2kqp"] == pytest.approx(1855.55)
    rss = {s[0]["pod"]: s[1] for s in _samples(parsed["binfmt_emulated_resident_memory_bytes"])}
    assert rss["legacy-api-0"] == 9216 * 1024
    assert _samples(parsed["binfmt_stale_interpreter_processes"]) == [
        ({"entry": "qemu-s390x", "interpreter": "/usr/bin/qemu-s390x-static"}, 1.0)
    ]
    assert _samples(parsed["binfmt_processes_unreadable"]) == [({}, 0.0)]


def test_names_follow_prometheus_conventions() -> None:
    """binfmt_ prefix, snake case, base units, _total only on counters (there are none)."""
    text = _node_text()
    for name in (m.group(1) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M)):
        assert re.fullmatch(r"binfmt_[a-z][a-z0-9_]*", name), name
        assert not name.endswith("_total"), name
        assert not re.search(r"_(milliseconds|kilobytes|megabytes|percent)\b", name), name
    for label in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', text):
        assert re.fullmatch(r"[a-z][a-z0-9_]*", label), label


def test_unmounted_node_and_no_processes(tmp_path: Path) -> None:
    state = State(path=str(tmp_path), mounted=False)
    parsed = _parse(exposition(collect(state, Host.detect())))
    assert _samples(parsed["binfmt_misc_mounted"]) == [({}, 0.0)]
    assert "binfmt_emulated_processes" not in parsed  # no report given
    assert "binfmt_verify_success" not in parsed


HOSTILE = 'x"y\\z\nfake_metric 1\x1b[31m\u202e\udcff'


def test_hostile_label_values_survive_the_parser(tmp_path: Path) -> None:
    """Quotes, backslashes and newlines are escaped; control characters shown as text."""
    interp = tmp_path / "qemu"
    interp.write_bytes(b"")
    misc = make_fake_procfs(
        tmp_path / "procfs",
        [qemu.get("aarch64").to_entry(str(interp) + HOSTILE.replace("\n", ""), "", name="e")],
    )
    text = exposition(collect(misc.state(), Host.detect()))
    assert all(ch == "\n" or ch.isprintable() for ch in text)
    parsed = _parse(text)
    assert "fake_metric" not in parsed
    ((labels, _),) = _samples(parsed["binfmt_entry_enabled"])
    assert labels["interpreter"].startswith(str(interp) + 'x"y\\z')
    assert "\\x1b[31m" in labels["interpreter"] and labels["interpreter"].endswith("\\xff")


def test_write_is_atomic(tmp_path: Path) -> None:
    """A reader polling the file while it is rewritten only ever sees whole documents."""
    path = tmp_path / "binfmt.prom"
    versions = [
        "".join(f'binfmt_test{{n="{i}"}} {j}\n' for j in range(size))
        for i, size in enumerate((3, 3000, 10, 30000, 1))
    ]
    write(str(path), versions[0])
    seen: set[int] = set()
    bad: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = path.read_text()
            if data in versions:
                seen.add(versions.index(data))
            else:
                bad.append(data[:80])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for k in range(200):
            write(str(path), versions[k % len(versions)])
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert len(seen) > 1
    assert [n for n in os.listdir(tmp_path) if n != "binfmt.prom"] == []  # no temporary left


def test_cli_writes_the_file_and_prints_json(tmp_path: Path) -> None:
    out = tmp_path / "binfmt.prom"
    args = ["--procfs", str(NODE / "binfmt_misc"), "--proc", str(NODE / "proc")]
    args += ["--host-root", str(NODE / "host")]
    done = subprocess.run(
        [sys.executable, "-m", "binfmt", "metrics", *args, "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert set(_parse(out.read_text())) == FAMILIES - {"binfmt_verify_success"}
    done = subprocess.run(
        [sys.executable, "-m", "binfmt", "metrics", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    document = json.loads(done.stdout)
    names = [f["name"] for f in document["families"]]
    assert set(names) == FAMILIES - {"binfmt_verify_success"}
