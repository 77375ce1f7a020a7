#!/usr/bin/env python3
"""Make ``tests/data/images/app-amd64.tar.gz``: a tiny amd64 image root, for the docs.

    python tests/tools/make_image_archive.py

What ``docker export`` of a small amd64 application image holds, cut down to
what ``scan --tar`` reads: the programs are ELF headers and program headers
only (no code), so the archive stays a few kilobytes. Deterministic: fixed
owners, times and order, gzip without a time stamp.
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from binfmt import qemu  # noqa: E402
from tests.test_elf import make_elf  # noqa: E402

PT_INTERP = 3
X86_64, I386, AARCH64 = 62, 3, 183
LOADER = "/lib64/ld-linux-x86-64.so.2"


def members() -> list[tuple[str, str, object]]:
    """(path, kind, content or link target), in archive order."""
    return [
        ("bin", "dir", None),
        ("bin/busybox", "file", qemu.get("x86_64").header(2)),
        ("bin/sh", "symlink", "busybox"),
        ("lib", "dir", None),
        ("lib/x86_64-linux-gnu", "dir", None),
        ("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "file", make_elf([])),
        ("lib64", "dir", None),
        ("lib64/ld-linux-x86-64.so.2", "symlink", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        ("usr", "dir", None),
        ("usr/bin", "dir", None),
        ("usr/bin/app", "file", make_elf([(PT_INTERP, LOADER.encode() + b"\0")])),
        ("usr/bin/app-server", "hardlink", "usr/bin/app"),
        ("usr/bin/legacy-i386", "file", qemu.get("i386").header(2)),
        ("usr/bin/helper-arm64", "file", qemu.get("aarch64").header(2)),
        ("usr/bin/report.py", "file", b"#!/usr/bin/python3\nprint('report')\n"),
        ("usr/local", "dir", None),
        ("usr/local/bin", "dir", None),
        ("usr/local/bin/entrypoint.sh", "file", b'#!/bin/sh\nexec /usr/bin/app "$@"\n'),
        ("etc", "dir", None),
        ("etc/app.conf", "data", b"listen = 8080\n"),
    ]


def build() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, kind, content in members():
            info = tarfile.TarInfo(path)
            info.mtime = 1767225600
            info.uname = info.gname = "root"
            data = b""
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, str(content), 0o777
            elif kind == "hardlink":
                info.type, info.linkname, info.mode = tarfile.LNKTYPE, str(content), 0o755
            else:
                assert isinstance(content, bytes)
                data = content
                info.size = len(data)
                info.mode = 0o644 if kind == "data" else 0o755
            tar.addfile(info, io.BytesIO(data) if data else None)
    return gzip.compress(raw.getvalue(), mtime=0)


def main() -> int:
    out = ROOT / "tests" / "data" / "images" / "app-amd64.tar.gz"
    out.write_bytes(build())
    print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
