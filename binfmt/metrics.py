"""The node's emulation facts as Prometheus metrics, for node-exporter's textfile collector.

:func:`collect` turns what the library knows about a node into metric
families: the binfmt_misc mount and switch, each entry (enabled, platform,
flags, whether its interpreter is there), the platforms the node runs natively
and emulated, the result of ``verify`` per target (when it was run), the
emulated processes with their CPU seconds and memory by platform and pod, and
the processes that still run a deleted interpreter (:mod:`binfmt.emulated`).
:func:`exposition` renders them in the text exposition format (version
0.0.4), :func:`write` puts the text into a file atomically
(``binfmt.files.write_files()``: a temporary file in the same directory,
renamed over the old one), so that node-exporter never reads half a file.

Names follow Prometheus's conventions: the ``binfmt_`` prefix, base units
(``_seconds``, ``_bytes``), ``_info`` for a constant 1 that carries labels, and
no ``_total``: every family is a gauge (the CPU seconds of the processes
running now go down when one exits, so they are not a counter). Label values
are shown as ``binfmt.output.printable()`` text, so even a hostile entry
name cannot put a control character into the file, and then escaped as the
format requires (``\\\\``, ``\\"``, ``\\n``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Optional

import attrs

from . import qemu
from .entry import Flags
from .host import Host
from .output import printable
from .procfs import State

if TYPE_CHECKING:
    from .emulated import ProcessReport
    from .verify import VerifyReport

__all__ = ["Family", "Sample", "collect", "document", "exposition", "write"]

Labels = tuple[tuple[str, str], ...]


@attrs.frozen
class Sample:
    """One value of a family, with its labels (in order)."""

    labels: Labels
    value: float


@attrs.frozen
class Family:
    """A metric family: name, help, type (always ``"gauge"`` here) and samples."""

    name: str
    help: str
    samples: tuple[Sample, ...] = ()
    type: str = "gauge"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "help": self.help,
            "samples": [{"labels": dict(s.labels), "value": s.value} for s in self.samples],
        }


class _Builder:
    def __init__(self) -> None:
        self.families: list[Family] = []

    def add(self, name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        ordered = sorted(samples, key=lambda s: s[0])
        family = Family(name, help_text, tuple(Sample(labels, value) for labels, value in ordered))
        self.families.append(family)


def collect(
    state: State,
    host: Host,
    *,
    report: Optional[ProcessReport] = None,
    verify: Optional[VerifyReport] = None,
    host_root: str = "/",
) -> list[Family]:
    """The metric families of a node, from its binfmt_misc ``state`` and ``host``.

    ``report`` (:func:`binfmt.processes`) adds the emulated
    processes, ``verify`` (:func:`binfmt.verify.verify`) the probe results;
    without them those families are left out. Interpreter files are looked up
    under ``host_root``.
    """
    from .report import host_document, runnable_platforms

    b = _Builder()
    doc = host_document(host)
    b.add(
        "binfmt_host_info",
        "The machine and kernel release of the node (always 1).",
        [((("machine", host.machine), ("kernel", host.release)), 1)],
    )
    b.add(
        "binfmt_misc_mounted",
        "Whether binfmt_misc is mounted (1) or not (0).",
        [((), 1 if state.mounted else 0)],
    )
    b.add(
        "binfmt_misc_enabled",
        "Whether binfmt_misc is switched on globally (1) or not (0, also when not mounted).",
        [((), 1 if state.enabled else 0)],
    )
    entries = []
    present = []
    for entry in state.entries:
        targets = qemu.identify(entry)
        sig = targets[0] if targets else None
        platform = sig.platforms[0] if sig is not None and sig.platforms else ""
        labels: Labels = (
            ("entry", entry.name),
            ("target", sig.name if sig is not None else ""),
            ("platform", platform),
            ("flags", entry.flags.letters),
            ("interpreter", entry.interpreter),
        )
        entries.append((labels, 1 if entry.enabled else 0))
        path = (
            entry.interpreter
            if host_root == "/"
            else os.path.join(host_root, entry.interpreter.lstrip("/"))
        )
        here = os.path.exists(path)
        present.append(
            ((("entry", entry.name), ("fix_binary", _yes(entry.flags))), 1 if here else 0)
        )
    b.add(
        "binfmt_entry_enabled",
        "Each binfmt_misc entry: 1 enabled, 0 disabled; labels say what it runs and how.",
        entries,
    )
    b.add(
        "binfmt_entry_interpreter_present",
        "Whether the interpreter file of the entry exists on the host (with F, 0 means the kernel "
        "runs a deleted file: an upgrade is not in use until the entry is registered again).",
        present,
    )
    native = list(doc["platforms"])
    # Each target once, by its canonical platform (linux/arm/v7, not also v6 and v5).
    canonical = {sig.platforms[0] for sig in qemu.SIGNATURES if sig.platforms}
    runnable = [p for p in runnable_platforms(state, host) if p in canonical]
    platforms = [((("platform", p), ("mode", "native")), 1) for p in native]
    platforms += [((("platform", p), ("mode", "emulated")), 1) for p in runnable if p not in native]
    b.add(
        "binfmt_platform_supported",
        "The OCI platforms the node runs, natively or emulated through an entry (always 1; "
        "each target once, by its canonical platform).",
        platforms,
    )
    if verify is not None:
        results = []
        for result in verify.results:
            platform = result.platforms[0] if result.platforms else ""
            labels = (
                ("target", result.target),
                ("platform", platform),
                ("status", result.status),
                ("entry", result.entry or ""),
            )
            results.append((labels, 1 if result.ok else 0))
        b.add(
            "binfmt_verify_success",
            "The last verify probe per target: 1 it ran (natively or emulated), 0 it failed; "
            "status says how.",
            results,
        )
    if report is not None:
        _processes(b, report)
    return b.families


def _yes(flags: Flags) -> str:
    return "true" if Flags.FIX_BINARY in flags else "false"


def _processes(b: _Builder, report: ProcessReport) -> None:
    groups: dict[Labels, list[float]] = {}
    for p in report.processes:
        labels: Labels = (
            ("platform", p.platform or ""),
            ("entry", p.entry),
            ("namespace", p.namespace or ""),
            ("pod", p.pod or ""),
            ("container", p.container or ""),
        )
        row = groups.setdefault(labels, [0, 0.0, 0])
        row[0] += 1
        row[1] += p.cpu_seconds
        row[2] += p.rss_bytes
    b.add(
        "binfmt_emulated_processes",
        "Processes running under a binfmt_misc interpreter, by platform, entry and pod "
        "(pod labels are empty outside pods).",
        [(k, v[0]) for k, v in groups.items()],
    )
    b.add(
        "binfmt_emulated_cpu_seconds",
        "CPU time (user + system) used so far by the emulated processes running now.",
        [(k, round(v[1], 2)) for k, v in groups.items()],
    )
    b.add(
        "binfmt_emulated_resident_memory_bytes",
        "Resident memory of the emulated processes running now.",
        [(k, v[2]) for k, v in groups.items()],
    )
    stale: dict[Labels, int] = {}
    for p in report.stale:
        key: Labels = (("entry", p.entry), ("interpreter", p.interpreter))
        stale[key] = stale.get(key, 0) + 1
    b.add(
        "binfmt_stale_interpreter_processes",
        "Emulated processes whose interpreter file was deleted or replaced (an upgraded QEMU "
        "is not in use: register the entry again and restart them).",
        list(stale.items()),
    )
    b.add(
        "binfmt_processes_unreadable",
        "Processes that could not be inspected (permission denied).",
        [((), report.unreadable)],
    )


# -- the text format -------------------------------------------------------------------------


def _label_value(value: str) -> str:
    return printable(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def exposition(families: Sequence[Family]) -> str:
    """The families in Prometheus's text exposition format (``# HELP``, ``# TYPE``, samples)."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in sample.labels)
            lines.append(
                f"{family.name}{{{labels}}} {_number(sample.value)}"
                if labels
                else f"{family.name} {_number(sample.value)}"
            )
    return "\n".join(lines) + "\n"


def document(families: Sequence[Family]) -> dict[str, Any]:
    """The ``metrics --json`` document: ``{"families": [{name, type, help, samples}]}``."""
    return {"families": [f.to_dict() for f in families]}


def write(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically (a reader sees the old file or the new one).

    node-exporter's textfile collector reads only ``*.prom`` files, so the
    temporary file (``.binfmt-….tmp`` in the same directory) is never read.
    Returns the path written.
    """
    from .files import write_files

    directory, name = os.path.split(os.path.abspath(path))
    return write_files(directory, {name: text})[0]
