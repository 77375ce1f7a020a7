"""The kernel-matrix layer: boot each Debian kernel, ask it everything, bring the answers back.

Run it as ``python -m tests.vm.matrix [--kernels matrix|all|NAME,…]
[--record] [--seed N] [--lines N]``. Per kernel it

1. fetches the package (cached by name) and busybox, compiles the guest
   helper (``guest/helper.c``, ``gcc -static``), and builds an initramfs
   holding them, the binfmt_misc module and the planned jobs;
2. boots it under ``qemu-system-x86_64`` (TCG) with a hard timeout (the
   arm64 kernels of :data:`~tests.vm.kernels.ARM64` under
   ``qemu-system-aarch64``, with an aarch64 helper and busybox);
3. inside, the helper replays the checked-in register-line corpus
   (``tests/data/register-lines.jsonl``) and lines generated from the run's
   seed (one ``write(2)`` each, then the instance is read back and
   emptied), random sequences of register/enable/disable/remove/status
   writes (the instance read back after each), and the exec-time probes
   (:func:`facts_plan`), the user-namespace ones last;
4. reads the framed, checksummed results off the console and turns them
   into a capture: a JSON document (:func:`run`).

``--record`` writes the capture of every kernel booted into
``tests/data/kernels/<release>/capture.json`` (the corpus, a fixed-seed
sample of generated lines and sequences, the facts): the checked-in fixtures
that ``tests/test_kernel_matrix.py`` compares the model with on machines
without QEMU. The comparison itself lives in that test module.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from . import generate, kernels
from .boot import Machine, VmError, boot, busybox_init
from .debs import CACHE
from .initramfs import Initramfs
from .protocol import Op, Result, decode, encode

__all__ = ["build_helper", "facts_plan", "guest_paths", "run"]

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
CORPUS = TESTS / "data" / "register-lines.jsonl"
FIXTURES = TESTS / "data" / "kernels"
MNT = "/m"

#: The guest's files as ``find`` lists them before the jobs run (its root
#: file system, plus the mount points): path → ``x`` an executable file (or a
#: symlink: all of them point at busybox), ``f`` another file, ``d`` a
#: directory. open_exec() in the guest is predicted from this, not from the
#: host's files.
_LIST = """
find / -xdev -type d > /out/00-dirs
find / -xdev -type f -perm -100 > /out/00-exec
find / -xdev -type f ! -perm -100 > /out/00-files
find / -xdev -type l > /out/00-links
"""


def guest_paths(files: dict[str, bytes]) -> dict[str, str]:
    paths: dict[str, str] = {}
    for name, kind in (("00-dirs", "d"), ("00-exec", "x"), ("00-files", "f"), ("00-links", "x")):
        for line in files[name].decode(errors="surrogateescape").splitlines():
            paths[line] = kind
    return dict(sorted(paths.items()))


#: Payload magics (the first bytes of the files the exec probes run).
_SHOWARGS = "/t/showargs"


def build_helper(cache: Path = CACHE, arch: str = "x86_64") -> Path:
    """``guest/helper.c`` compiled statically (once per source version)."""
    source = HERE / "guest" / "helper.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out = cache / "helper" / f"helper-{arch}-{digest}"
    if out.is_file():
        return out
    gcc = "gcc" if arch == "x86_64" else f"{arch}-linux-gnu-gcc"
    if shutil.which(gcc) is None:
        raise VmError(f"{gcc} is not installed (tests/vm/setup.sh installs it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    subprocess.run([gcc, "-static", "-O2", "-Wall", "-o", str(tmp), str(source)], check=True)
    os.replace(tmp, out)
    return out


# -- the plans ------------------------------------------------------------------


def info_plan() -> list[Op]:
    return [
        Op.read("/proc/sys/kernel/osrelease", "release"),
        Op.read("/proc/sys/kernel/version", "version"),
        Op.read("/proc/version", "proc_version"),
        Op.mount(MNT, "mount"),
    ]


def lines_plan(lines: Sequence[bytes]) -> list[Op]:
    """Each line: one write to register, the instance read back, then emptied."""
    ops: list[Op] = []
    for line in lines:
        ops += [
            Op.write(f"{MNT}/register", line),
            Op.snapshot(MNT),
            Op.write(f"{MNT}/status", b"-1"),
        ]
    return ops


def _step_op(step: generate.Step) -> Op:
    kind, arg = step
    if kind == "register":
        return Op.write(f"{MNT}/register", arg, kind)
    if kind == "status":
        return Op.write(f"{MNT}/status", arg, kind)
    payload = {"enable": b"1", "disable": b"0", "remove": b"-1"}[kind]
    return Op(kind="W", path=MNT.encode() + b"/" + arg, data=payload, label=kind)


def sequences_plan(seqs: Sequence[Sequence[generate.Step]]) -> list[Op]:
    """Each sequence from an empty, enabled instance; the instance read after every step."""
    ops: list[Op] = []
    for seq in seqs:
        ops += [Op.write(f"{MNT}/status", b"-1"), Op.write(f"{MNT}/status", b"1")]
        for step in seq:
            ops += [_step_op(step), Op.snapshot(MNT)]
    return ops


# Files the exec probes run: a magic, then padding; executable.
PAYLOADS = {
    "/t/p/pflag": b"PFLG",
    "/t/p/noflag": b"NOFL",
    "/t/p/oflag": b"OFLG",
    "/t/p/oscript": b"OSCR",
    "/t/p/nscript": b"NSCR",
    "/t/p/fixed": b"FIXD",
    "/t/p/chain5": b"CH50",
    "/t/p/chain6": b"CH60",
    "/t/p/buffer": b"\0" * 254 + b"BF",
    "/t/p/keep": b"KEEP",
    "/t/p/parent": b"PARN",
}
for _n, _m in (("5", 5), ("6", 6)):
    for _i in range(1, _m):
        PAYLOADS[f"/t/c{_n}{_i}"] = f"CH{_n}{_i}".encode()


def _reg(line: str, label: str) -> Op:
    return Op.write(f"{MNT}/register", line.encode(), label)


def _x(path: str, label: str, argv0: str = "argv0") -> Op:
    return Op.exec(path, [argv0, "a1"], label)


def facts_plan() -> list[Op]:
    """The exec-time probes (labels name what each op measures); userns ones are separate."""
    ops = [Op.write(f"{MNT}/status", b"-1"), Op.write(f"{MNT}/status", b"1")]
    # P: argv[0] kept, AT_FLAGS bit 0; no flag: argv[0] dropped; O: AT_EXECFD.
    ops += [_reg(f":pflag:M::PFLG::{_SHOWARGS}:P", "reg-p"), _x("/t/p/pflag", "exec-p", "MYNAME")]
    ops += [_reg(f":noflag:M::NOFL::{_SHOWARGS}:", "reg-none"), _x("/t/p/noflag", "exec-none")]
    ops += [_reg(f":oflag:M::OFLG::{_SHOWARGS}:O", "reg-o"), _x("/t/p/oflag", "exec-o")]
    # O (and none) with a #! interpreter: a further rewrite after O is refused (5.8+).
    ops += [_reg(":oscript:M::OSCR::/t/wrapper:O", "reg-o-script")]
    ops += [_x("/t/p/oscript", "exec-o-script")]
    ops += [_reg(":nscript:M::NSCR::/t/wrapper:", "reg-none-script")]
    ops += [_x("/t/p/nscript", "exec-none-script")]
    # The read buffer: a magic at offset 254 (fits only a 256-byte buffer).
    ops += [_reg(f":buffer:M:254:BF::{_SHOWARGS}:", "reg-buffer"), _x("/t/p/buffer", "exec-buffer")]
    # Rewrite limit: chains of 5 and 6 binfmt_misc levels.
    for n in (5, 6):
        for i in range(n):
            interp = f"/t/c{n}{i + 1}" if i + 1 < n else _SHOWARGS
            ops.append(_reg(f":ch{n}{i}:M::CH{n}{i}::{interp}:", f"reg-chain{n}"))
        ops.append(_x(f"/t/p/chain{n}", f"exec-chain{n}"))
    # Globally disabled: nothing matches; -1 then keeps the switch off.
    ops += [Op.write(f"{MNT}/status", b"0", "disable-all"), _x("/t/p/pflag", "exec-disabled")]
    ops += [_reg(f":whiledis:M::WDIS::{_SHOWARGS}:", "reg-while-disabled")]
    ops += [Op.read(f"{MNT}/whiledis", "entry-while-disabled")]
    ops += [Op.write(f"{MNT}/status", b"-1", "clear-while-disabled")]
    ops += [Op.read(f"{MNT}/status", "status-after-clear")]
    ops += [Op.write(f"{MNT}/status", b"1", "enable-all")]
    # F: the interpreter opened at registration, write-denied while registered;
    # after removal; after a failed F registration (EEXIST).
    ops += [Op.copy(_SHOWARGS, "/t/fixed", "copy-fixed")]
    ops += [_reg(":fixed:M::FIXD::/t/fixed:F", "reg-f"), Op.open_write("/t/fixed", "write-f")]
    ops += [_x("/t/p/fixed", "exec-f"), Op.write(f"{MNT}/fixed", b"-1", "remove-f")]
    ops += [Op.open_write("/t/fixed", "write-f-removed")]
    ops += [Op.copy(_SHOWARGS, "/t/fixed2", "copy-fixed2")]
    ops += [_reg(f":dup:M::DUP1::{_SHOWARGS}:", "reg-dup")]
    ops += [
        _reg(":dup:M::DUP2::/t/fixed2:F", "reg-dup-f"),
        Op.open_write("/t/fixed2", "write-f-failed"),
    ]
    # Interpreter open vs name check: a taken name with a missing F interpreter.
    ops += [_reg(":dup:M::DUP3::/nonexistent/x:F", "reg-dup-missing")]
    ops += [Op.write(f"{MNT}/status", b"-1")]
    # umount and mount again: entries and the global switch.
    ops += [_reg(f":keep:M::KEEP::{_SHOWARGS}:", "reg-keep")]
    ops += [Op.write(f"{MNT}/status", b"0", "disable-before-umount")]
    ops += [Op.umount(MNT, "umount"), Op.mount(MNT, "remount"), Op.snapshot(MNT, "after-remount")]
    ops += [Op.write(f"{MNT}/status", b"1"), Op.write(f"{MNT}/status", b"-1")]
    # User namespaces: uses the parent's instance until it mounts its own.
    ops += [_reg(f":parent:M::PARN::{_SHOWARGS}:", "reg-parent")]
    ops += [Op.userns("userns"), _x("/t/p/parent", "userns-exec-before")]
    ops += [Op.mount("/m2", "userns-mount"), Op.snapshot("/m2", "userns-snapshot")]
    ops += [_x("/t/p/parent", "userns-exec-mounted"), Op.umount("/m2", "userns-umount")]
    ops += [_x("/t/p/parent", "userns-exec-unmounted")]
    return ops


# -- the guest ------------------------------------------------------------------

_PASSWD = "root:x:0:0:root:/:/bin/sh\n"

_COMMANDS = (
    _LIST
    + """
for job in /t/jobs/*; do
    name=${job##*/}
    echo; echo "@@JOB $name $(cut -d' ' -f1 /proc/uptime)"
    /t/helper batch "$job" "/out/$name" || echo "@@ERROR $name exit $?"
done
"""
)


def build_initramfs(
    kernel: kernels.Kernel, helper: Path, bbox: Path, jobs: dict[str, list[Op]], path: Path
) -> Path:
    img = Initramfs()
    img.add("/init", busybox_init(_COMMANDS, ["/t/binfmt_misc.ko"] if kernel.module else []), 0o755)
    img.add_file("/bin/busybox", bbox, 0o755)
    # The applets the lines name; the rest come from busybox --install at boot.
    for applet in ("sh", "cat", "true"):
        img.symlink(f"/bin/{applet}", "busybox")
    img.add("/etc/passwd", _PASSWD, 0o644)
    for d in ("/proc", "/sys", "/dev", "/tmp", "/out", MNT, "/m2"):
        img.mkdir(d)
    img.add_file("/t/helper", helper, 0o755)
    img.add_file(_SHOWARGS, helper, 0o755)
    img.add("/t/wrapper", f"#!{_SHOWARGS}\n", 0o755)
    for p, data in PAYLOADS.items():
        img.add(p, data + b"\n", 0o755)
    if kernel.module:
        img.add_file("/t/binfmt_misc.ko", kernel.module, 0o644)
    for name, ops in jobs.items():
        img.add(f"/t/jobs/{name}", encode(ops))
    return img.write(path)


# -- reading the answers ----------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _entries(result: Result) -> dict[str, Any]:
    """A snapshot as JSON: the global switch and the entries in readdir order."""
    state: dict[str, Any] = {"enabled": None, "entries": []}
    for name, err, content in result.snapshot():
        if name == b"status":
            state["enabled"] = {b"enabled\n": True, b"disabled\n": False}.get(content)
        elif name != b"register":
            state["entries"].append([_b64(name), _b64(content) if err == "OK" else err])
    return state


def line_answers(lines: Sequence[bytes], results: Sequence[Result]) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(lines):
        write, snap = results[3 * i], results[3 * i + 1]
        rec: dict[str, Any] = {"line": _b64(line)}
        entries = _entries(snap)["entries"]
        if write.error != "OK":
            rec["errno"] = write.error
        elif len(entries) == 1:
            rec["name"], rec["status"] = entries[0]
        else:
            rec["error"] = f"accepted, but the instance holds {len(entries)} entries"
        out.append(rec)
    return out


def sequence_answers(
    seqs: Sequence[Sequence[generate.Step]], results: Sequence[Result]
) -> list[list[dict[str, Any]]]:
    out, p = [], 0
    for seq in seqs:
        p += 2
        steps = []
        for kind, arg in seq:
            write, snap = results[p], results[p + 1]
            p += 2
            steps.append({"op": kind, "arg": _b64(arg), "errno": write.error, **_entries(snap)})
        out.append(steps)
    return out


def facts_answers(results: Sequence[Result]) -> dict[str, Any]:
    """Each labelled op's raw answer: errno, exec outcome, or snapshot."""
    out: dict[str, Any] = {}
    for r in results:
        if not r.op.label:
            continue
        if r.op.kind == "X":
            ex = r.exec()
            value: Any = {"errno": ex.errno, "status": ex.status, "output": ex.lines()}
        elif r.op.kind == "S":
            value = _entries(r) if r.error == "OK" else {"errno": r.error}
        elif r.op.kind == "R":
            value = r.payload.decode(errors="replace") if r.error == "OK" else r.error
        elif r.op.kind == "N" and r.error != "OK":
            value = f"{r.error} ({r.payload.decode()})"
        else:
            value = r.error
        out.setdefault(r.op.label, value)
    return out


#: Debian architecture → the GNU one (the helper's compiler is ``ARCH-linux-gnu-gcc``).
_GCC_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


def corpus_lines() -> list[bytes]:
    lines = CORPUS.read_text().splitlines()[1:]
    return [base64.b64decode(json.loads(line)["line"]) for line in lines]


def run(
    package: kernels.KernelPackage,
    *,
    seed: int,
    generated: int = 3000,
    sequences: int = 150,
    timeout: float = 600,
    cache: Path = CACHE,
    machine: Optional[Machine] = None,
) -> dict[str, Any]:
    """Boot one kernel with the whole plan; the capture as a JSON-ready dict."""
    t0 = time.monotonic()
    kernel = kernels.fetch(package, cache)
    bbox = kernels.busybox(package.arch, cache=cache)
    helper = build_helper(cache, _GCC_ARCH[package.arch])
    if machine is None:
        machine = Machine.aarch64(memory_mb=1024) if package.arch == "arm64" else Machine()
    corpus = corpus_lines()
    gen = generate.lines(seed, generated)
    seqs = generate.sequences(seed, sequences)
    jobs = {
        "10-info": info_plan(),
        "20-corpus": lines_plan(corpus),
        "30-generated": lines_plan(gen),
        "40-sequences": sequences_plan(seqs),
        "50-facts": facts_plan(),
    }
    work = cache / "runs" / kernel.release
    initrd = build_initramfs(kernel, helper, bbox, jobs, work / "initrd.cpio")
    prepared = time.monotonic() - t0
    result = boot(
        machine,
        kernel.vmlinuz,
        initrd,
        append="loglevel=1",
        timeout=timeout,
        log=work / "console.log",
    )
    files = result.results()
    answers: dict[str, list[Result]] = {}
    for name, ops in jobs.items():
        if name not in files:
            raise VmError(f"{kernel.release}: no results for job {name} (see {result.log})")
        try:
            answers[name] = decode(ops, files[name])
        except ValueError as exc:
            raise VmError(f"{kernel.release}: job {name}: {exc}") from None
    info = {r.op.label: r.payload.decode().strip() for r in answers["10-info"] if r.op.kind == "R"}
    if answers["10-info"][-1].error != "OK":
        raise VmError(f"{kernel.release}: mounting binfmt_misc failed: {answers['10-info'][-1]}")
    return {
        "kernel": {
            "release": info["release"],
            "version": info["version"],
            "proc_version": info["proc_version"],
            "package": kernel.package.name,
            "package_version": kernel.deb.version,
            "substituted": kernel.substituted,
            "line": package.line,
            "arch": package.arch,
        },
        "measured": time.strftime("%Y-%m-%d", time.gmtime()),
        "seed": seed,
        "timings": {
            "prepare_s": round(prepared, 1),
            "boot_s": round(result.seconds, 1),
            "init_s": None if result.init_seconds is None else round(result.init_seconds, 1),
        },
        "guest_paths": guest_paths(files),
        "corpus": line_answers(corpus, answers["20-corpus"]),
        "generated": line_answers(gen, answers["30-generated"]),
        "sequences": sequence_answers(seqs, answers["40-sequences"]),
        "facts": facts_answers(answers["50-facts"]),
    }


def select(spec: str) -> list[kernels.KernelPackage]:
    if spec == "matrix":
        return list(kernels.MATRIX)
    if spec == "all":
        return list(kernels.MATRIX + kernels.EXTRA + kernels.ARM64)
    if spec == "arm64":
        return list(kernels.ARM64)
    by_name = {p.name: p for p in kernels.MATRIX + kernels.EXTRA + kernels.ARM64}
    return [by_name[n] for n in spec.split(",")]


def record(capture: dict[str, Any]) -> Path:
    """Write a capture as the checked-in fixture of its release."""
    out: Path = FIXTURES / str(capture["kernel"]["release"]) / "capture.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(capture, indent=0, sort_keys=True) + "\n")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.vm.matrix", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--kernels", default="matrix", help="matrix (default), arm64, all, or package names"
    )
    ap.add_argument("--seed", type=int, default=None, help="seed of the generated lines")
    ap.add_argument("--lines", type=int, default=3000, help="generated lines per kernel")
    ap.add_argument("--sequences", type=int, default=150, help="operation sequences per kernel")
    ap.add_argument("--record", action="store_true", help="write tests/data/kernels/<release>/")
    ap.add_argument("--out", type=Path, default=CACHE / "captures", help="where captures go")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    args.out.mkdir(parents=True, exist_ok=True)
    for package in select(args.kernels):
        capture = run(package, seed=seed, generated=args.lines, sequences=args.sequences)
        k = capture["kernel"]
        path = args.out / f"{k['release']}.json"
        path.write_text(json.dumps(capture, sort_keys=True) + "\n")
        print(f"{k['release']} ({k['version']}): {capture['timings']} -> {path}", flush=True)
        if args.record:
            print(f"  recorded {record(capture)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
