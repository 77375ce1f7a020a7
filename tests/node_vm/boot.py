"""Boot an x86_64 guest under QEMU's TCG, and fetch Debian packages by name.

Written to be merged with the shared VM toolkit (``tests/vm/boot.py``): two
functions with no knowledge of what the guest does.

- :func:`qemu_command` builds the ``qemu-system-x86_64`` command line: TCG
  only (never KVM: nested virtualisation is not available on CI machines),
  no network, no display, the serial console into a file, every disk a
  namespace of one NVMe controller (Debian's cloud kernel has NVMe and ext4
  built in, so no initrd is needed).
- :func:`boot` runs it with a hard timeout and returns the serial output.
- :func:`fetch_debs` downloads ``.deb`` files into a cache directory with
  ``apt-get download``, each once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Optional

__all__ = ["BootResult", "Disk", "boot", "fetch_debs", "qemu_command"]


class Disk(NamedTuple):
    """A disk image; the n-th disk given is NVMe namespace n (``/dev/nvme0n<n>``).

    ``cache="unsafe"`` ignores the guest's flushes: for throwaway overlays,
    where they cost much under TCG and protect nothing.
    """

    path: Path
    format: str = "raw"
    cache: str = "writeback"


class BootResult(NamedTuple):
    """How a boot ended: the emulator's exit status, or ``None`` when it was killed."""

    returncode: Optional[int]
    timed_out: bool
    seconds: float
    serial: str


def qemu_command(
    kernel: Path,
    disks: Sequence[Disk],
    *,
    append: str,
    serial_log: Path,
    memory_mib: int = 2048,
    cpus: int = 2,
    initrd: Optional[Path] = None,
    no_reboot: bool = True,
) -> list[str]:
    """The command line that boots ``kernel`` with ``disks`` as /dev/nvme0n1, n2 …

    With ``no_reboot`` (the default) the emulator exits when the guest reboots,
    as when it powers off: the caller starts the next boot, as a power cycle.
    A reboot inside one emulator process costs about 50 s of TCG time in the
    next boot's first second of systemd, seen on every run here.
    """
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg,thread=multi",
        "-machine",
        "q35",
        # Every feature TCG emulates (x86-64-v2 and later for the guest's
        # programs). "max,svm=off" looks tidier but its guest cannot mount
        # anything ("Mount process finished, but there is no mount").
        "-cpu",
        "max",
        "-smp",
        str(cpus),
        "-m",
        str(memory_mib),
        "-no-user-config",
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-nic",
        "none",
        "-serial",
        f"file:{serial_log}",
        "-kernel",
        str(kernel),
        "-append",
        append,
        "-device",
        "nvme,serial=nodevm,id=nvme0",
    ]
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    if no_reboot:
        argv.append("-no-reboot")
    for nsid, disk in enumerate(disks, start=1):
        argv += [
            "-drive",
            f"file={disk.path},if=none,id=disk{nsid},format={disk.format},cache={disk.cache}",
            "-device",
            f"nvme-ns,drive=disk{nsid},bus=nvme0,nsid={nsid}",
        ]
    return argv


def boot(argv: Sequence[str], *, timeout: float, serial_log: Path) -> BootResult:
    """Run ``argv`` (from :func:`qemu_command`) until the guest powers off, or kill it."""
    start = time.monotonic()
    with subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
            returncode: Optional[int] = process.returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            returncode = None
            timed_out = True
    seconds = time.monotonic() - start
    serial = serial_log.read_text(errors="replace") if serial_log.exists() else ""
    if output.strip():
        serial += "\n[qemu] " + output.decode(errors="replace")
    return BootResult(returncode, timed_out, seconds, serial)


def fetch_debs(names: Sequence[str], cache: Path) -> dict[str, Path]:
    """``{name: path}`` of each package (``pkg`` or ``pkg:arch``), downloaded into ``cache`` once.

    A package already in the cache is not downloaded again; the cache's key is
    the caller's business (the archive here is a fixed snapshot).
    """
    cache.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for name in names:
        package, _, arch = name.partition(":")
        arch = arch or _native_arch()
        present = sorted(cache.glob(f"{package}_*_{arch}.deb"))
        if not present:
            with tempfile.TemporaryDirectory(dir=cache) as temp:
                # apt-get download as root warns that it downloads "unsandboxed":
                # the _apt user cannot write here. Harmless.
                subprocess.run(
                    ["apt-get", "-q", "download", f"{package}:{arch}"],
                    cwd=temp,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                (deb,) = Path(temp).glob("*.deb")
                shutil.move(os.fspath(deb), cache / deb.name)
            present = sorted(cache.glob(f"{package}_*_{arch}.deb"))
        found[name] = present[-1]
    return found


def _native_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
