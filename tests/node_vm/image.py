"""The two Debian 12 roots of the node-VM layer, built with mmdebstrap and cached.

- The **node**: systemd, udev, containerd and runc, Python with venv, curl,
  and Debian's 6.1 cloud kernel (its modules in the root, its image beside
  it), as an ext4 disk image made with ``mkfs.ext4 -d`` (no loop mount).
  ``tests/node_vm/customize.sh`` adds the unit that runs the test driver.
- The **DaemonSet image's base**: what ``deploy/Dockerfile``'s first ``RUN``
  installs on ``debian:bookworm-slim`` (Debian's ``qemu-user-static``,
  ``python3``, ``python3-venv``, without ``binfmt-support``), as a directory.
  The Dockerfile's base image cannot be pulled in CI; mmdebstrap's
  ``minbase`` variant is what Debian's slim images are made of.

Each is cached under ``tests/.cache/node-vm/`` in a directory named by a hash
of its inputs (package lists, options, the hook script, the kernel package,
the apt sources used), so a second run skips the build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from .boot import fetch_debs

__all__ = ["DaemonSetBase", "NodeImage", "daemonset_base", "node_image"]

HERE = Path(__file__).resolve().parent
CUSTOMIZE = HERE / "customize.sh"
#: The apt sources of this host: the image gets the same (snapshot) archive.
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
SUITE = "bookworm"
#: The node: what a Debian 12 Kubernetes worker has for this story.
NODE_PACKAGES = (
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",
    "containerd",
    "runc",
    "python3",
    "python3-venv",
    "curl",
    "ca-certificates",
    "procps",
)
#: deploy/Dockerfile's apt-get install line (binfmt-support is not a
#: Recommends mmdebstrap installs: it installs none).
DAEMONSET_PACKAGES = ("qemu-user-static", "python3", "python3-venv")
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
#: The archive is a fixed snapshot whose Release files have expired.
APT_OPTIONS = ('Acquire::Check-Valid-Until "false"',)
#: As in Debian's slim images: no documentation.
DPKG_OPTIONS = ("path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/man/*")
ROOT_SIZE = "3G"


class NodeImage(NamedTuple):
    """The node's root disk (ext4, raw), its kernel and the kernel's release."""

    disk: Path
    kernel: Path
    release: str
    build_seconds: float


class DaemonSetBase(NamedTuple):
    """The image's Debian root (a directory: copy it, never modify it)."""

    root: Path
    build_seconds: float


def _key(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(part.read_bytes())
        else:
            h.update(json.dumps(part, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _kernel_package() -> str:
    """The kernel package the metapackage depends on now (in the key: a new one rebuilds)."""
    out = subprocess.run(
        ["apt-cache", "depends", KERNEL_METAPACKAGE], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        kind, _, name = line.strip().partition(": ")
        if kind == "Depends" and name.startswith("linux-image-"):
            return name
    raise RuntimeError(f"{KERNEL_METAPACKAGE} depends on no linux-image package:\n{out}")


def _mmdebstrap(root: Path, packages: Sequence[str], hooks: Sequence[str] = ()) -> None:
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        "--include=" + ",".join(packages),
        *(f"--aptopt={o}" for o in APT_OPTIONS),
        *(f"--dpkgopt={o}" for o in DPKG_OPTIONS),
        *(f"--customize-hook={h}" for h in hooks),
        SUITE,
        os.fspath(root),
        os.fspath(SOURCES),
    ]
    log = root.parent / (root.name + ".mmdebstrap.log")
    with open(log, "w") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"mmdebstrap failed ({done.returncode}):\n{log.read_text()[-4000:]}")


def _fresh(directory: Path) -> Path:
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def node_image(cache: Path) -> NodeImage:
    """The node image, built (about 30 s to 3 min) unless the cache has it."""
    kernel_package = _kernel_package()
    key = _key(
        NODE_PACKAGES,
        APT_OPTIONS,
        DPKG_OPTIONS,
        SUITE,
        ROOT_SIZE,
        kernel_package,
        CUSTOMIZE,
        SOURCES,
    )
    directory = cache / f"node-{key}"
    meta = directory / "image.json"
    if not meta.exists():
        start = time.monotonic()
        partial = _fresh(directory)
        (deb,) = fetch_debs([kernel_package], cache / "debs").values()
        root = partial / "root"
        hook = f'{CUSTOMIZE} "$1" {deb}'
        _mmdebstrap(root, NODE_PACKAGES, [hook])
        (vmlinuz,) = (root / "boot").glob("vmlinuz-*")
        release = vmlinuz.name[len("vmlinuz-") :]
        shutil.copy(vmlinuz, partial / "vmlinuz")
        subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "node-root",
                "-d",
                root,
                partial / "root.img",
                ROOT_SIZE,
            ],
            check=True,
        )
        shutil.rmtree(root)
        seconds = time.monotonic() - start
        (partial / "image.json").write_text(
            json.dumps(
                {"release": release, "kernel_package": kernel_package, "build_seconds": seconds}
            )
        )
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
    info = json.loads(meta.read_text())
    return NodeImage(
        directory / "root.img", directory / "vmlinuz", info["release"], info["build_seconds"]
    )


def daemonset_base(cache: Path) -> DaemonSetBase:
    """The DaemonSet image's Debian root, built unless cached."""
    key = _key(DAEMONSET_PACKAGES, APT_OPTIONS, DPKG_OPTIONS, SUITE, SOURCES)
    directory = cache / f"daemonset-{key}"
    meta = directory / "root.json"
    if not meta.exists():
        start = time.monotonic()
        partial = _fresh(directory)
        root = partial / "root"
        _mmdebstrap(root, DAEMONSET_PACKAGES)
        # A container runtime provides /dev, /proc and /sys: an image has the
        # empty directories only.
        for special in ("dev", "proc", "sys"):
            shutil.rmtree(root / special)
            (root / special).mkdir()
        seconds = time.monotonic() - start
        (partial / "root.json").write_text(json.dumps({"build_seconds": seconds}))
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
    info = json.loads(meta.read_text())
    return DaemonSetBase(directory / "root", info["build_seconds"])
