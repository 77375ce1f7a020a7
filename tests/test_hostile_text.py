"""Untrusted text never reaches a terminal raw, from any command.

File names from an image, entry names and interpreter paths from binfmt_misc,
``#!`` lines and the messages that quote them carry ESC/CSI/OSC sequences, C1
controls, CR, BEL, backspace, a bidi override, a newline followed by a forged
report line, and bytes that are not UTF-8. Each command runs as a separate
process (its real stdout and stderr bytes are checked): every byte must be
UTF-8, every character printable or a newline, and no line may start with
the forged text. The JSON documents keep the exact values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from binfmt import Entry, EntryType, qemu
from binfmt.testing import make_fake_procfs

FORGED = "fake: line"
# No newline and no '/': what an entry name or an interpreter path can hold in a tree.
NASTY = "x\x1b[31mRED\x1b]0;pwned\x07\r\x08\x9b2J\x7f\u202eevil"
NASTY_BYTES = os.fsencode(NASTY) + b"\xff\xc0"
# A file name can hold a newline too.
NASTY_FILE = NASTY_BYTES + b"\n" + FORGED.encode()


def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "binfmt", *argv],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=120,
    )


def assert_safe(data: bytes) -> str:
    text = data.decode("utf-8")  # raw non-UTF-8 bytes would fail here
    bad = sorted({ch for ch in text if ch != "\n" and not ch.isprintable()})
    assert bad == [], f"raw characters {bad!r} in {text!r}"
    assert [line for line in text.split("\n") if line.startswith(FORGED)] == []
    return text


@pytest.fixture
def world(tmp_path: Path) -> dict[str, str]:
    """A fake binfmt_misc with hostile entries, and a root with hostile files."""
    interp_dir = tmp_path / os.fsdecode(b"opt" + NASTY_BYTES)
    interp_dir.mkdir()
    interp = interp_dir / "qemu-aarch64-static"
    interp.write_bytes(qemu.get("x86_64").header(2))
    interp.chmod(0o755)
    gone = interp_dir / os.fsdecode(b"gone" + NASTY_BYTES)
    gone.write_bytes(b"")
    gone.chmod(0o755)
    name = os.fsdecode(b"e" + NASTY_BYTES)
    misc = make_fake_procfs(
        tmp_path / "procfs",
        [
            qemu.get("aarch64").to_entry(str(interp), "", name=name),
            qemu.get("riscv64").to_entry(str(gone), "F", name="r"),  # F, then deleted
            Entry(name + "ext", str(interp), type=EntryType.EXTENSION, extension="sh"),
        ],
    )
    gone.unlink()
    # What a register-line file can hold: no line break ('\r' ends a line for systemd).
    exportable = name.replace("\r", "")
    plain = tmp_path / "qemu-aarch64-static"
    plain.write_bytes(qemu.get("x86_64").header(2))
    plain.chmod(0o755)
    exports = make_fake_procfs(
        tmp_path / "exports", [qemu.get("aarch64").to_entry(str(plain), "F", name=exportable)]
    )
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    files = {
        NASTY_FILE: qemu.get("mips64el").header(2),  # fails: no handler
        b"arm-" + NASTY_BYTES: qemu.get("aarch64").header(2),  # emulated by the hostile entry
        b"script": b"#!/bin/" + NASTY_BYTES + b"\x1b[2K\n",  # a hostile #! interpreter
    }
    for file, data in files.items():
        path = os.path.join(os.fsencode(root / "bin"), file)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o755)
    return {
        "procfs": misc.path,
        "root": str(root),
        "file": os.fsdecode(os.path.join(os.fsencode(root / "bin"), NASTY_FILE)),
        "arm": os.fsdecode(os.path.join(os.fsencode(root / "bin"), b"arm-" + NASTY_BYTES)),
        "script": str(root / "bin" / "script"),
        "qemu_dir": str(interp_dir),
        "entry": name,
        "exports": exports.path,
        "exportable": exportable,
    }


COMMANDS = {
    "status": lambda w: ["status", "--procfs", w["procfs"]],
    "check": lambda w: ["check", "--procfs", w["procfs"], w["file"], w["arm"], w["script"]],
    "check --rootfs": lambda w: ["check", "--procfs", w["procfs"], "--rootfs", w["root"], w["arm"]],
    "scan": lambda w: ["scan", "--procfs", w["procfs"], w["root"]],
    "doctor": lambda w: ["doctor", "--no-probe", "--procfs", w["procfs"], "--host-root", w["root"]],
    "verify": lambda w: ["verify", "--procfs", w["procfs"], "aarch64", "x86_64"],
    "install --dry-run": lambda w: [
        "install",
        "--dry-run",
        "--procfs",
        w["procfs"],
        "--qemu-path",
        w["qemu_dir"],
        "--qemu-suffix",
        "-static",
        "aarch64",
        "--replace",
    ],
    "uninstall --dry-run": lambda w: [
        "uninstall",
        "--dry-run",
        "--procfs",
        w["procfs"],
        w["entry"],
    ],
    "bad option value": lambda w: ["check", "--rootfs", w["file"], "x"],
    "unknown target": lambda w: ["install", "--dry-run", "--procfs", w["procfs"], NASTY],
}


# -- ps and metrics (issue 14): a fake node whose process, pod and container are hostile ----

_CID = "0123456789abcdef" * 4
_UID = "8d9c7f3e-2a4b-4c1d-9e8f-0123456789ab"


def _hostile_node(w: dict[str, str]) -> str:
    """A /proc and host root beside the world: one process of the hostile entry, in a pod."""
    top = Path(w["root"]).parent / "node"
    if top.exists():
        return str(top)
    pid = top / "proc" / "77"
    pid.mkdir(parents=True)
    (top / "proc" / "stat").write_bytes(b"btime 1767225600\n")
    interp = os.path.join(w["qemu_dir"], "qemu-aarch64-static")
    os.symlink(interp, pid / "exe")
    os.symlink(w["root"], pid / "root")
    os.symlink(w["root"], pid / "cwd")
    program = os.fsencode(w["arm"])[len(os.fsencode(w["root"])) :]
    args = [os.fsencode(interp), program, NASTY_FILE, b"--" + NASTY_BYTES]
    (pid / "cmdline").write_bytes(b"".join(a + b"\0" for a in args))
    (pid / "stat").write_bytes(
        b"77 (" + NASTY_BYTES + b") S 1 77 77 0 -1 0 0 0 0 0 10 5 0 0 20 0 1 0 100 0 0\n"
    )
    (pid / "status").write_bytes(b"VmRSS:\t1024 kB\n")
    (pid / "cgroup").write_bytes(
        f"0::/kubepods.slice/kubepods-pod{_UID.replace('-', '_')}.slice/"
        f"cri-containerd-{_CID}.scope\n".encode()
    )
    logs = top / "host" / "var" / "log"
    pod = logs / "pods" / f"ns{NASTY}_pod{NASTY}_{_UID}" / f"c{NASTY}"
    pod.mkdir(parents=True)
    (logs / "containers").mkdir()
    os.symlink(pod / "0.log", logs / "containers" / f"pod{NASTY}_ns{NASTY}_c{NASTY}-{_CID}.log")
    return str(top)


def _node_args(w: dict[str, str]) -> list[str]:
    top = _hostile_node(w)
    return ["--procfs", w["procfs"], "--proc", f"{top}/proc", "--host-root", f"{top}/host"]


COMMANDS["ps"] = lambda w: ["ps", *_node_args(w)]
COMMANDS["metrics"] = lambda w: ["metrics", *_node_args(w)]


# -- another node and archives (issue 15): the hostile root as a tar, the state as a document --


def _hostile_tar(w: dict[str, str]) -> str:
    """The hostile root as an archive, with a member whose name climbs out (a warning)."""
    import io
    import tarfile

    path = Path(w["root"]).parent / "root.tar"
    if not path.exists():
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(w["root"], arcname=".")
            info = tarfile.TarInfo("../" + os.fsdecode(NASTY_FILE))
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))
    return str(path)


def _state_document(w: dict[str, str]) -> str:
    """status --json of the hostile binfmt_misc: the state a node would hand over."""
    path = Path(w["root"]).parent / "state.json"
    if not path.exists():
        done = run("status", "--json", "--procfs", w["procfs"])
        path.write_bytes(done.stdout)
    return str(path)


COMMANDS["scan --tar"] = lambda w: ["scan", "--procfs", w["procfs"], "--tar", _hostile_tar(w)]
COMMANDS["scan --tar --state"] = lambda w: [
    "scan",
    "--state",
    _state_document(w),
    "--host",
    "linux/amd64",
    "--tar",
    _hostile_tar(w),
]
COMMANDS["check --state"] = lambda w: [
    "check",
    "--state",
    _state_document(w),
    "--kernel",
    "6.1.0-25-arm64 #1 SMP Debian 6.1.106-3",
    w["file"],
    w["arm"],
    w["script"],
]
COMMANDS["doctor --state"] = lambda w: ["doctor", "--state", _state_document(w)]
COMMANDS["install --dry-run --host"] = lambda w: [
    "install",
    "--dry-run",
    "--state",
    _state_document(w),
    "--host",
    "linux/arm64",
    "--qemu-path",
    w["qemu_dir"],
    "aarch64",
    "amd64",
]
COMMANDS["bad --state"] = lambda w: ["check", "--state", w["file"], w["arm"]]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_raw_control_characters(world: dict[str, str], command: str) -> None:
    """stdout and stderr of each command: UTF-8, printable, no forged line; the names are shown."""
    done = run(*COMMANDS[command](world))
    out, err = assert_safe(done.stdout), assert_safe(done.stderr)
    assert done.returncode in (0, 1, 2), (done.returncode, err)
    shown = out + err
    assert "\\x1b[31mRED" in shown or "\\x1b" in shown, "the hostile text should appear, escaped"


@pytest.mark.parametrize("command", ["status", "check", "scan", "doctor", "ps"])
def test_json_keeps_exact_values(world: dict[str, str], command: str) -> None:
    """--json: printable bytes, and the values decode back to the exact names."""
    done = run(*COMMANDS[command](world), "--json")
    text = assert_safe(done.stdout)
    document = json.loads(text)
    if command == "status":
        assert world["entry"] in [e["name"] for e in document["entries"]]  # surrogates and all
    if command == "doctor":
        assert world["entry"] in [f["entry"] for f in document["findings"]]
    if command == "ps":
        (process,) = document["processes"]
        assert process["entry"] == world["entry"]
        assert os.fsencode(process["argv"][1]) == NASTY_FILE
        assert NASTY in process["pod"] and NASTY in process["container"]
    if command == "scan":
        paths = [f["path"] for f in document["failures"]]
        assert any(os.fsencode(p).endswith(NASTY_FILE) for p in paths), paths


EXPORT = ["export", "--current", "--format", "register", "--procfs"]


def test_export_to_a_pipe_is_exact(world: dict[str, str]) -> None:
    """export's output is a file's content: redirected, it keeps every byte of every name."""
    done = run(*EXPORT, world["exports"])
    assert done.returncode == 0, done.stderr
    names = [Entry.parse(line + b"\n").name for line in done.stdout.splitlines()]
    assert names == [world["exportable"]]


def test_export_to_a_terminal_is_escaped(world: dict[str, str]) -> None:
    """The same output on a terminal (a pty) is escaped like every report."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "binfmt", *EXPORT, world["exports"]],
            stdout=follower,
            stderr=subprocess.PIPE,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(leader)
    text = assert_safe(b"".join(chunks).replace(b"\r\n", b"\n"))
    assert "\\x1b[31mRED" in text


def test_export_refuses_a_name_no_file_can_hold(world: dict[str, str]) -> None:
    """A name with a line break cannot be one line of a file: a one-line error, nothing printed."""
    done = run(*EXPORT, world["procfs"])
    assert done.returncode == 1 and done.stdout == b""
    assert "line break" in assert_safe(done.stderr)
