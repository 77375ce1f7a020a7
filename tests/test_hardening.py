"""Hardening: fuzzed inputs, injected faults, concurrent writers, one-line errors everywhere."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binfmt import (
    BinfmtError,
    BinfmtMisc,
    Entry,
    Host,
    InvalidEntry,
    KernelRules,
    MalformedStatus,
    PermissionDenied,
    State,
    qemu,
)
from binfmt.cli import main
from binfmt.install import InstallError, InstallOptions, apply, plan
from binfmt.rootfs import resolve
from binfmt.scan import scan
from binfmt.testing import make_fake_procfs

from .debian import install_all_argv

K = KernelRules.for_release("6.18")
X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
ROOT = Path(__file__).resolve().parents[1]

# -- fuzzing every parser of outside data -------------------------------------------------


@given(st.one_of(st.binary(max_size=2000), st.text(max_size=300)))
def test_register_line_parser_only_raises_invalid_entry(line: Any) -> None:
    """Any bytes or text: Entry.parse returns an entry or raises InvalidEntry, nothing else."""
    try:
        entry = Entry.parse(line, K)
    except InvalidEntry:
        return
    assert Entry.parse(entry.to_register(K), K) == entry


@given(st.text(max_size=400), st.text(min_size=1, max_size=10))
def test_entry_file_parser_only_raises_malformed_status(text: str, name: str) -> None:
    """Any text as an entry file: an entry or MalformedStatus (bad names: InvalidEntry)."""
    with contextlib.suppress(MalformedStatus, InvalidEntry):
        Entry.from_status(name, text)


@given(st.text(max_size=40))
def test_release_strings(release: str) -> None:
    """A kernel release string gives rules or a ValueError naming it."""
    try:
        KernelRules.for_release(release)
    except ValueError as exc:
        assert repr(release) in str(exc)


@given(st.text(max_size=30))
def test_target_lookup(text: str) -> None:
    """Any target text resolves or raises UnknownTarget (a LookupError)."""
    try:
        qemu.lookup(text)
    except BinfmtError as exc:
        assert isinstance(exc, LookupError)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    links=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c/d", "c/e"]),
            st.sampled_from(["/", "..", "../..", "/etc", "a", "b", "c", "/c/d", "../../../etc"]),
        ),
        max_size=6,
    ),
    path=st.lists(st.sampled_from(["a", "b", "c", "d", "e", "..", ".", "etc"]), max_size=6),
)
def test_resolve_never_escapes(
    tmp_path_factory: pytest.TempPathFactory, links: Any, path: list[str]
) -> None:
    """Whatever symlinks a tree holds, resolve() answers a path inside the root or an OSError."""
    root = tmp_path_factory.mktemp("r")
    (root / "c").mkdir()
    for name, target in links:
        link = root / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target)
    try:
        found = resolve(str(root), "/" + "/".join(path))
    except OSError:
        return
    assert found == str(root) or found.startswith(str(root) + os.sep)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.lists(
        st.tuples(
            st.sampled_from(["x", "d/y", "d/e/z", "w.sh"]),
            st.binary(max_size=80),
            st.sampled_from([0o755, 0o644, 0o000]),
        ),
        max_size=5,
    ),
    entries=st.lists(st.binary(min_size=1, max_size=3), max_size=3),
)
def test_scan_random_trees(
    tmp_path_factory: pytest.TempPathFactory, files: Any, entries: list[bytes]
) -> None:
    """Random files, modes and entries: scan finishes, and counts what it examined."""
    root = tmp_path_factory.mktemp("tree")
    for rel, data, mode in files:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
    state = State(
        "/x", True, True, tuple(Entry(f"e{i}", "/bin/true", magic=m) for i, m in enumerate(entries))
    )
    report = scan(str(root), state=state, host=X86, all_files=True)
    assert report.examined == sum(n for _, n in report.summary)


# -- injected faults in the procfs layer --------------------------------------------------


def _fail_nth_write(monkeypatch: pytest.MonkeyPatch, n: int, err: int) -> None:
    real = BinfmtMisc._write
    calls = {"register": 0}

    def write(self: BinfmtMisc, name: str, data: bytes) -> None:
        if name == "register":
            calls["register"] += 1
            if calls["register"] == n:
                raise OSError(err, os.strerror(err))
        real(self, name, data)

    monkeypatch.setattr(BinfmtMisc, "_write", write)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.ENOMEM, errno.EIO])
def test_failure_mid_install_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """The 3rd of 5 registrations failing (ENOSPC, ENOMEM, EIO) leaves the tree as it was."""
    misc = make_fake_procfs(tmp_path / "p", [":keep:M::KK::/bin/true:"], kernel=K)
    before = misc.state()
    the_plan = plan(
        ["aarch64", "arm", "riscv64", "s390x", "ppc64le"],
        InstallOptions(qemu_path="/usr/bin", qemu_suffix="-static"),
        state=before,
        host=X86,
        kernel=K,
    )
    _fail_nth_write(monkeypatch, 3, err)
    with pytest.raises(InstallError, match=f"{errno.errorcode[err]}.*rolled back 2 changes"):
        apply(the_plan, misc)
    assert misc.state() == before


def test_permission_errors_are_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EACCES opening register, and EPERM on an entry, are PermissionDenied: run as root."""
    misc = make_fake_procfs(tmp_path / "p", kernel=K)

    def denied(self: BinfmtMisc, name: str, data: bytes) -> None:
        raise PermissionError(errno.EACCES, "denied", os.path.join(self.path, name))

    monkeypatch.setattr(BinfmtMisc, "_write", denied)
    with pytest.raises(PermissionDenied, match="run as root"):
        misc.register(":x:M::AB::/bin/true:")
    monkeypatch.setattr(
        BinfmtMisc,
        "_write",
        lambda self, name, data: (_ for _ in ()).throw(OSError(errno.EPERM, "not permitted")),
    )
    with pytest.raises(PermissionDenied, match="permission denied to disable"):
        misc.disable("nope")


def test_two_installs_at_once(tmp_path: Path) -> None:
    """Two install runs started together both succeed and leave each entry registered once."""
    misc = make_fake_procfs(tmp_path / "p", kernel=K)
    argv = [sys.executable, "-m", "binfmt", *install_all_argv(misc.path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    assert [code for _, _, code in results] == [0, 0], results
    names = misc.state().names
    assert len(names) == len(set(names)) > 20
    outs = [out for out, _, _ in results]
    assert sum("done:" in out for out in outs) == 1  # one registered…
    assert sum("nothing to change" in out for out in outs) == 1  # …the other found it done


# -- every command's error path: one line, the documented exit status ------------------


def _commands(tmp: Path) -> list[tuple[list[str], int, str]]:
    missing = str(tmp / "missing")
    return [
        (["status", "--procfs", missing], 1, "not mounted"),
        (["status", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["check", "--rootfs", missing, "/bin/sh"], 2, f"invalid --rootfs '{missing}'"),
        (["check"], 2, "the following arguments are required: PATH"),
        (["install", "--procfs", missing, "arm64"], 1, "not mounted"),
        (["install", "--procfs", str(tmp / "fake"), "arm65"], 1, "'arm65'"),
        (["uninstall", "--procfs", str(tmp / "fake")], 2, "--all-qemu"),
        (["uninstall", "--procfs", str(tmp / "fake"), "ghost"], 1, "no entry named 'ghost'"),
        (["export", "--procfs", str(tmp / "fake")], 2, "--current"),
        (["load", "--procfs", str(tmp / "fake"), missing], 2, f"invalid path '{missing}'"),
        (["verify", "--rootfs", missing], 2, f"invalid --rootfs '{missing}'"),
        (["verify", "--procfs", str(tmp / "fake"), "arm65"], 1, "'arm65'"),
        (["scan", missing], 2, f"invalid ROOTFS '{missing}'"),
        (["scan", "--jobs", "x", "/"], 2, "invalid number 'x'"),
        (["doctor", "--procfs", missing, "--no-probe"], 2, "not-mounted"),
        (["nosuch"], 2, "invalid choice: 'nosuch'"),
    ]


def test_every_command_errs_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's error: exit 1 or 2 as documented, one stderr line naming the value."""
    make_fake_procfs(tmp_path / "fake", kernel=K)
    for argv, status, needle in _commands(tmp_path):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        if argv[0] == "doctor":  # doctor reports problems as findings, on stdout
            assert (code, needle in out) == (status, True), argv
            continue
        assert code == status, (argv, err)
        errors = [line for line in err.splitlines() if not line.startswith("binfmt: warning: ")]
        assert len(errors) == 1 and errors[0].startswith("binfmt: error: "), (argv, err)
        assert needle in errors[0], (argv, err)
