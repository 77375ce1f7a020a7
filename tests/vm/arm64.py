"""The arm64 node: Debian's arm64 cloud kernel under ``qemu-system-aarch64``, set up by ``binfmt``.

The root file system is built on the host without running anything foreign
(and without registering anything in the host's kernel):

- Debian's arm64 packages (:data:`ROOT_DEBS`: Python, its libraries, the
  arm64 ``qemu-user-static`` whose ``qemu-x86_64-static`` is an aarch64
  binary), unpacked with ``dpkg-deb --fsys-tarfile X | tar
  --keep-directory-symlink -x`` into a merged-``/usr`` tree, so no
  maintainer script runs; the pure-Python ``python3-attr`` and
  ``python3-pyelftools`` (:data:`ALL_DEBS`); the standard library compiled
  to bytecode here when this Python is 3.11 too (bytecode does not depend on
  the CPU), which saves the guest a few seconds per command;
- the project's wheel, built from this checkout at test time
  (``pip wheel --no-deps``), unzipped into ``dist-packages``, and a
  ``/usr/bin/binfmt`` script for its entry point;
- Debian's static busybox for arm64 (``/init`` runs on it), amd64, i386 and
  armhf (``/opt/busybox/ARCH/busybox``, the programs the node must run);
- the kernel's ``binfmt_misc.ko``.

The disk is ``mkfs.ext4 -d`` of that tree, attached as an NVMe namespace:
the cloud kernel has NVMe and ext4 built in, so it boots without an initrd.
``/init`` (busybox sh) loads binfmt_misc, mounts it where a node has it,
runs :data:`STEPS` (each command's stdout, stderr, exit status and seconds
go to ``/out``), and the toolkit's framing brings ``/out`` back over the
serial console (:func:`tests.vm.boot.read_results`).

:data:`CPUS` are the QEMU CPU models booted: ``cortex-a72`` runs AArch32 at
EL0, ``a64fx`` does not (it needs GICv3, see :class:`~tests.vm.boot.Machine`).
``python -m tests.vm.arm64 [--cpu NAME]`` runs one boot and prints what ran.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import attrs

from . import kernels
from .boot import BootResult, Machine, VmError, boot, busybox_init
from .debs import CACHE, Apt, Deb

__all__ = [
    "ALL_DEBS",
    "CPUS",
    "FORCED_STEPS",
    "INSTALL",
    "KERNEL",
    "ROOT_DEBS",
    "STEPS",
    "Cpu",
    "NodeRun",
    "Step",
    "base_root",
    "build_wheel",
    "missing_tools",
    "node_disk",
    "run",
]

REPO = Path(__file__).resolve().parents[2]
KERNEL = kernels.ARM64[0]


@attrs.frozen
class Cpu:
    """A QEMU CPU model and whether it runs 32-bit ARM programs (AArch32 at EL0)."""

    name: str
    aarch32: bool


#: The CPU models booted. QEMU 7.2 has no other aarch64 model without
#: AArch32 at EL0: on cortex-a35/a53/a57/a72/a76, neoverse-n1 and max a 32-bit
#: ARM program runs natively (measured on this kernel, docs/kernel.rst).
CPUS = (Cpu("cortex-a72", aarch32=True), Cpu("a64fx", aarch32=False))

#: Debian bookworm arm64 packages of the root: Python 3.11 and the libraries
#: its modules load (ssl/hashlib, zlib, expat, ctypes, bz2, lzma), and QEMU.
ROOT_DEBS = (
    "libc6",
    "libgcc-s1",
    "zlib1g",
    "libexpat1",
    "libssl3",
    "libffi8",
    "libbz2-1.0",
    "liblzma5",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3.11-minimal",
    "python3-minimal",
    "qemu-user-static",
)
#: Architecture-independent (pure Python) packages, from the same suite.
ALL_DEBS = ("python3-attr", "python3-pyelftools")
#: The busybox builds the node runs (Debian architectures); arm64's is /init's shell.
BUSYBOXES = ("amd64", "i386", "armhf")

#: The node set-up command's arguments (as the README and the node guide give it).
INSTALL = "--qemu-path /usr/bin --qemu-suffix -static --persistent all"

#: What a node operator does, in order: (step name, command line). Each
#: command's stdout goes to ``/out/NAME.out``, stderr to ``/out/NAME.err``.
STEPS: tuple[tuple[str, str], ...] = (
    ("00-measure", "python3 /t/measure.py 50"),
    ("01-programs-before", "python3 /t/programs.py"),
    ("02-status-before", "binfmt status --json"),
    (
        "03-install",
        "binfmt install --qemu-path /usr/bin --qemu-suffix -static --persistent all --json",
    ),
    ("04-status", "binfmt status --json"),
    ("05-status-text", "binfmt status"),
    ("06-programs-after", "python3 /t/programs.py"),
    ("07-check", "binfmt check --json " + " ".join(f"/opt/busybox/{a}/busybox" for a in BUSYBOXES)),
    ("08-verify", "binfmt verify --json"),
    ("09-doctor", "binfmt doctor --json"),
)
#: On a CPU with AArch32, then: qemu-arm registered anyway (``--force``), the
#: state of the issue this layer was written for; the host must still know
#: that it runs arm itself (the measurement sees through the entry), and
#: doctor must say that the entry captures those programs.
FORCED_STEPS: tuple[tuple[str, str], ...] = (
    ("10-force-arm", f"binfmt install {INSTALL.replace(' all', ' arm')} --force --json"),
    ("11-status-forced", "binfmt status --json"),
    ("12-programs-forced", "python3 /t/programs.py armhf"),
    ("12-measure-forced", "python3 /t/measure.py 50"),
    ("13-doctor-forced", "binfmt doctor --json"),
)

# Runs each busybox as a node would run a container's program; execve errors as errno names.
_PROGRAMS = r"""
import errno, json, os, subprocess, sys
out = {"cpuinfo": open("/proc/cpuinfo").read(),
       "aarch32_el0": os.path.exists("/sys/devices/system/cpu/aarch32_el0"),
       "personality": open("/proc/self/personality").read().strip()}
for arch in sys.argv[1:] or ("amd64", "i386", "armhf"):
    path = "/opt/busybox/%s/busybox" % arch
    try:
        p = subprocess.run([path, "uname", "-m"], capture_output=True, timeout=300)
    except OSError as exc:
        out[arch] = {"errno": errno.errorcode.get(exc.errno, str(exc.errno))}
        continue
    out[arch] = {"errno": None, "status": p.returncode, "stdout": p.stdout.decode(),
                 "stderr": p.stderr.decode(errors="replace")[-500:]}
print(json.dumps(out))
"""

# The host's measurement of arm, repeated: every answer, counted.
_MEASURE = r"""
import collections, json, sys
from binfmt.host import measure_native
answers = collections.Counter(json.dumps(measure_native("arm")) for _ in range(int(sys.argv[1])))
print(json.dumps(answers))
"""

_BINFMT = """#!/usr/bin/python3
import sys
from binfmt.cli import main
sys.exit(main())
"""

_STEP = r"""
step() {
    name=$1; shift
    t0=$(cut -d' ' -f1 /proc/uptime)
    "$@" > "/out/$name.out" 2> "/out/$name.err"
    rc=$?
    echo "$name $rc $t0 $(cut -d' ' -f1 /proc/uptime)" >> /out/steps
    echo; echo "@@STEP $name $rc"
}
"""


def missing_tools() -> list[str]:
    """The host tools this layer needs and lacks (``tests/vm/setup.sh`` installs them)."""
    tools = ("qemu-system-aarch64", "mkfs.ext4", "dpkg-deb", "tar", "apt-get")
    return [t for t in tools if shutil.which(t) is None and not os.path.exists(f"/sbin/{t}")]


def _mkfs() -> str:
    return shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"


# -- the root -------------------------------------------------------------------------


def _debs(cache: Path) -> list[Deb]:
    arm64 = Apt(KERNEL.suite, "arm64", cache=cache)
    # Architecture "all" packages belong to apt's native architecture.
    noarch = Apt(KERNEL.suite, "amd64", cache=cache)
    return [arm64.fetch(n) for n in ROOT_DEBS] + [noarch.fetch(n) for n in ALL_DEBS]


def _unpack(deb: Path, root: Path) -> None:
    """``dpkg-deb --fsys-tarfile DEB | tar --keep-directory-symlink -x -C ROOT``."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        tar = subprocess.run(
            ["tar", "--keep-directory-symlink", "-x", "-C", str(root)],
            stdin=p.stdout,
            capture_output=True,
        )
    if p.returncode != 0 or tar.returncode != 0:
        raise VmError(f"unpacking {deb.name} failed: {tar.stderr.decode(errors='replace')}")


def base_root(cache: Path = CACHE) -> Path:
    """The packages' tree (cached by their file names): merged ``/usr``, bytecode compiled."""
    debs = _debs(cache)
    digest = hashlib.sha256("\n".join(d.path.name for d in debs).encode()).hexdigest()[:16]
    root = cache / "arm64-node" / f"root-{digest}"
    if (root / ".complete").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for d in ("usr/bin", "usr/sbin", "usr/lib"):
        (root / d).mkdir(parents=True)
    for link in ("bin", "sbin", "lib"):
        os.symlink(f"usr/{link}", root / link)
    for deb in debs:
        _unpack(deb.path, root)
    if sys.version_info[:2] == (3, 11):
        _compile(root, root / "usr/lib/python3.11", root / "usr/lib/python3/dist-packages")
    for d in ("proc", "sys", "dev", "tmp", "out", "t", "proc/sys/fs/binfmt_misc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / ".complete").write_text("\n".join(d.path.name for d in debs) + "\n")
    return root


def _compile(root: Path, *dirs: Path) -> None:
    """Bytecode for the guest's Python 3.11, written here (the guest's paths in it)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", "-s", str(root), "-p", "/"]
        + [str(d) for d in dirs],
        check=True,
        capture_output=True,
    )


def build_wheel(out: Path) -> Path:
    """The project's wheel from this checkout (``pip wheel --no-deps``).

    First with this environment's setuptools (no index needed), then, if that
    cannot build wheels, with pip's isolated build environment.
    """
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out)]
    errors = []
    for extra in (["--no-build-isolation"], []):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        done = subprocess.run([*cmd, *extra, str(REPO)], capture_output=True, text=True)
        wheels = sorted(out.glob("binfmt-*.whl"))
        if done.returncode == 0 and len(wheels) == 1:
            return wheels[0]
        errors.append(done.stderr.strip()[-1500:])
    raise VmError("pip wheel failed: " + "\n".join(errors))


def node_disk(
    work: Path, wheel: Path, steps: Sequence[tuple[str, str]] = STEPS, cache: Path = CACHE
) -> Path:
    """The root disk image: the cached packages' tree, this run's wheel, /init running ``steps``."""
    base = base_root(cache)
    kernel = kernels.fetch(KERNEL, cache)
    tree = work / "root"
    shutil.rmtree(tree, ignore_errors=True)
    # Hard links: the new files below replace or add names, never write into shared files.
    subprocess.run(["cp", "-al", str(base), str(tree)], check=True)
    (tree / ".complete").unlink()
    site = tree / "usr/lib/python3/dist-packages"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    if sys.version_info[:2] == (3, 11):
        _compile(tree, site / "binfmt")
    _write(tree / "usr/bin/binfmt", _BINFMT, 0o755)
    _write(tree / "t/programs.py", _PROGRAMS, 0o644)
    _write(tree / "t/measure.py", _MEASURE, 0o644)
    assert kernel.module is not None  # binfmt_misc is a module in Debian's cloud kernels
    shutil.copy(kernel.module, tree / "t/binfmt_misc.ko")
    for arch, where in [("arm64", "usr/bin"), *((a, f"opt/busybox/{a}") for a in BUSYBOXES)]:
        (tree / where).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kernels.busybox(arch, KERNEL.suite, cache), tree / where / "busybox")
        (tree / where / "busybox").chmod(0o755)
    commands = "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc\n" + _STEP
    commands += "".join(f"step {name} {line}\n" for name, line in steps)
    _write(tree / "init", busybox_init(commands, ["/t/binfmt_misc.ko"]), 0o755)
    image = work / "disk.ext4"
    size = _tree_size(tree) * 5 // 4 + (128 << 20)
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(
        [_mkfs(), "-q", "-F", "-L", "root", "-E", "root_owner=0:0", "-d", str(tree), str(image)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)
    return image


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            total += (st.st_size + 4095) // 4096 * 4096
    return total


# -- a boot -----------------------------------------------------------------------------


@attrs.frozen
class Step:
    """One command run in the guest."""

    name: str
    returncode: int
    seconds: float
    stdout: bytes
    stderr: bytes

    def json(self) -> Any:
        return json.loads(self.stdout)


@attrs.frozen
class NodeRun:
    """One boot of the node: every step, and how long things took."""

    cpu: Cpu
    release: str
    steps: dict[str, Step]
    boot: BootResult
    prepare_seconds: float

    def __getitem__(self, name: str) -> Step:
        return self.steps[name]

    def timings(self) -> dict[str, float]:
        """Seconds: preparing the disk, the whole VM, until /init, and each step."""
        out = {
            "prepare_s": round(self.prepare_seconds, 1),
            "vm_s": round(self.boot.seconds, 1),
            "to_init_s": round(self.boot.init_seconds or -1, 1),
        }
        out.update({name: round(s.seconds, 1) for name, s in self.steps.items()})
        return out


def run(
    cpu: Cpu,
    *,
    work: Optional[Path] = None,
    wheel: Optional[Path] = None,
    timeout: float = 900,
    cache: Path = CACHE,
) -> NodeRun:
    """Build the disk (the wheel from this checkout unless given) and boot the node on ``cpu``."""
    start = time.monotonic()
    work = work or cache / "arm64-node" / "runs" / cpu.name
    work.mkdir(parents=True, exist_ok=True)
    wheel = wheel or build_wheel(work / "wheel")
    kernel = kernels.fetch(KERNEL, cache)
    steps = STEPS + (FORCED_STEPS if cpu.aarch32 else ())
    image = node_disk(work, wheel, steps, cache)
    machine = Machine.aarch64(cpu=cpu.name, memory_mb=1024, cpus=2, disk=image)
    prepared = time.monotonic() - start
    result = boot(
        machine,
        kernel.vmlinuz,
        None,
        append="root=/dev/nvme0n1 rw rootwait init=/init loglevel=1",
        timeout=timeout,
        log=work / "console.log",
    )
    files = result.results()
    image.unlink()
    ran: dict[str, Step] = {}
    for line in files.get("steps", b"").decode().splitlines():
        name, rc, t0, t1 = line.split()
        ran[name] = Step(
            name,
            int(rc),
            float(t1) - float(t0),
            files.get(f"{name}.out", b""),
            files.get(f"{name}.err", b""),
        )
    missing = [name for name, _ in steps if name not in ran]
    if missing:
        raise VmError(f"{cpu.name}: steps {missing} did not run (see {result.log})")
    return NodeRun(cpu, kernel.release, ran, result, prepared)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.vm.arm64", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--cpu", default=CPUS[0].name, choices=[c.name for c in CPUS])
    args = ap.parse_args(argv)
    cpu = next(c for c in CPUS if c.name == args.cpu)
    node = run(cpu)
    for name, step in node.steps.items():
        print(f"== {name}: exit {step.returncode}, {step.seconds:.1f} s")
        print(step.stdout.decode(errors="replace")[:3000])
        if step.stderr:
            print("stderr:", step.stderr.decode(errors="replace")[:2000])
    print(json.dumps(node.timings()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
