"""Debian's kernels, by package name, unpacked into the cache with their binfmt_misc module.

:data:`MATRIX` names the kernel packages CI boots, one per line the nodes
run (5.10 bullseye, 6.1 bookworm, 6.12 trixie); :data:`ARM64` the arm64
kernel CI boots under ``qemu-system-aarch64``; :data:`EXTRA` older builds
of the same lines that were booted once to find which stable release first
had a fix (``python -m tests.vm.matrix --kernels all``). A pinned package
that the archive no longer serves is replaced by the newest one matching
its line's pattern, and the run says so.
"""

from __future__ import annotations

import lzma
import re
from pathlib import Path
from typing import Optional

import attrs

from .debs import CACHE, Apt, Deb, extract

__all__ = ["ARM64", "EXTRA", "MATRIX", "Kernel", "KernelPackage", "busybox", "fetch"]


@attrs.frozen
class KernelPackage:
    """A Debian kernel package: where it lives and what else would do."""

    line: str
    suite: str
    name: str
    #: Any package of the same line (the fallback when ``name`` is gone).
    pattern: str
    arch: str = "amd64"


def _pkg(line: str, suite: str, name: str, pattern: str) -> KernelPackage:
    return KernelPackage(line, suite, name, pattern)


_P510 = "linux-image-5.10.0-*-cloud-amd64-unsigned"
_P61 = "linux-image-6.1.0-*-cloud-amd64-unsigned"
_P612 = "linux-image-6.12.*+deb13-cloud-amd64-unsigned"

#: What CI boots on every run: the newest build of each line (measured in docs/kernel.rst).
MATRIX = (
    _pkg("5.10", "bullseye", "linux-image-5.10.0-32-cloud-amd64-unsigned", _P510),
    _pkg("6.1", "bookworm", "linux-image-6.1.0-57-cloud-amd64-unsigned", _P61),
    _pkg("6.12", "trixie", "linux-image-6.12.117+deb13-cloud-amd64-unsigned", _P612),
)

#: The arm64 kernels CI boots (``tests/test_arm64_node.py``): bookworm's cloud
#: kernel, the one Debian's arm64 cloud images (and a Graviton node) run.
ARM64 = (
    KernelPackage(
        "6.1",
        "bookworm",
        "linux-image-6.1.0-57-cloud-arm64-unsigned",
        "linux-image-6.1.0-*-cloud-arm64-unsigned",
        arch="arm64",
    ),
)

#: Older builds, booted to date the stable backports (not in CI).
EXTRA = tuple(
    [
        _pkg("5.10", "bullseye", f"linux-image-5.10.0-{abi}-cloud-amd64-unsigned", _P510)
        for abi in (30,)
    ]
    + [
        _pkg("6.1", "bookworm", f"linux-image-6.1.0-{abi}-cloud-amd64-unsigned", _P61)
        for abi in (47, 50, 53, 54, 55)
    ]
    + [
        _pkg("6.12", "trixie", f"linux-image-6.12.{patch}+deb13-cloud-amd64-unsigned", _P612)
        for patch in (107,)
    ]
)


@attrs.frozen
class Kernel:
    """An unpacked kernel: image, binfmt_misc module (decompressed), identity."""

    package: KernelPackage
    deb: Deb
    #: ``uname -r``.
    release: str
    vmlinuz: Path
    #: ``binfmt_misc.ko``, ready for busybox ``insmod``; ``None`` if built in.
    module: Optional[Path]
    #: The package named in the table was gone and this one replaced it.
    substituted: bool = False


def fetch(package: KernelPackage, cache: Path = CACHE) -> Kernel:
    """Download (once) and unpack the kernel; fall back to its line's newest build."""
    apt = Apt(package.suite, package.arch, cache=cache)
    substituted = False
    if apt.cached(package.name) is None and apt.version(package.name) is None:
        candidates = apt.search(package.pattern)
        if not candidates:
            raise RuntimeError(f"no package matches {package.pattern} in {package.suite}")
        package = attrs.evolve(package, name=candidates[-1])
        substituted = True
    deb = apt.fetch(package.name)
    root = extract(
        deb.path,
        cache / "kernels" / deb.path.stem,
        members=("./boot/vmlinuz", "./boot/config"),
        pattern=r"/kernel/fs/binfmt_misc\.ko",
    )
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise RuntimeError(f"{deb.path.name}: expected one boot/vmlinuz-*, found {images}")
    release = images[0].name[len("vmlinuz-") :]
    config = (root / "boot" / f"config-{release}").read_text()
    module: Optional[Path] = None
    if re.search(r"^CONFIG_BINFMT_MISC=m$", config, re.M):
        found = [
            p
            for base in ("lib/modules", "usr/lib/modules")
            for p in (root / base / release / "kernel" / "fs").glob("binfmt_misc.ko*")
        ]
        if not found:
            raise RuntimeError(f"{deb.path.name}: CONFIG_BINFMT_MISC=m but no binfmt_misc.ko*")
        module = root / "binfmt_misc.ko"
        if not module.exists():
            data = found[0].read_bytes()
            if found[0].suffix == ".xz":
                data = lzma.decompress(data)
            elif found[0].suffix != ".ko":
                raise RuntimeError(f"cannot decompress {found[0].name} for insmod")
            module.write_bytes(data)
    elif not re.search(r"^CONFIG_BINFMT_MISC=y$", config, re.M):
        raise RuntimeError(f"{deb.path.name}: built without binfmt_misc")
    return Kernel(package, deb, release, images[0], module, substituted)


def busybox(arch: str = "amd64", suite: str = "bookworm", cache: Path = CACHE) -> Path:
    """Debian's static busybox for ``arch``, unpacked once."""
    deb = Apt(suite, arch, cache=cache).fetch("busybox-static")
    root = extract(deb.path, cache / "busybox" / deb.path.stem, members=("./bin/busybox",))
    return root / "bin" / "busybox"
