#!/bin/sh
# Install what the node-VM test layer (tests/test_node_vm.py) needs on a
# Debian/Ubuntu host, as root: mmdebstrap (the node image), qemu-system-x86
# (the node, TCG only), qemu-utils (copy-on-write disks), e2fsprogs (mkfs.ext4
# -d and debugfs), shellcheck. Safe to run again: installs only what is missing.
set -eu
if [ "$(id -u)" != 0 ]; then
    echo "node_vm/setup.sh: error: run as root (it uses apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt="apt-get -o DPkg::Lock::Timeout=600 -q"
missing=""
for pkg in mmdebstrap qemu-system-x86 qemu-utils e2fsprogs shellcheck; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    # With foreign architectures added, apt-get update can exit 100 for one
    # missing index while everything needed loads: the install below tells.
    $apt update || echo "node_vm/setup.sh: apt-get update exited $? (checking the install instead)" >&2
    # shellcheck disable=SC2086  # word lists
    $apt install -y --no-install-recommends $missing
fi
for tool in mmdebstrap qemu-system-x86_64 qemu-img mkfs.ext4 debugfs shellcheck; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "node_vm/setup.sh: error: $tool missing after install" >&2
        exit 1
    }
done
