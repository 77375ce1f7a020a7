"""The model against Debian's 5.10, 6.1 and 6.12 kernels, booted under QEMU (the kernel matrix).

``tests/vm/matrix.py`` boots each kernel with a busybox initramfs and brings
back the kernel's answers: every register line of the corpus and of a set
generated from a seed, random write sequences, and the exec-time facts.
Here they are compared with :meth:`Entry.parse` / :meth:`Entry.to_status`
under :meth:`KernelRules.for_release` for that exact kernel (release and
``uname -v``), with the fake kernel (:func:`make_fake_procfs` in that
kernel's mode), and with the :class:`KernelRules` fields.

Two layers:

- the recorded captures in ``tests/data/kernels/<release>/capture.json``
  (``python -m tests.vm.matrix --kernels all --record``), checked on every
  machine;
- ``kernel_matrix`` tests boot the kernels of :data:`tests.vm.kernels.MATRIX`
  now (about 5-10 s each under TCG), check the same, and compare the
  answers with the recording of the same release. They need QEMU and gcc
  (``tests/vm/setup.sh``) and the Debian archive; elsewhere they skip,
  and with ``BINFMT_REQUIRE_ALL=1`` they fail instead.
  ``BINFMT_MATRIX_SEED`` and ``BINFMT_MATRIX_LINES`` fix the generated set.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import pytest

from binfmt.entry import Entry, Flags
from binfmt.errors import InvalidEntry, KernelError
from binfmt.kernel import KernelRules
from binfmt.testing import make_fake_procfs, require_or_skip

from .vm import kernels
from .vm import matrix as vm_matrix

FIXTURES = Path(__file__).parent / "data" / "kernels"
Capture = dict[str, Any]


def _captures() -> list[Capture]:
    return [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*/capture.json"))]


RECORDED = _captures()


def release_of(capture: Capture) -> str:
    return str(capture["kernel"]["release"])


def rules_of(capture: Capture) -> KernelRules:
    k = capture["kernel"]
    return KernelRules.for_release(k["release"], k["version"])


# -- the model of one register write in the guest ---------------------------------


def guest_open_exec(path: str, paths: dict[str, str]) -> int:
    """open_exec() in the guest, walked component by component over its recorded paths."""
    if not path:
        return errno.ENOENT
    current: list[str] = []  # the helper's cwd is /
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part in ("", "."):
            continue
        if part == "..":
            current = current[:-1]
            continue
        kind = paths.get("/" + "/".join([*current, part]))
        if kind is None:
            return errno.ENOENT
        if kind != "d" and i + 1 < len(parts):
            return errno.ENOTDIR  # a file in the middle, or followed by a slash
        current.append(part)
    kind = paths.get("/" + "/".join(current), "d") if current else "d"
    return 0 if kind == "x" else errno.EACCES


def expected(line: bytes, rules: KernelRules, paths: dict[str, str]) -> tuple[str, object]:
    """("ok", entry file) or ("err", errno name): the library's prediction for the guest."""
    try:
        entry = Entry.parse(line, rules)
    except InvalidEntry as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.EEXIST) and rules.opens_interpreter_first:
            fixed = _fixed_interpreter(line, rules)
            if fixed is not None and guest_open_exec(fixed, paths):
                return "err", errno.errorcode[guest_open_exec(fixed, paths)]
        return "err", errno.errorcode[exc.errno]
    if Flags.FIX_BINARY in entry.flags:
        err = guest_open_exec(entry.interpreter, paths)
        if err:
            return "err", errno.errorcode[err]
    return "ok", entry.to_status().encode("utf-8", "surrogateescape")


def _fixed_interpreter(line: bytes, rules: KernelRules) -> Optional[str]:
    delim = line[:1]
    fields = line[1:].split(delim)
    if len(fields) < 7:
        return None
    name = b"n" if delim != b"n" else b"m"  # any valid name that is not the delimiter
    try:
        entry = Entry.parse(delim + name + delim + delim.join(fields[1:]), rules)
    except InvalidEntry:
        return None
    return entry.interpreter if Flags.FIX_BINARY in entry.flags else None


def _recorded(rec: dict[str, Any]) -> tuple[str, object]:
    if "errno" in rec:
        return "err", rec["errno"]
    if "status" in rec:
        return "ok", base64.b64decode(rec["status"])
    return "broken", rec.get("error")


def line_mismatches(capture: Capture, field: str) -> list[tuple[bytes, object, object]]:
    rules = rules_of(capture)
    paths = capture["guest_paths"]
    bad: list[tuple[bytes, object, object]] = []
    for rec in capture[field]:
        line = base64.b64decode(rec["line"])
        want = expected(line, rules, paths)
        if _recorded(rec) != want:
            bad.append((line[:80], _recorded(rec), want))
    return bad


# -- the fake kernel on the same write sequences -------------------------------------


def _fake_state(misc: Any) -> dict[str, Any]:
    state = misc.state()
    entries = [
        [
            base64.b64encode(e.name.encode("utf-8", "surrogateescape")).decode(),
            base64.b64encode(e.to_status().encode("utf-8", "surrogateescape")).decode(),
        ]
        for e in state.entries
    ]
    return {"enabled": state.enabled, "entries": entries}


def sequence_mismatches(capture: Capture, tmp: Path) -> list[str]:
    rules = rules_of(capture)
    bad = []
    for i, steps in enumerate(capture["sequences"]):
        misc = make_fake_procfs(tmp / f"seq{i}", kernel=rules)
        for j, step in enumerate(steps):
            arg = base64.b64decode(step["arg"])
            name = arg.decode("utf-8", "surrogateescape")
            try:
                if step["op"] == "register":
                    misc.register(arg)
                elif step["op"] == "status" and name == "-1":
                    misc.remove_all()
                elif step["op"] == "status":
                    misc.set_enabled(name == "1")
                else:
                    getattr(misc, step["op"])(name)
                got = "OK"
            except KernelError as exc:
                got = exc.errno_name
            kernel = {
                "errno": step["errno"],
                "enabled": step["enabled"],
                "entries": step["entries"],
            }
            fake = {"errno": got, **_fake_state(misc)}
            if fake != kernel:
                bad.append(
                    f"sequence {i} step {j} {step['op']} {arg[:60]!r}: kernel {kernel}, fake {fake}"
                )
                break
    return bad


# -- the exec-time facts -------------------------------------------------------------------


def _ran(fact: dict[str, Any]) -> bool:
    return fact["errno"] is None and fact["status"] == 0


def _value(fact: dict[str, Any], key: str) -> Optional[str]:
    for line in fact["output"]:
        k, _, v = line.partition(" ")
        if k == key:
            return str(v)
    return None


def measured_rules(capture: Capture) -> dict[str, object]:
    """The KernelRules fields the exec-time probes measured on this kernel."""
    f = capture["facts"]
    after = f["after-remount"]
    return {
        "preserve_argv0_auxv": _value(f["exec-p"], "at_flags") == "1",
        "open_binary_no_rewrite": f["exec-o-script"]["errno"] == "ENOEXEC",
        "max_rewrites": 5
        if _ran(f["exec-chain5"]) and f["exec-chain6"]["errno"] == "ELOOP"
        else None,
        "buffer_size": 256 if _ran(f["exec-buffer"]) and f["reg-buffer"] == "OK" else None,
        "opens_interpreter_first": {"ENOENT": True, "EEXIST": False}.get(f["reg-dup-missing"]),
        "releases_interpreter_on_remove": f["write-f-removed"] == "OK",
        "releases_interpreter_on_failed_register": f["write-f-failed"] == "OK",
        "umount_removes_entries": after.get("entries") == [],
        "umount_resets_enabled": after.get("enabled") is True,
        "userns_instances": f["userns-mount"] == "OK",
    }


def fact_mismatches(capture: Capture) -> list[str]:
    rules = rules_of(capture)
    bad = [
        f"{field}: kernel {value!r}, KernelRules {getattr(rules, field)!r}"
        for field, value in measured_rules(capture).items()
        if getattr(rules, field) != value
    ]
    f = capture["facts"]
    # Facts the model takes as constant on every line measured.
    constant = {
        "P keeps argv[0] after the path": f["exec-p"]["output"][1:5]
        == ["arg /t/showargs", "arg /t/p/pflag", "arg MYNAME", "arg a1"],
        "no flag drops argv[0]": f["exec-none"]["output"][1:4]
        == ["arg /t/showargs", "arg /t/p/noflag", "arg a1"],
        "O passes AT_EXECFD": (_value(f["exec-o"], "at_execfd") or "-1") != "-1",
        "a #! interpreter without O works": _ran(f["exec-none-script"]),
        "F interpreter write-denied while registered": f["write-f"] == "ETXTBSY",
        "F with a taken name and a good interpreter: EEXIST": f["reg-dup-f"] == "EEXIST",
        "globally disabled: no match (ENOEXEC)": f["exec-disabled"]["errno"] == "ENOEXEC",
        "registered while disabled reads enabled": str(f["entry-while-disabled"]).startswith(
            "enabled\n"
        ),
        "-1 to status keeps the switch": f["status-after-clear"] == "disabled\n",
        "a user namespace uses its parent's instance until it mounts": _ran(
            f["userns-exec-before"]
        ),
    }
    if rules.userns_instances:
        constant["a mounted child instance shadows the parent's"] = (
            f["userns-exec-mounted"]["errno"] == "ENOEXEC"
        )
        constant["… even after umount"] = f["userns-exec-unmounted"]["errno"] == "ENOEXEC"
    bad += [f"{what}: not so on this kernel" for what, ok in constant.items() if not ok]
    return bad


def check(capture: Capture, tmp: Path) -> dict[str, list[Any]]:
    """Every comparison; an empty list per category means full agreement."""
    unknown = rules_of(capture).unknown()
    return {
        "unknown rules": [f"{u}: {rules_of(capture).why_unknown(u)}" for u in unknown],
        "corpus": line_mismatches(capture, "corpus"),
        "generated": line_mismatches(capture, "generated"),
        "sequences": sequence_mismatches(capture, tmp),
        "facts": fact_mismatches(capture),
    }


# -- recorded captures (every machine) ------------------------------------------------------


def test_captures_cover_the_matrix() -> None:
    """A capture is checked in for the kernel of every line CI boots."""
    lines = {c["kernel"]["line"] for c in RECORDED}
    assert {p.line for p in kernels.MATRIX} <= lines
    assert all(len(c["corpus"]) == len(vm_matrix.corpus_lines()) for c in RECORDED)


@pytest.mark.parametrize("capture", RECORDED, ids=release_of)
def test_recorded_kernel_agrees_with_model(capture: Capture, tmp_path: Path) -> None:
    """Parser, renderer, fake kernel and KernelRules agree with the recorded kernel's answers."""
    assert check(capture, tmp_path) == {
        "unknown rules": [],
        "corpus": [],
        "generated": [],
        "sequences": [],
        "facts": [],
    }


def test_recorded_answers_show_each_backport() -> None:
    """The recordings bracket each dated backport: a build without it and one with it."""
    by_line: dict[str, list[Capture]] = {}
    for c in RECORDED:
        by_line.setdefault(c["kernel"]["line"], []).append(c)
    six_one = {rules_of(c).version: measured_rules(c) for c in by_line["6.1"]}
    assert six_one[(6, 1, 176)]["releases_interpreter_on_remove"] is False
    assert six_one[(6, 1, 187)]["releases_interpreter_on_remove"] is True


# -- live: boot the kernels now -----------------------------------------------------------------


_live: dict[str, Capture] = {}


def _boot(package: kernels.KernelPackage) -> Capture:
    if package.name in _live:
        return _live[package.name]
    for tool, why in (
        ("qemu-system-x86_64", "QEMU"),
        ("gcc", "gcc (for the guest helper)"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg-deb"),
    ):
        if shutil.which(tool) is None:
            require_or_skip(f"kernel matrix needs {why}: run tests/vm/setup.sh as root")
    seed = int(os.environ.get("BINFMT_MATRIX_SEED") or random.SystemRandom().randrange(2**32))
    lines = int(os.environ.get("BINFMT_MATRIX_LINES", "3000"))
    try:
        kernels.fetch(package)
    except Exception as exc:  # the archive is unreachable, the package gone …
        require_or_skip(f"cannot fetch {package.name}: {exc}")
    _live[package.name] = vm_matrix.run(package, seed=seed, generated=lines, timeout=240)
    return _live[package.name]


def recording_mismatches(live: Capture, recorded: Capture) -> list[str]:
    """Where a live capture's corpus answers and facts differ from the recording's."""
    bad = []
    for rec_l, rec_r in zip(live["corpus"], recorded["corpus"]):
        if rec_l != rec_r:
            bad.append(f"corpus {base64.b64decode(rec_l['line'])[:60]!r}: {rec_l} vs {rec_r}")
    volatile = {"copy-fixed", "copy-fixed2"}
    for key in recorded["facts"].keys() - volatile:
        if live["facts"].get(key) != recorded["facts"][key]:
            bad.append(f"fact {key}: {live['facts'].get(key)} vs recorded {recorded['facts'][key]}")
    return bad


@pytest.mark.kernel_matrix
@pytest.mark.timeout(600)
@pytest.mark.parametrize("package", kernels.MATRIX, ids=lambda p: p.line)
def test_live_kernel_agrees_with_model(package: kernels.KernelPackage, tmp_path: Path) -> None:
    """Booted now: every answer of this kernel equals the model's (seed in the message)."""
    capture = _boot(package)
    result = check(capture, tmp_path)
    seed = capture["seed"]
    assert result == {k: [] for k in result}, f"{release_of(capture)}, seed {seed}"


@pytest.mark.kernel_matrix
@pytest.mark.timeout(600)
@pytest.mark.parametrize("package", kernels.MATRIX, ids=lambda p: p.line)
def test_live_kernel_matches_recording(package: kernels.KernelPackage) -> None:
    """Booted now, the kernel answers the corpus and the probes as its recording says."""
    capture = _boot(package)
    recorded = [c for c in RECORDED if release_of(c) == release_of(capture)]
    if not recorded:
        pytest.fail(
            f"no recording for {release_of(capture)} (package {capture['kernel']['package']}): "
            "run python -m tests.vm.matrix --record and check it in"
        )
    assert recording_mismatches(capture, recorded[0]) == []
