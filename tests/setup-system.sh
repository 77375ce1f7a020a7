#!/bin/sh
# Install what the kernel and QEMU test layers need (Debian/Ubuntu, as root):
# Debian's qemu-user-static (the emulators), util-linux (unshare), file(1)
# (a benchmark baseline), shellcheck (the deploy scripts' lint), strace
# (fault injection), systemd (its systemd-binfmt binary, run against a
# private instance; systemd itself is never started), and real
# foreign-architecture Debian binaries
# (tests/fetch-debian.sh). Safe to run again.
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "setup-system.sh: error: run as root (it uses apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
missing=""
for pkg in qemu-user-static util-linux file dpkg-dev python3-venv shellcheck strace systemd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    # With foreign architectures added, apt-get update can exit 100 for one
    # missing index while everything needed loads: check the install instead.
    apt-get update -q || echo "setup-system.sh: apt-get update exited $? (checking packages instead)" >&2
    # binfmt-support is kept out: it would register entries in the host's
    # global binfmt_misc, which the tests never touch.
    apt-get install -y -q --no-install-recommends $missing binfmt-support-
fi
for tool in qemu-aarch64-static unshare file shellcheck strace; do
    command -v "$tool" >/dev/null 2>&1 || { echo "setup-system.sh: error: $tool missing after install" >&2; exit 1; }
done
tests/fetch-debian.sh tests/.cache/debian
tests/vm/setup.sh  # the kernel matrix: qemu-system-x86 and gcc (kernels are fetched by the tests)
tests/node_vm/setup.sh  # the node-VM layer: mmdebstrap, qemu-system-x86, e2fsprogs
# Debian's update-binfmts, unpacked (never installed: its postinst would
# register formats in the host's global binfmt_misc), for the differential
# test of the Debian format files.
if [ ! -x tests/.cache/binfmt-support/usr/sbin/update-binfmts ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -q binfmt-support) || true
    deb=$(ls "$tmp"/binfmt-support_*.deb 2>/dev/null | head -n 1)
    [ -n "$deb" ] || { echo "setup-system.sh: error: apt-get download binfmt-support failed" >&2; exit 1; }
    rm -rf tests/.cache/binfmt-support
    dpkg-deb -x "$deb" tests/.cache/binfmt-support
    rm -rf "$tmp"
fi
