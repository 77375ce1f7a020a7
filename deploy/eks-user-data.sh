#!/bin/sh
# EKS node user data for Amazon Linux 2023: the boot script of "Fun with EKS
# and multiarch", done with binfmt. Put it in the launch template's MIME
# multi-part user data as a text/x-shellscript part, beside nodeadm's
# NodeConfig part. It
#
#   1. puts Debian's static QEMU emulators into /usr/bin (Amazon Linux 2023
#      packages no QEMU);
#   2. installs binfmt into /opt/binfmt;
#   3. registers every foreign architecture with F (binfmt install ... all);
#   4. proves that emulation works (binfmt verify), or fails the script;
#   5. writes the registrations into /etc/binfmt.d, so that systemd-binfmt
#      registers them again at every boot (cloud-init runs this once).
#
# Paths and flags are those of deploy/daemonset.yaml (/usr/bin/qemu-*-static,
# F), so both can run on one node: the DaemonSet finds the entries identical
# and leaves them alone. Set the five variables below first.
# See docs/guides/kubernetes.rst.
set -eu

# Debian's qemu-user-static package (.deb) for each node architecture, and its
# SHA-256: for example the one deploy/Dockerfile installs, copied into your own
# bucket (the Debian archive drops superseded versions).
QEMU_DEB_URL_AMD64=""
QEMU_DEB_SHA256_AMD64=""
QEMU_DEB_URL_ARM64=""
QEMU_DEB_SHA256_ARM64=""
# What pip installs as binfmt, e.g. the URL of a wheel you built with
# 'python3 -m pip wheel --no-deps .'. pip also needs attrs and pyelftools from
# PyPI or your mirror (PIP_INDEX_URL).
BINFMT_REQUIREMENT=""

case "$(uname -m)" in
    x86_64) url=$QEMU_DEB_URL_AMD64 sha256=$QEMU_DEB_SHA256_AMD64 ;;
    aarch64) url=$QEMU_DEB_URL_ARM64 sha256=$QEMU_DEB_SHA256_ARM64 ;;
    *)
        echo "eks-user-data: no QEMU package configured for $(uname -m)" >&2
        exit 1
        ;;
esac
if [ -z "$url" ] || [ -z "$sha256" ] || [ -z "$BINFMT_REQUIREMENT" ]; then
    echo "eks-user-data: set QEMU_DEB_URL_*, QEMU_DEB_SHA256_* and BINFMT_REQUIREMENT" >&2
    exit 1
fi

mkdir -p /etc/binfmt.d
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. The emulators: the qemu-*-static files of the package's data.tar, nothing
# else (its binfmt.d files would register Debian's entries at boot). Python's
# standard library reads the .deb, so no ar or dpkg is needed.
curl -fsSL --retry 5 -o "$work/qemu-user-static.deb" "$url"
echo "$sha256  $work/qemu-user-static.deb" | sha256sum -c -
python3 - "$work/qemu-user-static.deb" /usr/bin <<'EOF'
import os
import shutil
import sys
import tarfile

deb, dest = sys.argv[1], sys.argv[2]
count = 0
with open(deb, "rb") as f:
    if f.read(8) != b"!<arch>\n":
        sys.exit(f"{deb}: not a Debian package")
    while True:  # ar members: a 60-byte header, the data, padded to even size
        header = f.read(60)
        if len(header) < 60:
            sys.exit(f"{deb}: no data.tar member")
        name, size = header[:16].decode().strip(), int(header[48:58])
        if name.startswith("data.tar"):
            break
        f.seek(size + size % 2, os.SEEK_CUR)
    with tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            base = os.path.basename(member.name)
            in_usr_bin = os.path.dirname(member.name).lstrip("./") == "usr/bin"
            if member.isfile() and in_usr_bin and base.startswith("qemu-") and base.endswith("-static"):
                temp = os.path.join(dest, f".{base}.tmp")
                with tar.extractfile(member) as src, open(temp, "wb") as out:
                    shutil.copyfileobj(src, out)
                os.chmod(temp, 0o755)
                os.replace(temp, os.path.join(dest, base))  # never write into a running file
                count += 1
if not count:
    sys.exit(f"{deb}: no usr/bin/qemu-*-static in it")
print(f"installed {count} QEMU emulators into {dest}")
EOF

# 2. binfmt (Amazon Linux 2023 ships Python 3.9, which binfmt supports).
python3 -m venv /opt/binfmt
/opt/binfmt/bin/pip install --quiet "$BINFMT_REQUIREMENT"
ln -sf /opt/binfmt/bin/binfmt /usr/local/bin/binfmt
PATH=/opt/binfmt/bin:$PATH

# 3. Register. Looking for binfmt_misc's status file triggers systemd's
# automount of /proc/sys/fs/binfmt_misc, so the host holds the mount; a host
# without the automount unit gets a plain mount.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
binfmt install --qemu-path /usr/bin --qemu-suffix=-static --persistent all

# 4. Prove it: a tiny program per architecture, chrooted into an empty
# directory (no QEMU inside, as in a container). On the root file system, not
# /tmp, which hardened images mount noexec.
mkdir -p /opt/binfmt/empty-root
binfmt verify --rootfs /opt/binfmt/empty-root

# 5. Persist: one /etc/binfmt.d/NAME.conf per entry. systemd-binfmt flushes
# every entry when it starts, then registers these files: at boot, and at every
# restart of the service.
binfmt export --current --dir /etc/binfmt.d
