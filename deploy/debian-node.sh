#!/bin/sh
# A Debian or Ubuntu node's boot script (docs/guides/node.rst, "In a boot
# script"): Debian's static QEMU emulators, binfmt in a virtual environment,
# the same entries as deploy/daemonset.yaml and deploy/eks-user-data.sh
# (/usr/bin/qemu-*-static, flag F), written into /etc/binfmt.d so that
# systemd-binfmt registers them at every boot, then proven and checked.
# Set the variable below first. tests/test_node_vm.py runs this script on a
# booted Debian 12 node.
set -eu

# What pip installs as binfmt: a clone of this repository, or a wheel built
# from it with 'python3 -m pip wheel --no-deps .'. pip also needs attrs and
# pyelftools from PyPI or your mirror (PIP_INDEX_URL).
BINFMT_REQUIREMENT=""
if [ -z "$BINFMT_REQUIREMENT" ]; then
    echo "debian-node: set BINFMT_REQUIREMENT" >&2
    exit 1
fi

# Debian's package registers its own entries as soon as it is installed
# (/usr/lib/binfmt.d/qemu-*.conf: its /usr/libexec/qemu-binfmt wrappers, flags
# OPF). --replace below swaps them for the plain static emulators, and the
# files that export writes into /etc/binfmt.d override the package's files of
# the same names.
apt-get install -y qemu-user-static python3-venv

# Debian 12 and Ubuntu 23.04+ refuse pip installs into the system Python
# (PEP 668): binfmt gets a virtual environment of its own.
python3 -m venv /opt/binfmt
/opt/binfmt/bin/pip install --quiet "$BINFMT_REQUIREMENT"
ln -sf /opt/binfmt/bin/binfmt /usr/local/bin/binfmt
PATH=/opt/binfmt/bin:$PATH

binfmt install --qemu-path /usr/bin --qemu-suffix -static --persistent --replace all
binfmt export --current --dir /etc/binfmt.d
mkdir -p /opt/binfmt/empty-root
binfmt verify --rootfs /opt/binfmt/empty-root
binfmt doctor --platform linux/arm64
