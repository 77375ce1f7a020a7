"""``python -m tests.vm.fetch``: download (once) what the VM layers boot: kernels, busybox, the
arm64 node's packages (unpacked into its cached root)."""

from __future__ import annotations

import sys
import time

from . import arm64, kernels


def main() -> int:
    start = time.monotonic()
    for package in kernels.MATRIX:
        kernel = kernels.fetch(package)
        note = " (substituted: the pinned package is gone)" if kernel.substituted else ""
        print(f"{package.line}: {kernel.deb.path.name} -> {kernel.release}{note}")
    print(f"busybox: {kernels.busybox()}")
    for package in kernels.ARM64:
        kernel = kernels.fetch(package)
        print(f"arm64 {package.line}: {kernel.deb.path.name} -> {kernel.release}")
    print(f"arm64 node root: {arm64.base_root()}")
    print(f"fetched in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
