"""Rollback on the real kernel: a write made to fail at every position of real commands.

Each case builds a state in a private binfmt_misc instance (overlapping
entries, disabled ones, ``F`` entries whose interpreter file was deleted or
replaced), then runs the real command line in a child process under
``strace -e inject=write:error=ENOSPC:when=N``, restricted to the instance's
files: the Nth write to binfmt_misc fails, whatever code makes it. N goes from
1 until the command succeeds. Before and after, the whole state is read
straight from the files, without this library: the names in the kernel's
order, every entry file's bytes, ``status``, and what each test program
actually runs (the fake QEMUs are probes that exit with a status of their
own, so an ``F`` entry that holds another file shows). The outcome must say
"as it was before" exactly when the two are equal, and otherwise announce
every difference, and only where ``force`` allowed it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import pytest

from binfmt import Entry, EntryType, qemu
from binfmt.probes import probe
from binfmt.sandbox import Sandbox
from binfmt.testing import require_or_skip

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("aarch64", "arm", "riscv64", "s390x", "ppc64le")
#: The statuses the fake QEMUs exit with: the first file of a path, and its replacement.
FIRST, SECOND = 10, 50


def strace() -> str:
    path = shutil.which("strace")
    if path is None:
        require_or_skip("strace is not installed (tests/setup-system.sh installs it)")
    return path


class Snapshot(NamedTuple):
    """A binfmt_misc instance, read without this library, and what its programs run."""

    status: bytes
    #: (name, entry file bytes), in the kernel's order (newest first).
    entries: tuple[tuple[str, bytes], ...]
    #: (test program, (exit status, execve errno)).
    runs: tuple[tuple[str, tuple[Optional[int], Optional[str]]], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.entries)


class World:
    """The sandbox, fake QEMUs that are probes, and one test program per target."""

    def __init__(self, box: Sandbox, tmp: Path) -> None:
        self.box = box
        self.q = tmp / "q"
        self.stale = tmp / "stale"
        self.progs = tmp / "progs"
        for d in (self.q, self.stale, self.progs):
            d.mkdir()
        for i, target in enumerate(TARGETS):
            self.fake_qemu(self.q, target, FIRST + i)
            prog = self.progs / f"{target}.bin"
            prog.write_bytes(probe(target))
            prog.chmod(0o755)
        for name, data in (("mz.exe", b"MZ" + bytes(62)), ("x.jar", b"PK\x03\x04")):
            (self.progs / name).write_bytes(data)
            (self.progs / name).chmod(0o755)
        time.sleep(0.02)  # registrations come at least one clock tick after the files

    @staticmethod
    def fake_qemu(directory: Path, target: str, status: int) -> Path:
        path = directory / f"qemu-{target}-static"
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(probe("x86_64", status))
        tmp.chmod(0o755)
        os.replace(tmp, path)  # a new inode, as a package upgrade makes
        return path

    def entry(self, target: str, flags: str = "F", directory: Optional[Path] = None) -> Entry:
        where = directory or self.q
        return qemu.get(target).to_entry(str(where / f"qemu-{target}-static"), flags)

    def stale_entry(self, target: str) -> Entry:
        """An F entry on a file of its own, which the case then deletes or replaces."""
        i = TARGETS.index(target)
        self.fake_qemu(self.stale, target, FIRST + i)
        time.sleep(0.02)
        return self.entry(target, "F", self.stale)

    def snapshot(self) -> Snapshot:
        path = self.box.path
        names = [n for n in os.listdir(path) if n not in ("register", "status")]
        entries = tuple((n, Path(path, n).read_bytes()) for n in names)
        runs = []
        for prog in sorted(self.progs.iterdir()):
            result = self.box.run([str(prog)], timeout=20)
            runs.append((prog.name, (result.returncode, result.errno)))
        return Snapshot(Path(path, "status").read_bytes(), entries, tuple(runs))

    def binfmt(
        self, argv: Sequence[str], *, fail: Optional[str] = None, watch: Iterable[str] = ()
    ) -> tuple[int, dict[str, Any], str]:
        """Run the command line on the instance; ``fail``: strace's ``when=`` for ENOSPC."""
        cmd = [sys.executable, "-m", "binfmt", *argv, "--procfs", self.box.path, "--json"]
        return self._run(cmd, fail, watch)

    def script(
        self, code: str, *, fail: Optional[str] = None, watch: Iterable[str] = ()
    ) -> tuple[int, dict[str, Any], str]:
        """Run Python ``code`` (which prints a JSON document) under the same injection."""
        return self._run([sys.executable, "-c", code, self.box.path], fail, watch)

    def _run(
        self, cmd: list[str], fail: Optional[str], watch: Iterable[str]
    ) -> tuple[int, dict[str, Any], str]:
        if fail is not None:
            files = ("register", "status", *watch)
            paths = [a for n in files for a in ("-P", f"{self.box.mountpoint}/{n}")]
            injection = f"inject=write:error=ENOSPC:when={fail}"
            cmd = [strace(), "-f", "-qq", "-o", "/dev/null", "-e", injection, *paths, *cmd]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        try:
            doc = json.loads(done.stdout)
        except ValueError:
            raise AssertionError(f"no JSON from {cmd}: {done.stdout!r} {done.stderr!r}") from None
        return done.returncode, doc, done.stderr


Setup = Callable[[World], None]


def announced(before: Snapshot, after: Snapshot, doc: dict[str, Any]) -> None:
    """Every way ``after`` differs from ``before`` is in the outcome, and allowed by the plan."""
    said = " | ".join(doc["differences"])
    assert doc["restored"] is False and said, doc
    was, now = dict(before.entries), dict(after.entries)
    changed = {n for n in set(was) | set(now) if was.get(n) != now.get(n)}
    for name in changed:
        assert repr(name) in said, (name, said)
    common = [n for n in before.names if n in now]
    if [n for n in after.names if n in was] != common:
        assert "tried before" in said or "match no common file" in said, said
    for (prog, ran), (_, runs) in zip(before.runs, after.runs):
        if ran != runs:
            # Another program runs only where an entry holds another file or moved.
            assert "holds the file" in said or "tried before" in said or changed, (prog, said)
    allowed = set(doc["cannot_restore"])
    for line in doc["differences"]:
        if "match no common file" in line:  # the order of unrelated entries: a warning said so
            assert any(f["code"] == "restore-order" for f in doc["findings"]), line
        else:
            assert set(re.findall(r"'([^']*)'", line)) & allowed, (line, allowed)


def every_position(
    world: World,
    setup: Setup,
    argv: Sequence[str],
    watch: Sequence[str],
    *,
    script: Optional[str] = None,
    minimum: int,
) -> dict[str, int]:
    """Fail write 1, 2, … of the command until it succeeds; check each outcome. Returns counts."""
    counts = {"positions": 0, "exact": 0, "announced": 0, "states": 0}
    for n in range(1, 100):
        world.box.reset()
        setup(world)
        before = world.snapshot()
        if script is not None:
            code, doc, err = world.script(script, fail=str(n), watch=watch)
        else:
            code, doc, err = world.binfmt(argv, fail=str(n), watch=watch)
        after = world.snapshot()
        counts["states"] += 2
        if doc["applied"] and not doc["error"]:
            assert code == 0, err
            break
        counts["positions"] += 1
        assert code == 1 and err.count("\n") <= 1, (n, err)
        assert "ENOSPC" in doc["error"], (n, doc["error"])
        if doc.get("left") is not None:
            assert [e["name"] for e in doc["left"]] == list(after.names)
        if after == before and doc["restored"]:
            assert "as it was before" in doc["error"] and "not as it was" not in doc["error"]
            counts["exact"] += 1
        elif after == before:
            # Only what no program shows: an F entry shadowed by a newer one holds a new file.
            assert all("holds the file" in d for d in doc["differences"]), doc
            counts["announced"] += 1
        else:
            announced(before, after, doc)
            counts["announced"] += 1
    assert counts["positions"] >= minimum, counts
    print(f"{' '.join(argv) or 'script'}: {counts}")
    return counts


def register(world: World, *entries: Entry, disabled: Iterable[str] = ()) -> None:
    misc = world.box.misc
    for entry in entries:
        misc.register(entry)
    for name in disabled:
        misc.disable(name)


def box64ish() -> Entry:
    """Another registrant's entry for the same binaries (box64, FEX, Rosetta …)."""
    sig = qemu.get("aarch64")
    return Entry("box64ish", "/bin/true", magic=sig.magic, mask=sig.mask)


def others() -> list[Entry]:
    return [
        Entry("WSLInterop", "/bin/false", magic=b"MZ"),
        Entry("jar", "/bin/false", type=EntryType.EXTENSION, extension="jar"),
    ]


ALL_NAMES = [
    *("qemu-" + t for t in TARGETS),
    *("box64ish", "WSLInterop", "jar", "ldA", "ldB", "ldShadow", "new"),
]


@pytest.fixture
def world(binfmt_sandbox: Sandbox, tmp_path: Path) -> World:
    strace()
    return World(binfmt_sandbox, tmp_path)


# -- install ---------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.timeout(600)
def test_install_every_position(world: World) -> None:
    """install: replace (an entry box64ish shadows), enable, register, unchanged; all positions.

    The replaced qemu-aarch64 is older than box64ish, WSLInterop and jar: a
    rollback must register them again after it, or box64ish would lose.
    """

    def setup(w: World) -> None:
        wsl, jar = others()
        register(
            w,
            w.entry("aarch64", ""),
            wsl,
            box64ish(),
            w.entry("arm"),
            w.entry("s390x"),
            jar,
            disabled=["qemu-arm"],
        )

    argv = ["install", "--persistent", "--replace", "--qemu-path", str(world.q), *TARGETS]
    counts = every_position(world, setup, argv, ALL_NAMES, minimum=5)
    assert counts["exact"] == counts["positions"]  # nothing here is irreversible


@pytest.mark.kernel
@pytest.mark.timeout(600)
def test_install_double_faults_are_reported_exactly(world: World) -> None:
    """Every write from position N on fails, the undo's too: the outcome lists what differs."""

    def setup(w: World) -> None:
        register(w, w.entry("aarch64", ""), box64ish(), w.entry("arm"), disabled=["qemu-arm"])

    argv = ["install", "--persistent", "--replace", "--qemu-path", str(world.q), "aarch64", "arm"]
    differed = 0
    for n in range(1, 4):
        world.box.reset()
        setup(world)
        before = world.snapshot()
        code, doc, _ = world.binfmt(argv, fail=f"{n}+", watch=ALL_NAMES)
        after = world.snapshot()
        assert code == 1 and "ENOSPC" in doc["error"]
        if after == before:
            assert doc["restored"] is True
        else:
            differed += 1
            said = " | ".join(doc["differences"])
            assert doc["restored"] is False and "not as it was before" in doc["error"]
            was, now = dict(before.entries), dict(after.entries)
            for name in {n for n in set(was) | set(now) if was.get(n) != now.get(n)}:
                assert repr(name) in said
            assert "undoing failed" in doc["error"]
    assert differed >= 1


@pytest.mark.kernel
@pytest.mark.timeout(300)
def test_install_refuses_to_replace_an_entry_it_cannot_put_back(world: World) -> None:
    """An F entry whose file was deleted: --replace is refused up front, naming --force."""

    def setup(w: World) -> None:
        stale = w.stale_entry("aarch64")
        register(w, stale, box64ish())
        Path(stale.interpreter).unlink()  # the kernel still runs the file it opened

    world.box.reset()
    setup(world)
    before = world.snapshot()
    assert dict(before.runs)["aarch64.bin"] == (0, None)  # box64ish (/bin/true) wins
    argv = ["install", "--persistent", "--replace", "--qemu-path", str(world.q), "aarch64"]
    code, doc, err = world.binfmt(argv)
    assert code == 1 and world.snapshot() == before
    (finding,) = [f for f in doc["findings"] if f["code"] == "cannot-restore"]
    assert finding["entry"] == "qemu-aarch64" and "is gone" in finding["message"]
    assert "--force" in finding["fix"] and "--force" in err and err.count("\n") == 1
    assert doc["cannot_restore"] == ["qemu-aarch64"] and not doc["applied"]
    # With --force the plan goes ahead, says what cannot be put back, and so does a failure.
    counts = every_position(world, setup, [*argv, "--force"], ALL_NAMES, minimum=2)
    assert counts["announced"] >= 1


@pytest.mark.kernel
@pytest.mark.timeout(600)
def test_refresh_over_a_replaced_file_with_force(world: World) -> None:
    """--refresh --force of an F entry whose file was replaced: a failure says what it holds."""

    def setup(w: World) -> None:
        stale = w.stale_entry("aarch64")
        register(w, stale, box64ish(), w.stale_entry("arm"), disabled=["qemu-arm"])
        time.sleep(0.02)
        World.fake_qemu(w.stale, "aarch64", SECOND)  # upgraded: a new file at the same path

    argv = ["install", "--persistent", "--refresh", "--force", "--qemu-path", str(world.stale)]
    counts = every_position(world, setup, [*argv, "aarch64", "arm"], ALL_NAMES, minimum=4)
    assert counts["announced"] >= 1


# -- uninstall and load -------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.timeout(600)
def test_uninstall_every_position(world: World) -> None:
    """uninstall of an overlapped entry, a disabled one and another registrant's, named."""

    def setup(w: World) -> None:
        wsl, jar = others()
        register(w, w.entry("aarch64"), jar, box64ish(), w.entry("arm"), wsl, disabled=["qemu-arm"])

    argv = ["uninstall", "qemu-aarch64", "qemu-arm", "jar"]
    counts = every_position(world, setup, argv, ALL_NAMES, minimum=3)
    assert counts["exact"] == counts["positions"]


@pytest.mark.kernel
@pytest.mark.timeout(600)
def test_uninstall_of_entries_it_cannot_put_back(world: World) -> None:
    """One F entry with a deleted file goes last and needs no --force; two need it."""

    def one(w: World) -> None:
        stale = w.stale_entry("riscv64")
        register(w, w.entry("aarch64"), stale, box64ish())
        Path(stale.interpreter).unlink()

    argv = ["uninstall", "qemu-riscv64", "qemu-aarch64"]
    world.box.reset()
    one(world)
    code, doc, _ = world.binfmt([*argv, "--dry-run"])
    assert [s["name"] for s in doc["steps"]] == ["qemu-aarch64", "qemu-riscv64"]
    assert doc["ok"] and doc["cannot_restore"] == []
    # The removal it cannot undo goes last; undoing the other cannot put qemu-aarch64
    # back behind qemu-riscv64 (that would mean registering qemu-riscv64 again), and the
    # plan warns about it: they match no common file, so nothing runs differently.
    assert [f["code"] for f in doc["findings"]] == ["restore-order"]
    counts = every_position(world, one, argv, ALL_NAMES, minimum=2)
    assert counts["exact"] == 1 and counts["announced"] == 1

    def two(w: World) -> None:
        first, second = w.stale_entry("riscv64"), w.stale_entry("s390x")
        register(w, first, second)
        Path(first.interpreter).unlink()
        time.sleep(0.02)
        World.fake_qemu(w.stale, "s390x", SECOND)

    world.box.reset()
    two(world)
    before = world.snapshot()
    code, doc, err = world.binfmt(["uninstall", "qemu-riscv64", "qemu-s390x"])
    assert code == 1 and "--force" in err and world.snapshot() == before
    assert len(doc["cannot_restore"]) == 1
    every_position(
        world, two, ["uninstall", "--force", "qemu-riscv64", "qemu-s390x"], ALL_NAMES, minimum=2
    )


@pytest.mark.kernel
@pytest.mark.timeout(600)
def test_load_every_position(world: World, tmp_path: Path) -> None:
    """load: replace an entry a newer one overlaps, register, enable a disabled one."""
    conf = tmp_path / "binfmt.d"
    conf.mkdir()
    (conf / "10-a.conf").write_text(":ldA:M::\\x01\\x02ld::/bin/true:\n")
    (conf / "20-b.conf").write_text(":ldB:M::\\x01\\x03ld::/bin/true:\n")
    (conf / "30-c.conf").write_text(":jar:E::jar::/bin/false:\n")

    def setup(w: World) -> None:
        register(
            w,
            Entry("ldA", "/bin/false", magic=b"\x01\x02ld"),
            Entry("ldShadow", "/bin/false", magic=b"\x01\x02"),
            others()[1],
            disabled=["jar"],
        )

    counts = every_position(world, setup, ["load", str(conf)], ALL_NAMES, minimum=4)
    assert counts["exact"] == counts["positions"]


# -- every action in one plan (the library) ----------------------------------------------

MIXED = r"""
import json, sys
import attrs
from binfmt import BinfmtMisc, Entry, EntryType
from binfmt.install import InstallError, Plan, apply, plan_entries, plan_uninstall
misc = BinfmtMisc(sys.argv[1])
state = misc.state()
on = plan_entries(
    [
        Entry("new", "/bin/true", magic=b"\x05new"),  # register
        Entry("ldA", "/bin/true", magic=b"\x01\x02ld"),  # replace (it runs /bin/false)
        Entry("jar", "/bin/false", type=EntryType.EXTENSION, extension="jar"),  # enable
        Entry("WSLInterop", "/bin/false", magic=b"MZ", enabled=False),  # disable
    ],
    state=state,
)
off = plan_uninstall(["box64ish", "qemu-aarch64"], state=state)
mixed = Plan(state.path, on.steps + off.steps, on.findings + off.findings)
doc = {"applied": False, "error": None, "restored": None, "differences": [], "cannot_restore": []}
doc["actions"] = [s.action for s in mixed.changes]
try:
    apply(mixed, misc)
    doc["applied"] = True
except InstallError as exc:
    doc.update(error=str(exc), restored=exc.restored, differences=list(exc.differences))
doc["left"] = [{"name": e.name, "enabled": e.enabled} for e in misc.state().entries]
print(json.dumps(doc))
sys.exit(1 if doc["error"] else 0)
"""


@pytest.mark.kernel
@pytest.mark.timeout(600)
def test_every_action_in_one_plan(world: World) -> None:
    """register, replace, enable, disable and remove in one plan, failed at every write."""

    def setup(w: World) -> None:
        wsl, jar = others()
        register(
            w,
            w.entry("aarch64"),
            Entry("ldA", "/bin/false", magic=b"\x01\x02ld"),
            jar,
            box64ish(),
            wsl,
            disabled=["jar"],
        )

    world.box.reset()
    setup(world)
    _, doc, _ = world.script(MIXED)
    assert doc["actions"] == ["register", "replace", "enable", "disable", "remove", "remove"]
    counts = every_position(world, setup, [], ALL_NAMES, script=MIXED, minimum=7)
    assert counts["exact"] == counts["positions"]
