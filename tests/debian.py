"""Real foreign-architecture Debian binaries and Debian's QEMU registrations, for tests.

``tests/fetch-debian.sh`` (run by ``tests/setup-system.sh``) extracts
busybox-static, hello and libc6 per architecture into ``tests/.cache/debian``.
"""

from __future__ import annotations

from pathlib import Path

from binfmt.testing import require_or_skip

CACHE = Path(__file__).parent / ".cache" / "debian"
BINFMT_D = Path("/usr/lib/binfmt.d")

#: Debian architecture → (QEMU target, Debian's dynamic loader path)
ARCHES = {
    "arm64": ("aarch64", "/lib/ld-linux-aarch64.so.1"),
    "armhf": ("arm", "/lib/ld-linux-armhf.so.3"),
    "armel": ("arm", "/lib/ld-linux.so.3"),
    "i386": ("i386", "/lib/ld-linux.so.2"),
    "mips64el": ("mips64el", "/lib64/ld.so.1"),
    "mipsel": ("mipsel", "/lib/ld.so.1"),
    "ppc64el": ("ppc64le", "/lib64/ld64.so.2"),
    "s390x": ("s390x", "/lib/ld64.so.1"),
}


def debian_root(arch: str) -> Path:
    """The extracted tree of ``arch``, or skip (fail under BINFMT_REQUIRE_ALL=1)."""
    root = CACHE / arch
    if not (root / ".fetched").exists():
        require_or_skip(f"Debian {arch} binaries not fetched: run tests/fetch-debian.sh")
    return root


def debian_qemu_lines() -> list[str]:
    """The register lines Debian's qemu-user-static installs in /usr/lib/binfmt.d."""
    confs = sorted(BINFMT_D.glob("qemu-*.conf"))
    if not confs:
        require_or_skip("Debian's qemu-user-static is not installed (no /usr/lib/binfmt.d/qemu-*)")
    lines = []
    for conf in confs:
        # systemd strips blanks before it looks for a comment (apply_file()).
        stripped = (line.strip() for line in conf.read_text().splitlines())
        lines += [line for line in stripped if line and not line.startswith(("#", ";"))]
    return lines


def install_all_argv(procfs: str) -> list[str]:
    """The node set-up command (``install … --persistent all``) against ``procfs``."""
    return [
        "install",
        "--procfs",
        procfs,
        "--qemu-path",
        "/usr/bin",
        "--qemu-suffix",
        "-static",
        "--persistent",
        "all",
    ]
