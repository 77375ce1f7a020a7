#!/bin/sh
# Fetch real foreign-architecture Debian binaries for tests/test_elf.py.
#
# usage: tests/fetch-debian.sh [DIR]        (DIR defaults to tests/.cache/debian)
#
# For each architecture it downloads busybox-static (a static executable),
# hello (a dynamic PIE) and libc6 (the dynamic loader) with
# `apt-get download`, and unpacks them with `dpkg-deb -x` into DIR/ARCH/, so
# DIR/arm64/bin/busybox, DIR/arm64/usr/bin/hello and
# DIR/arm64/lib/ld-linux-aarch64.so.1 exist. A stamp file DIR/ARCH/.fetched
# marks a complete extraction; such architectures are skipped, so running it
# again costs nothing.
#
# Missing foreign architectures are added with `dpkg --add-architecture` when
# running as root, followed by a single `apt-get update`. Already downloaded
# .deb files are copied instead of downloaded when they are in
# $BINFMT_DEB_DIR (default /tmp/debs) - one file per package and
# architecture, named as apt-get download names them.
#
# Environment: BINFMT_DEBIAN_ARCHS overrides the architecture list.
set -eu

dir=${1:-tests/.cache/debian}
archs=${BINFMT_DEBIAN_ARCHS:-"amd64 arm64 armhf armel i386 mips64el mipsel ppc64el s390x"}
packages="busybox-static hello libc6"
predownloaded=${BINFMT_DEB_DIR:-/tmp/debs}

die() {
    echo "fetch-debian.sh: error: $*" >&2
    exit 1
}

for tool in apt-get dpkg dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: this script needs a Debian-like system"
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# Which architectures still need work?
todo=""
for arch in $archs; do
    if [ -f "$dir/$arch/.fetched" ]; then
        echo "$arch: already fetched"
    else
        todo="$todo $arch"
    fi
done
[ -n "$todo" ] || exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
# (apt-get download as root warns that it downloads "unsandboxed": the _apt
# user cannot write into this private directory. The warning is harmless.)

# Copy what is already on this machine; remember which architectures still need apt.
need_apt=""
for arch in $todo; do
    mkdir -p "$work/$arch"
    complete=yes
    for pkg in $packages; do
        found=""
        count=0
        for deb in "$predownloaded/${pkg}_"*"_$arch.deb"; do
            [ -f "$deb" ] || continue
            found=$deb
            count=$((count + 1))
        done
        if [ "$count" -eq 1 ]; then
            cp "$found" "$work/$arch/"
        else
            complete=no
        fi
    done
    if [ "$complete" = no ]; then
        rm -f "$work/$arch/"*.deb
        need_apt="$need_apt $arch"
    fi
done

if [ -n "$need_apt" ]; then
    native=$(dpkg --print-architecture)
    foreign=$(dpkg --print-foreign-architectures)
    added=""
    for arch in $need_apt; do
        [ "$arch" = "$native" ] && continue
        if ! printf '%s\n' "$foreign" | grep -qx "$arch"; then
            if [ "$(id -u)" -ne 0 ]; then
                die "architecture $arch is not enabled; as root run: dpkg --add-architecture $arch && apt-get update"
            fi
            echo "adding architecture $arch"
            dpkg --add-architecture "$arch"
            added="$added $arch"
        fi
    done
    updated=no
    update() {
        # apt-get update exits 100 when one source fails (e.g. a mirror without
        # one architecture); what matters is whether the downloads work.
        rc=0
        apt-get update || rc=$?
        if [ "$rc" -ne 0 ] && [ "$rc" -ne 100 ]; then
            die "apt-get update failed with exit code $rc"
        fi
        updated=yes
    }
    download() {
        missing=""
        for arch in $need_apt; do
            specs=""
            for pkg in $packages; do
                specs="$specs $pkg:$arch"
            done
            rm -f "$work/$arch/"*.deb
            echo "$arch: apt-get download$specs"
            # shellcheck disable=SC2086  # specs is a word list
            (cd "$work/$arch" && apt-get download $specs) || missing="$missing $arch"
        done
    }
    [ -z "$added" ] || update
    download
    if [ -n "$missing" ] && [ "$updated" = no ] && [ "$(id -u)" -eq 0 ]; then
        # Stale or empty package lists are the usual cause: refresh once, retry.
        echo "apt-get download failed for$missing: running apt-get update and retrying" >&2
        update
        download
    fi
fi

# Check every download, then unpack each architecture atomically.
for arch in $todo; do
    for pkg in $packages; do
        set -- "$work/$arch/${pkg}_"*"_$arch.deb"
        [ -f "$1" ] || die "$arch: ${pkg}:$arch was not downloaded (is $arch enabled, and was apt-get update run?)"
    done
    partial="$dir/.$arch.partial"
    rm -rf "$partial" "$dir/$arch"
    mkdir -p "$partial"
    for deb in "$work/$arch/"*.deb; do
        dpkg-deb -x "$deb" "$partial"
    done
    [ -f "$partial/bin/busybox" ] || die "$arch: bin/busybox missing after extraction"
    [ -f "$partial/usr/bin/hello" ] || die "$arch: usr/bin/hello missing after extraction"
    loaders=$(find "$partial/lib" "$partial/lib64" -maxdepth 1 -name 'ld*.so*' 2>/dev/null | head -n 1)
    [ -n "$loaders" ] || die "$arch: no dynamic loader (lib/ld*.so*) after extraction"
    touch "$partial/.fetched"
    mv "$partial" "$dir/$arch"
    echo "$arch: extracted into $dir/$arch"
done
