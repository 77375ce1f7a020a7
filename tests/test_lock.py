"""The writer lock, and writers at once on the real kernel (systemd-binfmt included).

The lock is a ``flock`` on the instance's own ``register`` file: only a
process that may write it can take it, nothing is created for it, and
``flock(1)`` takes the same lock. The concurrency test runs two ``install``
runs, an ``uninstall`` and a ``systemd-binfmt`` restart at once, in a user
namespace whose private instance is mounted on ``/proc/sys/fs/binfmt_misc``,
with scratch directories over the ``binfmt.d`` directories, and compares the
end state with every serial order of the four.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest

from binfmt import BinfmtMisc, Entry, qemu
from binfmt.cli import main
from binfmt.errors import InstallError, LockTimeout
from binfmt.install import lock
from binfmt.probes import probe
from binfmt.sandbox import Sandbox
from binfmt.testing import make_fake_procfs, require_or_skip

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD_BINFMTS = ("/usr/lib/systemd/systemd-binfmt", "/lib/systemd/systemd-binfmt")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        require_or_skip(f"{name} is not installed (tests/setup-system.sh installs it)")
    return path


@contextlib.contextmanager
def held_by_flock(register: str) -> Iterator[subprocess.Popen[bytes]]:
    """``flock(1)`` holding the lock (as ``flock REGISTER systemctl restart …`` would)."""
    proc = subprocess.Popen(
        [_tool("flock"), "-o", register, "sh", "-c", "echo locked; exec sleep 60"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _old_lock_files(procfs: str) -> list[str]:
    """Where the old lock (a file with a predictable name) was made for this instance."""
    key = hashlib.sha256(os.path.realpath(procfs).encode()).hexdigest()[:16]
    places = ("/run/lock", tempfile.gettempdir())
    return [p for p in (f"{d}/binfmt-{key}.lock" for d in places) if os.path.exists(p)]


@pytest.mark.kernel
def test_the_lock_is_the_instance_and_leaves_nothing_behind(binfmt_sandbox: Sandbox) -> None:
    """Any path to the instance locks the same file; a run creates no lock file anywhere."""
    misc = binfmt_sandbox.misc
    misc.register(":x:M::XX::/bin/true:")
    assert main(["uninstall", "--procfs", misc.path, "x"]) == 0
    with lock(misc.path):
        # The instance's register file is the lock: flock(1) on it cannot take it now.
        busy = subprocess.run([_tool("flock"), "-n", f"{misc.path}/register", "true"])
        assert busy.returncode == 1
    free = subprocess.run([_tool("flock"), "-n", f"{misc.path}/register", "true"])
    assert free.returncode == 0
    stat = os.stat(f"{misc.path}/register")
    assert (stat.st_uid, stat.st_mode & 0o7777) == (0, 0o200)  # only root may open it
    assert _old_lock_files(misc.path) == []


@pytest.mark.kernel
def test_a_held_lock_times_out_naming_the_holder(
    binfmt_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """install waits a bounded time, then fails with one line naming the holder's PID."""
    misc = binfmt_sandbox.misc
    with held_by_flock(f"{misc.path}/register") as holder:
        with pytest.raises(LockTimeout) as caught, lock(misc.path, timeout=0.2):
            pass
        assert caught.value.holder == holder.pid and caught.value.command == "flock"
        monkeypatch.setattr("binfmt.install.LOCK_TIMEOUT", 0.3)
        started = time.monotonic()
        code = main(["uninstall", "--procfs", misc.path, "--all-qemu"])
        waited = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and 0.3 <= waited < 5
    assert f"held by process {holder.pid} (flock)" in err and "nothing was written" in err
    # A dry run takes no lock: it writes nothing, and needs no root.
    with held_by_flock(f"{misc.path}/register"):
        assert main(["uninstall", "--dry-run", "--procfs", misc.path, "--all-qemu"]) == 0


def test_a_released_lock_is_taken(tmp_path: Path) -> None:
    """A writer waiting for the lock gets it as soon as the holder lets go."""
    misc = make_fake_procfs(tmp_path / "p")
    taken = threading.Event()
    order: list[str] = []

    def first() -> None:
        with lock(misc.path):
            taken.set()
            time.sleep(0.3)
            order.append("first")

    thread = threading.Thread(target=first)
    thread.start()
    taken.wait(5)
    with lock(misc.path, timeout=10):
        order.append("second")
    thread.join()
    assert order == ["first", "second"]


def test_the_lock_refuses_what_others_could_hold(tmp_path: Path) -> None:
    """A register file others may open, or a FIFO, is refused at once (never waited on)."""
    misc = make_fake_procfs(tmp_path / "p")
    os.chmod(f"{misc.path}/register", 0o666)
    with pytest.raises(InstallError, match="other users can open it"), lock(misc.path):
        pass
    fifo = tmp_path / "f"
    fifo.mkdir()
    (fifo / "status").write_bytes(b"enabled\n")
    os.mkfifo(fifo / "register")
    # O_NONBLOCK: a FIFO without a reader is ENXIO at once, never a wait.
    with pytest.raises(InstallError, match=r"cannot lock .*/f/register"), lock(str(fifo)):
        pass
    link = tmp_path / "l"
    link.mkdir()
    (link / "status").write_bytes(b"enabled\n")
    os.symlink(f"{misc.path}/register", link / "register")
    with pytest.raises(InstallError, match=r"cannot lock .*/l/register"), lock(str(link)):
        pass


_MAPPED_NOBODY = r"""
read go
mount -t binfmt_misc none "$1" || exit 3
setpriv --reuid=65534 --regid=65534 --clear-groups "$2" -I -c '
import fcntl, os, sys
sys.path.insert(0, sys.argv[2])
from binfmt.errors import PermissionDenied
from binfmt.install import lock
try:
    os.open(sys.argv[1] + "/register", os.O_RDONLY)
    print("opened")
except PermissionError:
    print("EACCES")
try:
    with lock(sys.argv[1]):
        print("locked")
except PermissionDenied as exc:
    print("denied:", exc)
' "$1" "$3"
"""


@pytest.mark.kernel
def test_no_other_user_can_take_the_lock(tmp_path: Path) -> None:
    """In a namespace that maps root and nobody, nobody can neither open register nor lock."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        require_or_skip("needs util-linux unshare")
    _tool("setpriv")
    top = Path(tempfile.mkdtemp(prefix="binfmt-nobody-"))  # nobody must reach it
    top.chmod(0o755)
    mnt = top / "mnt"
    mnt.mkdir()
    # nobody may not read this test's virtual environment (tox makes .tox 0700):
    # give it the package and attrs in a directory it can read.
    import attr
    import attrs

    lib = top / "lib"
    for source in (ROOT / "binfmt", Path(attr.__file__).parent, Path(attrs.__file__).parent):
        shutil.copytree(source, lib / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [lib, *lib.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    cmd = ["unshare", "--user", "--mount", "--propagation", "private", "sh", "-c"]
    proc = subprocess.Popen(
        [*cmd, _MAPPED_NOBODY, "sh", str(mnt), sys.executable, str(lib)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/ns/user") == os.readlink("/proc/self/ns/user"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{proc.pid}/{name}", "w") as f:
                f.write("0 0 1\n65534 65534 1\n")
    except OSError as exc:
        proc.kill()
        proc.wait()
        require_or_skip(f"cannot map root and nobody in a user namespace: {exc}")
    try:
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        shutil.rmtree(top)
    if proc.returncode == 3:
        require_or_skip(f"cannot mount a private binfmt_misc: {err.strip()}")
    assert out.splitlines() == [
        "EACCES",
        f"denied: permission denied to lock {mnt}/register: run as root (or in a user "
        "namespace that mounted its own binfmt_misc)",
    ], err


# -- writers at once on the real kernel --------------------------------------------------

_DRIVER = r"""
import ctypes, json, os, random, subprocess, sys, threading, time
spec = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def mount(src, dst, fstype, flags):
    if libc.mount(src.encode(), dst.encode(), fstype.encode() if fstype else None, flags, None):
        sys.exit("mount %s: %s" % (dst, os.strerror(ctypes.get_errno())))
MS_BIND = 4096
mount("binfmt_misc", "/proc/sys/fs/binfmt_misc", "binfmt_misc", 0)
# systemd-binfmt reads /etc, /run, /usr/local/lib and /usr/lib/binfmt.d: here only
# /run/binfmt.d (a private tmpfs) has files, the others are empty scratch directories.
mount("tmpfs", "/run", "tmpfs", 0)
os.mkdir("/run/binfmt.d")
for name, text in spec["confs"].items():
    with open("/run/binfmt.d/" + name, "w") as f:
        f.write(text)
seen = set()
for d in ("/etc/binfmt.d", "/usr/local/lib/binfmt.d", "/usr/lib/binfmt.d", "/lib/binfmt.d"):
    if os.path.isdir(d) and os.path.realpath(d) not in seen:
        seen.add(os.path.realpath(d))
        mount(spec["empty"], d, None, MS_BIND)
misc = "/proc/sys/fs/binfmt_misc"
def state():
    names = [n for n in os.listdir(misc) if n not in ("register", "status")]
    return [[n, open(os.path.join(misc, n), "rb").read().decode()] for n in names]
rounds = []
rng = random.Random(spec["seed"])
for _ in range(spec["rounds"]):
    with open(misc + "/status", "w") as f:
        f.write("-1")
    for line in spec["initial"]:
        with open(misc + "/register", "w") as f:
            f.write(line)
    # Started in a random order, a random moment apart (a Python run takes a few
    # tenths of a second to reach the lock, flock(1) takes it at once), so each
    # writer can come first or last.
    spread = spec["spread"]
    starts = sorted((rng.random() * spread[i], i) for i in range(len(spec["commands"])))
    t0 = time.monotonic()
    procs = {}
    for at, i in starts:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        p = subprocess.Popen(spec["commands"][i], stdout=-1, stderr=-1, text=True)
        procs[i] = (time.monotonic(), p)
    results = [None] * len(procs)
    def finish(i):
        started, p = procs[i]
        out, err = p.communicate(timeout=120)
        end = time.monotonic()  # each is waited for in its own thread: the real end
        results[i] = {"rc": p.returncode, "out": out, "err": err, "start": started, "end": end}
    waiters = [threading.Thread(target=finish, args=(i,)) for i in procs]
    for t in waiters:
        t.start()
    for t in waiters:
        t.join()
    rounds.append({"results": results, "final": state()})
print(json.dumps(rounds))
"""


def _systemd_model(misc: BinfmtMisc, lines: Sequence[str]) -> None:
    """What ``systemd-binfmt --unregister; systemd-binfmt`` does: remove all, then each line."""
    misc.remove_all()
    for line in lines:
        name = line[1:].split(line[0], 1)[0]
        if name in misc.state().names:
            misc.remove(name)
        misc.register(line)


def _replay(
    order: Sequence[int], commands: Sequence[Sequence[str]], initial: Sequence[str], tmp: Path
) -> tuple[list[list[str]], list[tuple[int, Optional[list[str]]]], list[str]]:
    """The writers one after the other, on a fake tree: end state, outcomes, lines registered."""
    root = Path(tempfile.mkdtemp(dir=tmp))
    misc = make_fake_procfs(root / "p", initial)
    outcomes: list[tuple[int, Optional[list[str]]]] = [(0, None)] * len(commands)
    lines: list[str] = []
    for i in order:
        argv = list(commands[i])
        if argv[0] == "systemd":
            _systemd_model(misc, argv[1:])
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main([*argv, "--procfs", misc.path])
        doc = json.loads(out.getvalue())
        outcomes[i] = (code, [s["action"] for s in doc["steps"]])
        lines += [s["line"] for s in doc["steps"] if s["line"]]
    final = [[e.name, e.to_status()] for e in misc.state().entries]
    return final, outcomes, lines


@pytest.mark.kernel
@pytest.mark.timeout(900)
def test_installs_uninstall_and_systemd_binfmt_at_once(tmp_path: Path) -> None:
    """Two installs, an uninstall and a systemd-binfmt restart at once, on the real kernel.

    With systemd-binfmt under the same lock (``flock … register``), every
    round ends as some serial order of the four ends, each command's outcome
    included: nothing is half-registered and the last writer's result is what
    the state shows. Without it (systemd-binfmt knows no lock), every entry
    left is one some writer registered whole, and each command's outcome is
    honest: it succeeded only with everything it planned in place.
    """
    found = [p for p in SYSTEMD_BINFMTS if os.path.exists(p)]
    if not found:
        require_or_skip("systemd-binfmt is missing (Debian's systemd package has it)")
    systemd_binfmt = found[0]
    flock = _tool("flock")
    try:
        with Sandbox():
            pass
    except Exception as exc:
        require_or_skip(f"no private binfmt_misc instance: {exc}")
    q1, q2, q3 = (tmp_path / n for n in ("q1", "q2", "q3"))
    for directory, status in ((q1, 11), (q2, 22), (q3, 33)):
        directory.mkdir()
        for target in ("aarch64", "arm", "riscv64", "s390x"):
            path = directory / f"qemu-{target}-static"
            path.write_bytes(probe("x86_64", status))
            path.chmod(0o755)
    empty = tmp_path / "empty"
    empty.mkdir()
    sd_lines = [
        qemu.get("arm").to_entry(str(q3 / "qemu-arm-static"), "F").to_register(),
        ":sdtest:M::\\x01sd::/bin/true:",
    ]
    confs = {"qemu-arm.conf": sd_lines[0] + "\n", "sdtest.conf": sd_lines[1] + "\n"}
    initial = [
        qemu.get("s390x").to_entry(str(q1 / "qemu-s390x-static"), "F").to_register(),
        Entry("WSLInterop", "/bin/false", magic=b"MZ").to_register(),
    ]
    ours = [
        ["install", "--json", "--persistent", "--qemu-path", str(q1), "aarch64", "arm"],
        [
            "install",
            "--json",
            "--persistent",
            "--replace",
            "--qemu-path",
            str(q2),
            "arm",
            "riscv64",
        ],
        ["uninstall", "--json", "s390x"],
    ]
    python = [sys.executable, "-m", "binfmt"]
    restart = f"{systemd_binfmt} --unregister && {systemd_binfmt}"
    replay_commands = [*ours, ["systemd", *sd_lines]]
    serial: dict[tuple[int, ...], Any] = {
        order: _replay(order, replay_commands, initial, tmp_path)
        for order in itertools.permutations(range(4))
    }
    # Every entry some writer registers whole: the start, systemd's lines, and every
    # line an install plans in some order.
    every_line = {*initial, *sd_lines, *(line for _, _, ls in serial.values() for line in ls)}
    known = {(e.name, e.to_status()) for e in map(Entry.parse, every_line)}
    rounds = overlapping = failed = serialised = 0
    places: set[int] = set()
    for locked in (True, False):
        systemd = [flock, "/proc/sys/fs/binfmt_misc/register"] if locked else []
        spec = {
            "rounds": 8,
            "spread": [0.3, 0.3, 0.3, 1.5],
            "seed": 12 + locked,
            "confs": confs,
            "empty": str(empty),
            "initial": initial,
            "commands": [*([*python, *c] for c in ours), [*systemd, "sh", "-c", restart]],
        }
        cmd = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SYSTEMD_LOG_LEVEL": "err"}
        done = subprocess.run(
            [*cmd, sys.executable, "-c", _DRIVER, json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        for result in json.loads(done.stdout):
            rounds += 1
            runs = result["results"]
            spans = [(r["start"], r["end"]) for r in runs]
            if any(a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(spans, 2)):
                overlapping += 1
            for run in runs[:3]:
                assert run["rc"] in (0, 1) and "Traceback" not in run["err"], run
                assert run["err"].count("\n") <= 1, run["err"]
                doc = json.loads(run["out"])
                if run["rc"] == 0:
                    assert doc["error"] is None and doc["differences"] == [], doc
                else:
                    assert doc["error"], doc
            assert runs[3]["rc"] == 0, runs[3]["err"]
            final = [list(x) for x in result["final"]]
            assert {(n, t) for n, t in final} <= known, final  # nothing half-registered
            failed += sum(r["rc"] != 0 for r in runs[:3])
            sd_start, sd_end = spans[3]
            apart = all(end < sd_start or sd_end < start for start, end in spans[:3])
            if not locked and not apart:
                continue  # systemd-binfmt ran during one of ours: nothing to serialise
            serialised += 1
            outcomes = [(r["rc"], json.loads(r["out"])["steps"]) for r in runs[:3]]
            real = [(rc, [s["action"] for s in steps]) for rc, steps in outcomes]
            matching = [
                order
                for order, (end, replayed, _) in serial.items()
                if end == final and all(replayed[i] == real[i] for i in range(3))
            ]
            assert matching, (final, real)
            places |= {order.index(3) for order in matching}
    print(
        f"concurrency: {rounds} rounds, {overlapping} with writers at once, {failed} of "
        f"{3 * rounds} binfmt runs failed (and said why); {serialised} rounds matched a "
        f"serial order; systemd-binfmt's places in them: {sorted(places)}"
    )
    assert overlapping == rounds == 16 and len(places) >= 2
