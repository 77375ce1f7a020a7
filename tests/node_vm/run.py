"""Prepare the node VM's disks, boot it twice (one emulator run) and collect the results.

usage (as root, after ``tests/node_vm/setup.sh``)::

    python -m tests.node_vm.run [--work DIR] [--timeout SECONDS]

prints the guest's step records as JSON lines and a summary of the timings;
``tests/test_node_vm.py`` calls :func:`run_node_vm` once per session and
asserts on the records.

What goes onto the data disk (``in/``):

- ``wheels/``: the binfmt wheel built from this checkout (``pip wheel
  --no-deps``), and the attrs and pyelftools wheels, also laid out under
  ``simple/`` as a package index (``PIP_INDEX_URL=file://…``, the mirror
  that ``deploy/eks-user-data.sh`` says pip needs);
- ``eks-user-data.sh`` and ``debian-node.sh`` from ``deploy/``, with only
  their variables filled in (a ``file://`` URL of Debian's
  ``qemu-user-static`` package with its SHA-256, and the wheel);
- ``oci/``: a busybox image per architecture from Debian's
  ``busybox-static`` (nothing arm64 runs on this host to make it);
- ``daemonset-root/``: the DaemonSet image's root, laid out as
  deploy/Dockerfile lays it out: the Debian root of
  :func:`tests.node_vm.image.daemonset_base`, ``/opt/binfmt`` (a venv made
  by the image's own Python, in a chroot, with the wheels) and
  ``/opt/empty-root``;
- ``repo/``: a flat apt repository holding ``qemu-user-static`` (the node
  guide's ``apt-get install``);
- ``config.json``: the image names, and the DaemonSet's containers as
  ``deploy/daemonset.yaml`` states them (command, privileged, hostPID,
  hostPath mounts, memory limit);
- ``guest.py``: the driver.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

import yaml  # type: ignore[import-untyped,unused-ignore]

from . import image, oci
from .boot import BootResult, Disk, boot, fetch_debs, qemu_command

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "tests" / ".cache" / "node-vm"
HERE = Path(__file__).resolve().parent
DEPLOY = ROOT / "deploy"
#: Where the guest mounts the data disk.
GUEST_DATA = "/mnt/data"
DEPENDENCIES = ("attrs", "pyelftools")
AMD64_IMAGE = "localhost/node-vm/busybox:amd64"
ARM64_IMAGE = "localhost/node-vm/busybox:arm64"
#: busybox applets the images' /bin holds (the tests run uname and sh).
APPLETS = ("sh", "uname", "cat", "echo", "ls", "true", "sleep")
#: The Dockerfile's ENV PATH and ENTRYPOINT.
DAEMONSET_PATH = "/opt/binfmt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NodeRun(NamedTuple):
    """One run of the node VM: the guest's records, its console, and the timings."""

    records: list[dict[str, Any]]
    serial: str
    boot: BootResult
    timings: dict[str, float]
    work: Path


# -- inputs -------------------------------------------------------------------------------


def build_wheels(dest: Path, cache: Path) -> Path:
    """The wheel of this checkout and its dependencies' wheels in ``dest``; returns binfmt's."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dest, ROOT],
        check=True,
    )
    deps = cache / "wheels"
    if not all(any(deps.glob(f"{name}-*.whl")) for name in DEPENDENCIES):
        deps.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-d",
                deps,
                *DEPENDENCIES,
            ],
            check=True,
        )
    for name in DEPENDENCIES:
        shutil.copy(sorted(deps.glob(f"{name}-*.whl"))[-1], dest)
    (wheel,) = dest.glob("binfmt-*.whl")
    return wheel


def simple_index(wheels: Path, dest: Path) -> None:
    """A PEP 503 index of the dependency wheels, readable through a file:// URL."""
    for name in DEPENDENCIES:
        project = dest / name
        project.mkdir(parents=True, exist_ok=True)
        links = []
        for wheel in sorted(wheels.glob(f"{name}-*.whl")):
            shutil.copy(wheel, project / wheel.name)
            links.append(f'<a href="{wheel.name}">{wheel.name}</a>')
        (project / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>\n")


def fill_variables(script: str, values: dict[str, str]) -> str:
    """The script with each ``NAME=""`` line set; every name must occur exactly once."""
    for name, value in values.items():
        pattern = re.compile(rf'^{name}=""$', re.M)
        script, count = pattern.subn(f'{name}="{value}"', script)
        if count != 1:
            raise ValueError(f'expected one line {name}="" in the script, found {count}')
    return script


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _member(deb: Path, name: str) -> bytes:
    """One file of a .deb's data (no maintainer script, nothing executed)."""
    tar_bytes = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True
    ).stdout
    with tempfile.TemporaryFile() as f:
        f.write(tar_bytes)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            member = tar.extractfile(name)
            if member is None:
                raise FileNotFoundError(f"{deb.name}: no {name}")
            return member.read()


def busybox_image(deb: Path, arch: str, name: str, dest: Path) -> None:
    """An image whose /bin is Debian's static busybox of ``arch`` and a few applet links."""
    busybox = _member(deb, "./bin/busybox")
    files = [oci.File("bin", directory=True), oci.File("bin/busybox", busybox, mode=0o755)]
    files += [oci.File(f"bin/{applet}", target="busybox") for applet in APPLETS]
    layer = oci.files_layer(files, dest.with_suffix(".layer"))
    oci.write_archive(
        dest,
        name=name,
        layers=[layer],
        architecture=arch,
        variant="v8" if arch == "arm64" else "",
        config={"Env": ["PATH=/bin"], "Cmd": ["sh"]},
    )
    layer.path.unlink()


def daemonset_root(base: image.DaemonSetBase, wheels: Path, dest: Path) -> None:
    """deploy/Dockerfile's image as a root tree: the Debian base, /opt/binfmt, /opt/empty-root.

    The venv is made by the image's own Python, chrooted into a copy of the
    (cached) base, with /dev, a tmpfs /tmp and the wheels mounted in a private
    mount namespace. The containers run from this tree (``ctr run --rootfs``):
    importing it as an image would copy its 600 MB twice more under TCG
    (content store, then snapshot), minutes of a CI run for no difference the
    manifest can see.
    """
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["cp", "-a", base.root, dest], check=True)
    script = r"""
        set -eu
        root=$1 wheels=$2 wheel=$3
        mount --make-rprivate /
        mount -t tmpfs tmpfs "$root/tmp"
        mount --rbind /dev "$root/dev"
        mount --bind "$wheels" "$root/mnt"
        chroot "$root" python3 -m venv /opt/binfmt
        chroot "$root" /opt/binfmt/bin/pip install --quiet --no-cache-dir --no-index \
            --find-links /mnt "/mnt/$wheel"
        mkdir "$root/opt/empty-root"
    """
    (wheel,) = wheels.glob("binfmt-*.whl")
    subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", dest, wheels, wheel.name],
        check=True,
        # Nothing of this host's pip configuration reaches the image's pip.
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"},
    )


def apt_repository(debs: list[Path], dest: Path) -> None:
    """A flat repository (``deb [trusted=yes] file:DEST ./``) holding ``debs``."""
    dest.mkdir(parents=True, exist_ok=True)
    stanzas = []
    for deb in debs:
        shutil.copy(deb, dest / deb.name)
        control = subprocess.run(
            ["dpkg-deb", "-f", deb], capture_output=True, text=True, check=True
        ).stdout.rstrip("\n")
        stanzas.append(
            f"{control}\nFilename: ./{deb.name}\nSize: {deb.stat().st_size}\n"
            f"SHA256: {_sha256(deb)}\n"
        )
    (dest / "Packages").write_text("\n".join(stanzas))


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def daemonset_containers() -> tuple[str, list[dict[str, Any]]]:
    """The manifest's image, and each container as the guest runs it."""
    with open(DEPLOY / "daemonset.yaml") as f:
        (ds,) = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    out = []
    images = set()
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        images.add(c["image"])
        mounts = []
        for m in c.get("volumeMounts", []):
            host = volumes[m["name"]]["hostPath"]
            mounts.append(
                {"host": host["path"], "path": m["mountPath"], "type": host.get("type", "")}
            )
        command = [*c.get("command", []), *c.get("args", [])]
        nfd = re.search(r"--output (\S+)", " ".join(command))
        out.append(
            {
                "name": c["name"],
                "command": command,
                "privileged": bool(c.get("securityContext", {}).get("privileged")),
                "host_pid": bool(spec.get("hostPID")),
                "mounts": mounts,
                "memory_limit": _bytes(c.get("resources", {}).get("limits", {}).get("memory", "0")),
                "nfd_file": nfd.group(1) if nfd else "",
            }
        )
    (name,) = images
    return name, out


def prepare(work: Path, cache: Path) -> dict[str, float]:
    """Lay out ``work/data`` (the data disk's contents); returns what each part took."""
    timings: dict[str, float] = {}
    data = work / "data"
    inputs = data / "in"
    shutil.rmtree(data, ignore_errors=True)
    (inputs / "oci").mkdir(parents=True)
    (data / "results").mkdir()

    start = time.monotonic()
    wheel = build_wheels(inputs / "wheels", cache)
    simple_index(inputs / "wheels", inputs / "simple")
    timings["wheels"] = time.monotonic() - start

    start = time.monotonic()
    debs = fetch_debs(
        ["busybox-static:amd64", "busybox-static:arm64", "qemu-user-static:amd64"], cache / "debs"
    )
    timings["debs"] = time.monotonic() - start

    start = time.monotonic()
    busybox_image(
        debs["busybox-static:amd64"], "amd64", AMD64_IMAGE, inputs / "oci" / "busybox-amd64.tar"
    )
    busybox_image(
        debs["busybox-static:arm64"], "arm64", ARM64_IMAGE, inputs / "oci" / "busybox-arm64.tar"
    )
    ds_name, containers = daemonset_containers()
    base = image.daemonset_base(cache)
    timings["daemonset_base_build"] = base.build_seconds
    daemonset_root(base, inputs / "wheels", inputs / "daemonset-root")
    timings["images"] = time.monotonic() - start

    qemu_deb = debs["qemu-user-static:amd64"]
    # apt-get download's names hold the epoch as "%3a", which a URL decodes.
    qemu_in_guest = "qemu-user-static_amd64.deb"
    shutil.copy(qemu_deb, inputs / qemu_in_guest)
    wheel_in_guest = f"{GUEST_DATA}/in/wheels/{wheel.name}"
    user_data = fill_variables(
        (DEPLOY / "eks-user-data.sh").read_text(),
        {
            "QEMU_DEB_URL_AMD64": f"file://{GUEST_DATA}/in/{qemu_in_guest}",
            "QEMU_DEB_SHA256_AMD64": _sha256(qemu_deb),
            "BINFMT_REQUIREMENT": wheel_in_guest,
        },
    )
    (inputs / "eks-user-data.sh").write_text(user_data)
    guide = fill_variables(
        (DEPLOY / "debian-node.sh").read_text(), {"BINFMT_REQUIREMENT": wheel_in_guest}
    )
    (inputs / "debian-node.sh").write_text(guide)
    apt_repository([qemu_deb], inputs / "repo")
    config = {
        "amd64_image": AMD64_IMAGE,
        "arm64_image": ARM64_IMAGE,
        "daemonset_image": ds_name,
        "daemonset_rootfs": f"{GUEST_DATA}/in/daemonset-root",
        "daemonset_env": [f"PATH={DAEMONSET_PATH}"],
        "daemonset": containers,
        "pip_index_url": f"file://{GUEST_DATA}/in/simple",
    }
    (inputs / "config.json").write_text(json.dumps(config, indent=1))
    shutil.copy(HERE / "guest.py", data / "guest.py")
    return timings


def _disk_from(directory: Path, dest: Path) -> None:
    used = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    size_mib = used // (1 << 20) + 512
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "node-data", "-d", directory, dest, f"{size_mib}M"],
        check=True,
    )


def read_results(disk: Path, dest: Path) -> list[dict[str, Any]]:
    """The guest's records, read from the data disk with debugfs (no mount)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    subprocess.run(
        ["debugfs", "-R", f"rdump /results {dest}", disk], check=True, capture_output=True
    )
    steps = dest / "results" / "steps.jsonl"
    if not steps.exists():
        return []
    return [json.loads(line) for line in steps.read_text().splitlines() if line.strip()]


def run_node_vm(work: Path, *, cache: Path = CACHE, timeout: float = 1500) -> NodeRun:
    """Build (or take from the cache) the images, boot the node, return what it recorded."""
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.monotonic()
    node = image.node_image(cache)
    timings["node_image"] = time.monotonic() - start
    timings["node_image_build"] = node.build_seconds
    start = time.monotonic()
    timings.update(prepare(work, cache))
    data_disk = work / "data.img"
    _disk_from(work / "data", data_disk)
    root_disk = work / "root.qcow2"
    root_disk.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", node.disk, "-F", "raw", root_disk],
        check=True,
    )
    timings["prepare"] = time.monotonic() - start
    serials = []
    results = []
    deadline = time.monotonic() + timeout
    # Boot 1 ends with the guest's reboot, boot 2 with its power-off: each
    # ends the emulator (-no-reboot), and the next boot is a new one.
    for number in (1, 2):
        serial_log = work / f"serial-{number}.log"
        serial_log.unlink(missing_ok=True)
        argv = qemu_command(
            node.kernel,
            [Disk(root_disk, "qcow2", "unsafe"), Disk(data_disk)],
            append="console=ttyS0 root=/dev/nvme0n1 rw panic=-1 systemd.show_status=1",
            serial_log=serial_log,
        )
        result = boot(argv, timeout=max(deadline - time.monotonic(), 1), serial_log=serial_log)
        timings[f"boot{number}"] = result.seconds
        serials.append(result.serial)
        results.append(result)
        if result.timed_out or result.returncode != 0:
            break
    serial = "\n".join(serials)
    (work / "serial.log").write_text(serial)
    timings["vm"] = sum(r.seconds for r in results)
    result = BootResult(results[-1].returncode, results[-1].timed_out, timings["vm"], serial)
    records = read_results(data_disk, work / "out")
    for rec in records:
        if rec["step"] == "boot-start":
            timings[f"boot{rec['boot']}_to_driver"] = rec["time"]
        if rec["step"] == "boot-end":
            timings[f"boot{rec['boot']}_driver_end"] = rec["time"]
    (work / "records.json").write_text(json.dumps(records, indent=1))
    (work / "timings.json").write_text(
        json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=1)
    )
    return NodeRun(records, serial, result, timings, work)


def load_run(work: Path) -> NodeRun:
    """The records of an earlier run in ``work`` (to re-assert without booting again)."""
    records = json.loads((work / "records.json").read_text())
    serial = (work / "serial.log").read_text(errors="replace")
    timings = (
        json.loads((work / "timings.json").read_text()) if (work / "timings.json").exists() else {}
    )
    return NodeRun(
        records, serial, BootResult(0, False, timings.get("vm", 0.0), serial), timings, work
    )


def unavailable() -> Optional[str]:
    """Why this machine cannot run the node VM, or None."""
    if os.geteuid() != 0:
        return "the node VM needs root (mmdebstrap, chroot, mkfs.ext4 -d of a root tree)"
    missing = [
        tool
        for tool in (
            "mmdebstrap",
            "qemu-system-x86_64",
            "qemu-img",
            "mkfs.ext4",
            "debugfs",
            "apt-get",
            "dpkg-deb",
            "unshare",
        )
        if shutil.which(tool) is None
    ]
    if missing:
        return f"missing {', '.join(missing)}: run tests/node_vm/setup.sh as root"
    if not image.SOURCES.exists():
        return f"no {image.SOURCES} (a Debian host's apt sources) to build the node from"
    return None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--work", type=Path, default=CACHE / "last-run")
    parser.add_argument("--timeout", type=float, default=1500)
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason:
        print(f"node_vm: {reason}", file=sys.stderr)
        return 2
    run = run_node_vm(args.work, timeout=args.timeout)
    for rec in run.records:
        print(json.dumps(rec))
    print(
        json.dumps(
            {
                "timings": {k: round(v, 1) for k, v in run.timings.items()},
                "returncode": run.boot.returncode,
                "timed_out": run.boot.timed_out,
                "work": str(run.work),
            }
        ),
        file=sys.stderr,
    )
    return 0 if run.records and not run.boot.timed_out else 1


if __name__ == "__main__":
    sys.exit(main())
