"""Every command's report: the ``status`` document, and the text of each command.

Text goes through :mod:`binfmt.output` (escaping of every untrusted string,
table layout); JSON documents are the ``to_dict()`` of the result types,
except ``status``'s, which is built here. The ``status`` document is a
stable, documented schema (``docs/cli.rst``):

.. code-block:: text

    {"procfs": str, "mounted": bool, "enabled": bool|null,
     "host": {"machine": str, "kernel": str, "version": str, "native": [target],
              "platforms": [platform], "unknown": [target]},
     "entries": [{"name": str, "enabled": bool, "type": "magic"|"extension",
                  "offset": int|null, "magic": hex|null, "mask": hex|null,
                  "extension": str|null, "interpreter": str, "flags": str,
                  "qemu": str|null, "platforms": [str]}],
     "unreadable": [str], "unreadable_reasons": {str: str}}

Entries are in lookup order. ``qemu`` is the QEMU target whose binaries the
entry matches (also for non-QEMU emulators such as FEX or Rosetta, which
match the same binaries), ``platforms`` the OCI platforms of all targets it
matches. ``host.version`` is ``uname -v`` (where distributions keep the
kernel's real patch level), so that a document taken on a node describes its
kernel rules too: :meth:`State.from_document <binfmt.procfs.State.from_document>`
and :meth:`Host.from_document <binfmt.host.Host.from_document>` read it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Optional

from . import qemu
from .entry import Entry, EntryType, Flags
from .host import Host
from .output import printable, table
from .procfs import State

if TYPE_CHECKING:  # imported for annotations only: `status` must start fast
    from .doctor import DoctorReport
    from .emulated import ProcessReport
    from .findings import Finding
    from .install import Outcome
    from .prediction import Verdict
    from .scan import ScanReport
    from .verify import VerifyReport

__all__ = [
    "doctor_text",
    "entry_document",
    "finding_lines",
    "host_document",
    "nfd_features",
    "outcome_text",
    "ps_text",
    "runnable_platforms",
    "scan_text",
    "status_document",
    "status_text",
    "verdict_text",
    "verify_text",
]

#: How options named by findings are shown (the command line passes its flags).
OptionNames = Mapping[str, str]


def entry_document(entry: Entry) -> dict[str, Any]:
    """One entry of the ``status`` JSON."""
    is_magic = entry.type is EntryType.MAGIC
    targets = qemu.identify(entry)
    unique = len(targets) == 1 or (targets and qemu.tests_same_bits(entry, targets[0]))
    exact = targets[0].name if unique else None
    platforms: list[str] = []
    for sig in targets:
        platforms.extend(p for p in sig.platforms if p not in platforms)
    return {
        "name": entry.name,
        "enabled": entry.enabled,
        "type": entry.type.label,
        "offset": entry.offset if is_magic else None,
        "magic": entry.magic.hex() if is_magic else None,
        "mask": entry.mask.hex() if entry.mask is not None else None,
        "extension": entry.extension,
        "interpreter": entry.interpreter,
        "flags": entry.flags.letters,
        "qemu": exact,
        "platforms": platforms,
    }


def host_document(host: Host) -> dict[str, Any]:
    """The ``host`` block of the ``status`` JSON."""
    platforms: list[str] = []
    for target in host.native:
        platforms.extend(p for p in qemu.get(target).platforms[:1] if p not in platforms)
    return {
        "machine": host.machine,
        "kernel": host.release,
        "version": host.version,
        "native": list(host.native),
        "platforms": platforms,
        "unknown": list(host.unknown),
        "evidence": dict(host.evidence),
    }


def status_document(state: State, host: Host) -> dict[str, Any]:
    """The whole ``status`` JSON document."""
    return {
        "procfs": state.path,
        "mounted": state.mounted,
        "enabled": state.enabled,
        "host": host_document(host),
        "entries": [entry_document(e) for e in state.entries],
        "unreadable": list(state.unreadable),
        "unreadable_reasons": {name: state.unreadable_reason(name) for name in state.unreadable},
    }


def _matches_text(doc: dict[str, Any]) -> str:
    if doc["type"] == "extension":
        return f"extension .{doc['extension']}"
    if doc["qemu"]:
        platforms = doc["platforms"][:1]
        return str(doc["qemu"]) + (f" ({platforms[0]})" if platforms else "")
    platforms = doc["platforms"]
    if platforms:
        more = f", … {len(platforms)} platforms" if len(platforms) > 2 else ""
        return "ELF for " + ", ".join(platforms[:2]) + more
    magic = doc["magic"]
    shown = magic if len(magic) <= 24 else magic[:24] + "…"
    return f"magic {shown}" + (f" @{doc['offset']}" if doc["offset"] else "")


def runnable_platforms(state: State, host: Host) -> list[str]:
    """OCI platforms the node runs: natively, or through an enabled entry that can start.

    For each target the host runs or some entry identifies, the entries the
    kernel would pick for that target's programs (static and PIE,
    :func:`binfmt.qemu.coverage`) decide: none means native (if the host runs
    it), an entry counts when its interpreter is there or held open by F. So a
    broken entry that captures native programs takes their platform away. This
    reads files only; ``binfmt verify`` runs programs to prove it.
    """
    from .health import inspect_interpreter

    targets = [qemu.get(t) for t in host.native]
    if state.mounted and state.enabled:
        for entry in state.entries:
            if entry.enabled:
                targets.extend(sig for sig in qemu.identify(entry) if sig not in targets)

    def starts(chosen: Optional[Entry], sig: qemu.Signature) -> bool:
        if chosen is None:
            return host.runs_natively(sig.name)
        return Flags.FIX_BINARY in chosen.flags or (
            inspect_interpreter(chosen.interpreter, elf=False).usable
        )

    platforms: list[str] = []
    for sig in targets:
        if all(starts(state.lookup(sig.header(t)), sig) for t in (2, 3)):
            platforms.extend(p for p in sig.platforms if p not in platforms)
    return platforms


def nfd_features(state: State, host: Host, expiry: Optional[int] = None) -> str:
    """A node-feature-discovery ``local`` feature file: ``binfmt.linux-arm64=true`` …

    NFD turns each line into the label ``feature.node.kubernetes.io/<name>``;
    label names cannot hold ``/``, so the platform's slashes become dashes.
    With ``expiry`` (seconds), an ``# +expiry-time=`` directive makes NFD drop
    the labels unless the file is rewritten in time.
    """
    lines = ["# binfmt: platforms this node runs (natively or emulated)"]
    if expiry is not None:
        import datetime

        when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=expiry)
        lines.append(f"# +expiry-time={when.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    lines += [f"binfmt.{p.replace('/', '-')}=true" for p in runnable_platforms(state, host)]
    return "\n".join(lines) + "\n"


def status_text(state: State, host: Host) -> str:
    """The human ``status`` report (an aligned table, one entry per row)."""
    doc = host_document(host)
    lines = []
    if not state.mounted:
        lines.append(f"binfmt_misc: not mounted at {printable(state.path)}")
    else:
        switch = "enabled" if state.enabled else "disabled (no entry is used)"
        lines.append(f"binfmt_misc: mounted at {printable(state.path)}, {switch}")
    native = ", ".join(doc["platforms"]) or "unknown"
    lines.append(f"host: {host.machine}, kernel {host.release}, runs natively: {native}")
    if host.unknown:
        lines.append(f"      cannot tell whether it runs {', '.join(host.unknown)} natively")
        for target in host.unknown:
            why = dict(host.evidence).get(target)
            if why:
                lines.append(f"      {target}: {printable(why)}")
    if state.mounted:
        count = len(state.entries)
        if count == 0:
            lines.append("no entries")
        else:
            noun = "entry" if count == 1 else "entries"
            lines.append(f"{count} {noun}, in lookup order (the first match wins):")
            rows = [("NAME", "ENABLED", "MATCHES", "INTERPRETER", "FLAGS")]
            for entry in state.entries:
                e = entry_document(entry)
                rows.append(
                    (
                        e["name"],
                        "yes" if e["enabled"] else "no",
                        _matches_text(e),
                        e["interpreter"],
                        e["flags"] or "-",
                    )
                )
            lines += table(rows)
        for name in state.unreadable:
            reason = state.unreadable_reason(name)
            lines.append(f"  {printable(name)}: cannot be read ({printable(reason or '')})")
    return _text(lines)


def _text(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


def finding_lines(
    finding: Finding, indent: str = "", options: Optional[OptionNames] = None
) -> list[str]:
    """A finding as ``severity: code [entry]: message``, and its fix below.

    ``options`` maps the option names a finding gives (``"replace"``) to how
    they are spelled where the report is read (``"--replace"``).
    """
    where = f" [{printable(finding.entry)}]" if finding.entry else ""
    lines = [f"{indent}{finding.severity}: {finding.code}{where}: {printable(finding.message)}"]
    fix = finding.fix_text(options)
    if fix:
        lines.append(f"{indent}    fix: {printable(fix)}")
    return lines


def verdict_text(verdict: Verdict, options: Optional[OptionNames] = None) -> str:
    """One ``check`` result: a line for the file, its findings indented below."""
    arch = verdict.program
    if verdict.handler == "binfmt_misc":
        entry, interpreter = printable(verdict.entry or ""), printable(verdict.interpreter or "")
        how = f"binfmt_misc entry {entry} → {interpreter}"
    elif verdict.handler == "script":
        how = f"script → {printable(verdict.interpreter or '')}"
    elif verdict.handler == "native":
        loader = verdict.interpreter
        how = "native" + (f", loader {printable(loader)}" if loader else ", static")
    else:
        how = "no handler"
    outcome = "runs" if verdict.runs else f"FAILS ({verdict.errno})" if verdict.errno else "FAILS"
    lines = [f"{printable(verdict.path)}: {arch}: {how}: {outcome}"]
    for finding in verdict.findings:
        lines += finding_lines(finding, "    ", options)
    return _text(lines)


def outcome_text(outcome: Outcome, options: Optional[OptionNames] = None) -> str:
    """An install/uninstall/load plan: one row per step, findings, then what happened."""
    plan = outcome.plan
    lines = [f"binfmt_misc at {printable(plan.procfs)}:"]
    rows = []
    for step in plan.steps:
        doc = step.to_dict(plan.kernel)
        platform = doc["platforms"][0] if doc["platforms"] else "-"
        rows.append((step.action, step.entry.name, platform, step.reason_text(options)))
    lines += table(rows) if rows else ["  nothing to do"]
    for finding in plan.findings:
        lines += finding_lines(finding, "  ", options)
    if plan.cannot_restore:
        names = ", ".join(printable(repr(n)) for n in plan.cannot_restore)
        lines.append(f"if a step fails, these cannot be put back as they were: {names}")
    changes = plan.changes
    registering = [s for s in changes if s.action in ("register", "replace")]
    noun = "change" if len(changes) == 1 else "changes"
    if outcome.dry_run and plan.ok and changes:
        if registering:
            lines.append("register lines (dry run, nothing written):")
            lines.extend("  " + printable(s.entry.to_register(plan.kernel)) for s in registering)
        else:
            lines.append("dry run: nothing written")
    elif outcome.applied and not outcome.differences:
        lines.append(f"done: {len(changes)} {noun} applied")
    elif outcome.applied:
        lines.append(f"done: {len(changes)} {noun} applied, but binfmt_misc is not as planned:")
        lines.extend(f"  {printable(d)}" for d in outcome.differences)
    elif outcome.restored:
        lines.append("failed; binfmt_misc is as it was before")
    elif outcome.restored is False:
        lines.append("failed; binfmt_misc is not as it was before:")
        lines.extend(f"  {printable(d)}" for d in outcome.differences)
    elif not changes and plan.ok:
        lines.append("nothing to change")
    return _text(lines)


def verify_text(report: VerifyReport, options: Optional[OptionNames] = None) -> str:
    """The human verify report: one row per target, and the reasons below each failure."""
    if report.enabled is None:
        switch = "not mounted"
    else:
        switch = "enabled" if report.enabled else "disabled"
    where = f"chrooted into {report.rootfs}" if report.rootfs else "on this machine's root"
    lines = [f"binfmt_misc: {switch}; probes run {printable(where)}"]
    if not report.results:
        return _text([*lines, "no targets to verify"])
    rows = [("TARGET", "PLATFORM", "STATUS", "VIA", "DETAIL")]
    notes: list[list[str]] = [[]]
    for r in report.results:
        via = "kernel" if r.status == "native" else r.entry or "-"
        rows.append((r.target, r.platforms[0] if r.platforms else "-", r.status, via, r.detail))
        below = []
        if not r.ok:
            for f in r.findings:
                if f.severity != "info" and f.message != r.detail:
                    below.append(f"    {f.severity}: {printable(f.message)}")
        notes.append(below)
    for row, below in zip(table(rows, indent=""), notes):
        lines.append(row)
        lines += below
    good = [r for r in report.results if r.ok]
    native = sum(1 for r in good if r.status == "native")
    lines.append(
        f"{len(good)} of {len(report.results)} targets run ({native} native); "
        f"supported: {', '.join(report.supported) or 'none'}"
    )
    return _text(lines)


def scan_text(report: ScanReport) -> str:
    """The human scan report: counts by platform, kind and via, then the failing files."""
    lines = [f"{printable(report.root)}: {report.examined} files examined in {report.seconds:.2f}s"]
    rows = [("PLATFORM", "KIND", "VIA", "FILES")]
    rows += [(p, k, v or "-", str(n)) for (p, k, v), n in report.summary]
    lines += table(rows)
    skipped = ", ".join(f"{n} {what}" for what, n in report.skipped if n)
    if skipped:
        lines.append(f"not examined: {skipped}")
    if report.failures_total:
        lines.append(f"{report.failures_total} would fail:")
        for f in report.failures:
            via = f" via {printable(f.via)}" if f.via else ""
            lines.append(
                f"  {printable(f.path)}: {printable(f.platform)}{via}: {f.reason}: "
                f"{printable(f.message)}"
            )
        if report.failures_total > len(report.failures):
            lines.append(f"  … and {report.failures_total - len(report.failures)} more")
    else:
        lines.append("nothing would fail")
    return _text(lines)


def doctor_text(report: DoctorReport, options: Optional[OptionNames] = None) -> str:
    """Doctor's findings, worst first, each with its fix, then the verdict."""
    from .findings import SEVERITIES

    lines = []
    for p in sorted(report.problems, key=lambda p: -SEVERITIES.index(p.severity)):
        lines += finding_lines(p, "", options)
    verdict = {0: "healthy", 1: "works, with warnings", 2: "broken"}[report.exit_status]
    parts = ", ".join(
        _count(sum(p.severity == severity for p in report.problems), noun)
        for severity, noun in (("error", "error"), ("warning", "warning"), ("info", "note"))
    )
    lines.append(f"{printable(report.procfs)}: {verdict} ({parts})")
    return _text(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# -- ps and metrics (issue 14) ------------------------------------------------------------


def _when(seconds: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _pod_name(namespace: Optional[str], pod: Optional[str], uid: Optional[str]) -> str:
    if pod:
        return f"{namespace}/{pod}" if namespace else pod
    if uid:
        return f"pod {uid}"
    return "(no pod)"


def ps_text(report: ProcessReport, options: Optional[Mapping[str, str]] = None) -> str:
    """The human ``ps`` report: a row per emulated process, then totals by platform and pod."""
    from .emulated import stale_findings

    seen = f"{report.examined} examined" + (
        f", {report.unreadable} unreadable" if report.unreadable else ""
    )
    if not report.processes:
        return _text([f"no emulated processes ({seen})"])
    count = len(report.processes)
    lines = [f"{count} emulated process{'' if count == 1 else 'es'} ({seen}):"]
    rows = [("PID", "PLATFORM", "ENTRY", "CPU", "RSS", "STARTED", "POD", "CONTAINER", "COMMAND")]
    for p in report.processes:
        if p.container:
            container = p.container
        elif p.container_id:
            container = p.container_id[:12]
        else:
            container = "-"
        pod = _pod_name(p.namespace, p.pod, p.pod_uid) if (p.pod or p.pod_uid) else "-"
        rows.append(
            (
                str(p.pid),
                p.platform or p.target or "-",
                p.entry + (" (stale)" if p.interpreter_deleted else ""),
                f"{p.cpu_seconds:.2f}s",
                _size(p.rss_bytes),
                _when(p.started),
                pod,
                container,
                " ".join(p.argv) or p.program,
            )
        )
    lines += table(rows)
    for finding in stale_findings(report):
        lines += finding_lines(finding, "", options)
    lines.append("by platform:")
    platform_rows = [("PLATFORM", "PROCESSES", "CPU SECONDS")]
    platform_rows += [(k, str(n), f"{s:.2f}") for k, n, s in report.by_platform()]
    lines += table(platform_rows)
    lines.append("by pod:")
    pod_rows = [("POD", "PROCESSES", "CPU SECONDS")]
    pod_rows += [
        (_pod_name(ns, pod, uid), str(n), f"{s:.2f}") for ns, pod, uid, n, s in report.by_pod()
    ]
    lines += table(pod_rows)
    return _text(lines)
