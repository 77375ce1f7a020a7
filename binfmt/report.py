"""The ``status`` report: a :class:`~binfmt.procfs.State` as JSON and as text.

The JSON document is a stable, documented schema (``docs/cli.rst``):

.. code-block:: text

    {"procfs": str, "mounted": bool, "enabled": bool|null,
     "host": {"machine": str, "kernel": str, "native": [target], "platforms": [platform],
              "unknown": [target]},
     "entries": [{"name": str, "enabled": bool, "type": "magic"|"extension",
                  "offset": int|null, "magic": hex|null, "mask": hex|null,
                  "extension": str|null, "interpreter": str, "flags": str,
                  "qemu": str|null, "platforms": [str]}],
     "unreadable": [str]}

Entries are in lookup order. ``qemu`` is the QEMU target whose binaries the
entry matches (also for non-QEMU emulators such as FEX or Rosetta, which
match the same binaries), ``platforms`` the OCI platforms of all targets it
matches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from . import qemu
from .entry import Entry, EntryType
from .host import Host
from .procfs import State

if TYPE_CHECKING:  # imported for annotations only: `status` must start fast
    from .install import Plan
    from .prediction import Verdict

__all__ = [
    "entry_document",
    "host_document",
    "nfd_features",
    "plan_text",
    "runnable_platforms",
    "status_document",
    "status_text",
    "verdict_text",
]


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
        "native": list(host.native),
        "platforms": platforms,
        "unknown": list(host.unknown),
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

    For each target the host runs or some entry identifies, the entry the
    kernel would pick for that target's programs decides: none means native
    (if the host runs it), an entry counts when its interpreter is there or
    held open by F. So a broken entry that captures native programs takes
    their platform away. This reads files only; ``binfmt verify`` runs
    programs to prove it.
    """
    import os

    from .entry import Flags

    targets = [qemu.get(t) for t in host.native]
    if state.mounted and state.enabled:
        for entry in state.entries:
            if entry.enabled:
                targets.extend(sig for sig in qemu.identify(entry) if sig not in targets)
    platforms: list[str] = []
    for sig in targets:
        chosen = state.lookup(sig.header(2))
        if chosen is None:
            runs = host.runs_natively(sig.name)
        else:
            runs = Flags.FIX_BINARY in chosen.flags or os.access(chosen.interpreter, os.X_OK)
        if runs:
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
    from .cli import printable

    doc = host_document(host)
    lines = []
    if not state.mounted:
        lines.append(f"binfmt_misc: not mounted at {state.path}")
    else:
        switch = "enabled" if state.enabled else "disabled (no entry is used)"
        lines.append(f"binfmt_misc: mounted at {state.path}, {switch}")
    native = ", ".join(doc["platforms"]) or "unknown"
    lines.append(f"host: {host.machine}, kernel {host.release}, runs natively: {native}")
    if host.unknown:
        lines.append(f"      cannot tell whether it runs {', '.join(host.unknown)} natively")
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
                        printable(e["name"]),
                        "yes" if e["enabled"] else "no",
                        printable(_matches_text(e)),
                        printable(e["interpreter"]),
                        e["flags"] or "-",
                    )
                )
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for row in rows:
                cells = [row[i].ljust(widths[i]) for i in range(4)] + [row[4]]
                lines.append("  " + "  ".join(cells).rstrip())
        for name in state.unreadable:
            lines.append(f"  {printable(name)}: cannot be read (permission denied)")
    return "\n".join(lines) + "\n"


def verdict_text(verdict: Verdict) -> str:
    """One ``check`` result: a line for the file, its findings indented below."""
    from .cli import printable

    if verdict.elf is not None:
        arch = verdict.platform or verdict.target or verdict.elf.machine_name
    elif verdict.handler == "script":
        arch = "script"
    else:
        arch = "-"
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
    lines.extend(f"    {f.severity}: {f.code}: {printable(f.message)}" for f in verdict.findings)
    return "\n".join(lines) + "\n"


def plan_text(plan: Plan, *, dry_run: bool, applied: bool) -> str:
    """An install/uninstall plan: one row per step, findings, then what happened."""
    from .cli import printable

    lines = [f"binfmt_misc at {plan.procfs}:"]
    rows = []
    for step in plan.steps:
        doc = step.to_dict(plan.kernel)
        platform = doc["platforms"][0] if doc["platforms"] else "-"
        rows.append((step.action, printable(step.entry.name), platform, printable(step.reason)))
    if rows:
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            cells = [row[i].ljust(widths[i]) for i in range(3)] + [row[3]]
            lines.append("  " + "  ".join(cells).rstrip())
    else:
        lines.append("  nothing to do")
    for finding in plan.findings:
        lines.append(f"  {finding.severity}: {finding.code}: {printable(finding.message)}")
    changes = plan.changes
    registering = [s for s in changes if s.action in ("register", "replace")]
    if dry_run and plan.ok and changes:
        if registering:
            lines.append("register lines (dry run, nothing written):")
            lines.extend("  " + printable(s.entry.to_register(plan.kernel)) for s in registering)
        else:
            lines.append("dry run: nothing written")
    elif applied:
        noun = "change" if len(changes) == 1 else "changes"
        lines.append(f"done: {len(changes)} {noun} applied")
    elif not changes and plan.ok:
        lines.append("nothing to change")
    return "\n".join(lines) + "\n"
