"""Debian packages for the VMs, fetched by name into a cache, with apt's own client.

Every suite (bookworm, and bullseye or trixie, which the machine's sources do
not list) gets a private sources list, package lists and archive cache under
``CACHE/apt/<suite>-<arch>``, passed to ``apt-get`` and ``apt-cache`` as
options (``-o Dir::Etc::sourcelist=…``), so the system's apt configuration
is never changed. The mirror is the one the system's own Debian sources use.

A downloaded package is kept as ``CACHE/debs/<name>_<version>_<arch>.deb``
and recorded in ``CACHE/debs/index.json`` under its name: asking again for a
name that is in the index costs no download and no ``apt-get update``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

import attrs

__all__ = ["CACHE", "Apt", "Deb", "extract", "sources_for", "system_mirror", "system_sources"]

#: Everything the VM layer downloads or builds (gitignored).
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "vm"
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_DEFAULT_MIRROR = "http://deb.debian.org/debian"


class AptError(RuntimeError):
    """apt could not find or download a package."""


@attrs.frozen
class Deb:
    """One downloaded package file."""

    name: str
    version: str
    arch: str
    path: Path


def system_sources(sources_dir: str = "/etc/apt/sources.list.d") -> list[tuple[str, str, str]]:
    """``(uri, suite, components)`` of each suite in the system's deb822 ``.sources`` files."""
    try:
        names = sorted(os.listdir(sources_dir))
    except OSError:
        names = []
    out = []
    for name in names:
        if not name.endswith(".sources"):
            continue
        text = Path(sources_dir, name).read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            fields = {
                m.group(1).lower(): m.group(2).strip()
                for m in re.finditer(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M)
            }
            if "deb" not in fields.get("types", "deb").split():
                continue
            for uri in fields.get("uris", "").split()[:1]:
                for suite in fields.get("suites", "").split():
                    out.append((uri.rstrip("/"), suite, fields.get("components", "main")))
    return out


def system_mirror(sources_dir: str = "/etc/apt/sources.list.d") -> str:
    """The URI of the system's own Debian archive (not its security archive)."""
    for uri, suite, _ in system_sources(sources_dir):
        if "security" not in suite:
            return uri
    return _DEFAULT_MIRROR


def sources_for(suite: str, sources_dir: str = "/etc/apt/sources.list.d") -> list[tuple[str, str]]:
    """``(uri, suite)`` pairs for a release: the system's own lines for it (with
    its -updates and -security), else the release alone from the system's
    mirror (the mirrors here list bullseye-security but do not serve its files)."""
    known = [(u, s) for u, s, _ in system_sources(sources_dir) if s.split("-")[0] == suite]
    return known or [(system_mirror(sources_dir), suite)]


@attrs.define
class Apt:
    """apt-get/apt-cache on one Debian suite and architecture, with private state."""

    suite: str
    arch: str = "amd64"
    cache: Path = CACHE

    @property
    def state(self) -> Path:
        return self.cache / "apt" / f"{self.suite}-{self.arch}"

    @property
    def debs(self) -> Path:
        return self.cache / "debs"

    def _options(self) -> list[str]:
        s = self.state
        return [
            "-q",
            "-o",
            f"Dir::Etc::sourcelist={s / 'sources.list'}",
            "-o",
            "Dir::Etc::sourceparts=/dev/null",
            "-o",
            f"Dir::State::Lists={s / 'lists'}",
            "-o",
            f"Dir::Cache={s / 'cache'}",
            "-o",
            f"APT::Architectures={self.arch}",
            "-o",
            "Acquire::Languages=none",
            "-o",
            "Acquire::Check-Valid-Until=false",
        ]

    def update(self, force: bool = False) -> None:
        """Download the suite's package lists once (again only with ``force``)."""
        s = self.state
        if not force and any((s / "lists").glob("*_Packages*")):
            return
        for d in (s / "lists" / "partial", s / "cache" / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        signed = f"signed-by={_KEYRING} " if os.path.exists(_KEYRING) else "trusted=yes "
        lines = "".join(
            f"deb [arch={self.arch} {signed.strip()}] {uri} {suite} main\n"
            for uri, suite in sources_for(self.suite)
        )
        (s / "sources.list").write_text(lines)
        proc = subprocess.run(
            ["apt-get", *self._options(), "update"], capture_output=True, text=True
        )
        # With foreign architectures configured apt can exit 100 while the
        # lists we asked for arrived: judge by the lists, not the exit code.
        if not any((s / "lists").glob("*_Packages*")):
            raise AptError(
                f"apt-get update of {self.suite}/{self.arch} fetched no package list "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )

    def search(self, pattern: str) -> list[str]:
        """Package names matching a shell pattern (``linux-image-6.1.0-*-cloud-amd64-unsigned``)."""
        self.update()
        regex = "^" + "".join(".*" if c == "*" else re.escape(c) for c in pattern) + "$"
        out = subprocess.run(
            ["apt-cache", *self._options(), "search", "--names-only", regex],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        names = [line.split(" ", 1)[0] for line in out.splitlines() if line.strip()]
        return sorted({n for n in names if fnmatch.fnmatchcase(n, pattern)}, key=_natural)

    def version(self, name: str) -> Optional[str]:
        """The candidate version of ``name`` in this suite, or ``None``."""
        self.update()
        out = subprocess.run(
            ["apt-cache", *self._options(), "show", "--no-all-versions", f"{name}:{self.arch}"],
            capture_output=True,
            text=True,
        ).stdout
        m = re.search(r"^Version: (\S+)$", out, re.M)
        return m.group(1) if m else None

    def _index(self) -> dict[str, dict[str, str]]:
        try:
            data: dict[str, dict[str, str]] = json.loads((self.debs / "index.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def cached(self, name: str) -> Optional[Deb]:
        """The package downloaded earlier under ``name``, if its file is still there."""
        rec = self._index().get(f"{self.suite}/{name}:{self.arch}")
        if rec and (self.debs / rec["file"]).is_file():
            return Deb(name, rec["version"], self.arch, self.debs / rec["file"])
        return None

    def fetch(self, name: str) -> Deb:
        """The .deb of ``name`` (from the cache, or ``apt-get download`` once)."""
        hit = self.cached(name)
        if hit:
            return hit
        version = self.version(name)
        if version is None:
            raise AptError(f"{name}:{self.arch} is not in {self.suite}")
        self.debs.mkdir(parents=True, exist_ok=True)
        work = self.state / "download"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        proc = subprocess.run(
            ["apt-get", *self._options(), "download", f"{name}:{self.arch}={version}"],
            cwd=work,
            capture_output=True,
            text=True,
        )
        files = list(work.glob("*.deb"))
        if proc.returncode != 0 or len(files) != 1:
            raise AptError(f"apt-get download {name} failed: {proc.stderr.strip()[-2000:]}")
        target = self.debs / files[0].name
        os.replace(files[0], target)
        index = self._index()
        index[f"{self.suite}/{name}:{self.arch}"] = {"version": version, "file": target.name}
        tmp = self.debs / "index.json.tmp"
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.debs / "index.json")
        return Deb(name, version, self.arch, target)


def _natural(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def extract(
    deb: Path, dest: Path, members: Iterable[str] = (), pattern: Optional[str] = None
) -> Path:
    """Unpack a .deb's data (``dpkg-deb --fsys-tarfile``) into ``dest``, once.

    ``members`` (path prefixes, e.g. ``./boot``) and ``pattern`` (a regex
    searched in each path) limit it to the paths either selects. No
    maintainer script runs. A stamp names the package file, so a new version
    is unpacked afresh.
    """
    stamp = dest / ".extracted"
    if stamp.is_file() and stamp.read_text() == deb.name:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    wanted = tuple(members)
    regex = re.compile(pattern) if pattern else None
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            for member in tar:
                selected = member.name.startswith(wanted) if wanted else regex is None
                if not selected and not (regex and regex.search(member.name)):
                    continue
                if member.isdev():
                    continue
                if hasattr(tarfile, "tar_filter"):
                    tar.extract(member, dest, set_attrs=False, filter="tar")
                else:  # Python < 3.12 without the extraction filters
                    tar.extract(member, dest, set_attrs=False)
    if p.returncode != 0:
        raise AptError(f"dpkg-deb --fsys-tarfile {deb} failed")
    stamp.write_text(deb.name)
    return dest
