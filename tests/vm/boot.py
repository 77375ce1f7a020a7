"""Boot a kernel under QEMU (TCG only), run a busybox ``/init``, read results off the console.

- :class:`Machine` holds what differs between guests: the QEMU binary and
  machine type, the serial console's name, memory, and an optional disk
  (an NVMe namespace, so the cloud kernels need no initrd to mount it).
  ``Machine.aarch64(cpu=…)`` is ``qemu-system-aarch64 -M virt,gic-version=3
  -cpu CPU`` with ``ttyAMA0``: GICv3, as arm64 servers have, and because
  CPU models that advertise its system registers (``a64fx``) oops at boot
  on the default GICv2 (``has_useable_gicv3_cpuif`` reads ``ICC_SRE_EL1``).
- :func:`busybox_init` writes the ``/init`` script: busybox applets, proc,
  sysfs, devtmpfs, quiet printk, ``insmod`` of the given modules, then the
  caller's shell commands, then every file the commands left in ``/out``
  goes to the console as framed base64 (see :func:`read_results`), then
  power-off.
- :func:`boot` runs one VM with a hard timeout (the VM is killed and
  :class:`VmError` raised with the console's tail), keeps the console log,
  and times the run.

Never KVM: nested KVM hangs on the CI machines, so ``-accel tcg`` always.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Optional

import attrs

__all__ = [
    "BootResult",
    "Machine",
    "VmError",
    "boot",
    "busybox_init",
    "read_results",
]


class VmError(RuntimeError):
    """The VM did not produce its results (timeout, crash, truncated console)."""


@attrs.frozen
class Machine:
    """What QEMU emulates: architecture, console, memory, optional disk."""

    arch: str = "x86_64"
    memory_mb: int = 512
    cpus: int = 1
    #: A raw disk image attached as namespace 1 of an NVMe controller
    #: (``root=/dev/nvme0n1`` in the kernel command line boots from it).
    disk: Optional[Path] = None
    #: QEMU's ``-cpu`` model (aarch64 only; x86_64 uses QEMU's default).
    cpu: str = "cortex-a72"

    @classmethod
    def aarch64(cls, **kwargs: object) -> Machine:
        return cls(arch="aarch64", **kwargs)  # type: ignore[arg-type]

    @property
    def qemu(self) -> str:
        return f"qemu-system-{self.arch}"

    @property
    def console(self) -> str:
        return {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}[self.arch]

    def machine_args(self) -> list[str]:
        if self.arch == "aarch64":
            return ["-M", "virt,gic-version=3", "-cpu", self.cpu]
        return ["-M", "q35"] if self.disk is not None else []

    def argv(self, kernel: Path, initrd: Optional[Path], append: str) -> list[str]:
        """The QEMU command line: TCG, no display, the serial console on stdio."""
        cmd = [self.qemu, *self.machine_args(), "-accel", "tcg,thread=multi"]
        cmd += ["-m", str(self.memory_mb), "-smp", str(self.cpus)]
        cmd += ["-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"]
        cmd += ["-kernel", str(kernel)]
        if initrd is not None:
            cmd += ["-initrd", str(initrd)]
        if self.disk is not None:
            cmd += ["-drive", f"file={self.disk},if=none,id=disk0,format=raw"]
            cmd += ["-device", "nvme,serial=binfmt0,id=nvme0"]
            cmd += ["-device", "nvme-ns,drive=disk0,nsid=1"]
        cmd += ["-append", f"console={self.console} panic=-1 {append}".strip()]
        return cmd


@attrs.frozen
class BootResult:
    """One VM run."""

    console: bytes
    #: Wall-clock seconds from starting QEMU to its exit.
    seconds: float
    #: Seconds until ``/init`` printed its first line.
    init_seconds: Optional[float]
    returncode: int
    log: Optional[Path] = None

    def results(self) -> dict[str, bytes]:
        return read_results(self.console)


# The shell side of read_results(): gzip, base64, a count and a checksum,
# and a blank line before every framed line (firmware escape codes or a
# kernel message can share a console line; a line of its own survives).
_EMIT = r"""
emit() {
    gzip -c "$1" > /tmp/emit.gz
    n=$(base64 /tmp/emit.gz | wc -l)
    sum=$(sha256sum /tmp/emit.gz | cut -d' ' -f1)
    size=$(wc -c < /tmp/emit.gz)
    echo; echo "@@BEGIN $2 $size $n $sum"
    base64 /tmp/emit.gz | awk '{ printf "\n@@%d %s\n", NR, $0 }'
    echo; echo "@@END $2"
}
"""


def busybox_init(commands: str, modules: Sequence[str] = ()) -> str:
    """The ``/init`` script: set up, run ``commands`` (sh), emit ``/out/*``, power off."""
    insmods = "".join(f"insmod {m} || echo '@@ERROR insmod {m}'\n" for m in modules)
    return f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk
mkdir -p /tmp /out
echo; echo "@@INIT $(cut -d' ' -f1 /proc/uptime)"
{_EMIT}
{insmods}
cd /
(
{commands}
)
echo; echo "@@RAN $(cut -d' ' -f1 /proc/uptime)"
for f in /out/*; do
    [ -f "$f" ] && emit "$f" "${{f##*/}}"
done
echo; echo "@@DONE"
sync
poweroff -f
"""


_LINE = re.compile(rb"@@(\d+) ([A-Za-z0-9+/=]+)\r?$")
_BEGIN = re.compile(rb"@@BEGIN (\S+) (\d+) (\d+) ([0-9a-f]{64})\r?$")
_END = re.compile(rb"@@END (\S+)\r?$")


def read_results(console: bytes) -> dict[str, bytes]:
    """The files the guest emitted, decompressed; :class:`VmError` if any is incomplete.

    Each file is framed as ``@@BEGIN name size lines sha256``, numbered
    base64 lines ``@@N …``, ``@@END name``; the count and the checksum of
    the gzip stream detect a truncated or garbled console.
    """
    files: dict[str, bytes] = {}
    current: Optional[tuple[str, int, int, str]] = None
    lines: list[bytes] = []
    for raw in console.split(b"\n"):
        line = raw.rstrip(b"\r")
        at = line.find(b"@@")
        if at < 0:
            continue
        line = line[at:]
        m = _BEGIN.match(line)
        if m:
            current = (m.group(1).decode(), int(m.group(2)), int(m.group(3)), m.group(4).decode())
            lines = []
            continue
        if current is None:
            continue
        m = _LINE.match(line)
        if m:
            if int(m.group(1)) != len(lines) + 1:
                raise VmError(f"{current[0]}: console line {m.group(1).decode()} out of order")
            lines.append(m.group(2))
            continue
        m = _END.match(line)
        if m and m.group(1).decode() == current[0]:
            name, size, count, digest = current
            data = base64.b64decode(b"".join(lines))
            if len(lines) != count or len(data) != size:
                raise VmError(f"{name}: {len(lines)} of {count} lines, {len(data)} of {size} bytes")
            if hashlib.sha256(data).hexdigest() != digest:
                raise VmError(f"{name}: checksum mismatch (garbled console)")
            files[name] = gzip.decompress(data)
            current = None
    if current is not None:
        raise VmError(f"{current[0]}: the console ended inside the file (truncated)")
    if b"@@DONE" not in console:
        raise VmError("the guest did not finish (no @@DONE on the console)")
    return files


def boot(
    machine: Machine,
    kernel: Path,
    initrd: Optional[Path],
    *,
    append: str = "",
    timeout: float = 300,
    log: Optional[Path] = None,
) -> BootResult:
    """Run one VM until it powers off; kill it and raise :class:`VmError` after ``timeout``."""
    if shutil.which(machine.qemu) is None:
        raise VmError(f"{machine.qemu} is not installed (tests/vm/setup.sh installs it)")
    cmd = machine.argv(kernel, initrd, append)
    start = time.monotonic()
    chunks: list[bytes] = []
    first_init: list[float] = []
    sink: Optional[IO[bytes]] = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        sink = open(log, "wb")  # noqa: SIM115 (closed below, after the reader)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )

    assert proc.stdout is not None
    fd = proc.stdout.fileno()

    def reader() -> None:
        tail = b""
        for block in iter(lambda: os.read(fd, 65536), b""):
            chunks.append(block)
            if sink is not None:
                sink.write(block)
            if not first_init and b"@@INIT" in tail + block:
                first_init.append(time.monotonic() - start)
            tail = (tail + block)[-8:]  # blocks may be one byte each (pl011)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        thread.join(5)
        tail = b"".join(chunks)[-3000:].decode(errors="replace")
        raise VmError(
            f"VM timed out after {timeout:.0f} s and was killed ({' '.join(cmd[:1])} "
            f"{kernel.name}); console tail:\n{tail}"
        ) from None
    finally:
        thread.join(10)
        if sink is not None:
            sink.close()
    return BootResult(
        console=b"".join(chunks),
        seconds=time.monotonic() - start,
        init_seconds=first_init[0] if first_init else None,
        returncode=returncode,
        log=log,
    )
