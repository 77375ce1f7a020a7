"""``python -m tests.vm.fetch``: download (once) what the matrix boots: its kernels, busybox."""

from __future__ import annotations

import sys
import time

from . import kernels


def main() -> int:
    start = time.monotonic()
    for package in kernels.MATRIX:
        kernel = kernels.fetch(package)
        note = " (substituted: the pinned package is gone)" if kernel.substituted else ""
        print(f"{package.line}: {kernel.deb.path.name} -> {kernel.release}{note}")
    print(f"busybox: {kernels.busybox()}")
    print(f"fetched in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
