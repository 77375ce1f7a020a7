#!/bin/sh
# Install what the VM layers (tests/vm: tests/test_kernel_matrix.py and
# tests/test_arm64_node.py) need on the host, as root: qemu-system-x86 and
# qemu-system-arm (TCG only, never KVM), gcc and libc6-dev (the static guest
# helper) and their aarch64 cross versions (the same helper for the arm64
# kernel), e2fsprogs (mkfs.ext4 -d makes the arm64 node's disk). Nothing of
# the arm64 root is installed here: the test unpacks Debian's arm64
# packages into a cache itself. The initramfs and the modules are
# handled in Python, so neither cpio nor xz is needed. The kernels and busybox
# are fetched by the tests themselves into tests/.cache/vm, once (cached by
# package name and version; `python3 -m tests.vm.fetch` does it ahead of time).
# Idempotent. Another installer may hold the dpkg lock for a while: apt waits
# for it (DPkg::Lock::Timeout).
set -eu
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
    echo "tests/vm/setup.sh: error: run as root (it uses apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt="apt-get -q -o DPkg::Lock::Timeout=600"
missing=""
for pkg in qemu-system-x86 qemu-system-arm gcc libc6-dev dpkg-dev e2fsprogs \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    # With foreign architectures added, apt-get update can exit 100 for one
    # missing index while everything needed loads: check the install instead.
    $apt update || echo "tests/vm/setup.sh: apt-get update exited $? (checking packages instead)" >&2
    $apt install -y --no-install-recommends $missing
fi
PATH="$PATH:/usr/sbin:/sbin"
for tool in qemu-system-x86_64 qemu-system-aarch64 gcc aarch64-linux-gnu-gcc dpkg-deb mkfs.ext4; do
    command -v "$tool" >/dev/null 2>&1 || { echo "tests/vm/setup.sh: error: $tool missing after install" >&2; exit 1; }
done
