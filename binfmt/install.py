"""Plan and apply QEMU registrations (and their removal), all or nothing.

:func:`plan` decides, for each requested target, what to do and why —
register, replace, enable, leave unchanged or skip — and collects findings:
errors that stop the plan (a missing interpreter, a name conflict without
``replace``, an entry that would capture the host's own binaries) and
warnings that do not (a dynamically linked QEMU with ``F``, the ``C`` flag's
security cost, a newer entry shadowing another registrant). Nothing is
written while planning.

:func:`apply` carries a plan out under :func:`lock`, after checking that
the state is still the one planned against. The plan proves first that it
can undo each step: an entry it removes or replaces must be one it can
register again exactly (an ``F`` entry whose interpreter file was deleted or
replaced since it was registered cannot be: the kernel holds a file nobody
can open again), and putting it back must restore the lookup order (the
kernel puts a new registration at the head, so newer entries are registered
again after it). A step that cannot be undone is refused (``cannot-restore``)
unless ``force``, and then the plan names it. When a write fails, the state
is read again, the writes that lead back to the state before are made, and
the state is read once more and compared with the one before, field by
field and in order: the error says "as it was before" only when that holds,
and otherwise lists every difference.

Hosts are judged by what they really run (:class:`~binfmt.host.Host`), not
by QEMU's "family" table: an x86_64 kernel without IA32 emulation gets
``qemu-i386``; an arm64 CPU without AArch32 gets ``qemu-arm``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import stat
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable, Literal, Optional, get_args

import attrs

from . import qemu
from .entry import Entry, EntryType, Flags
from .errors import BinfmtError, InstallError, LockTimeout, NotMounted, PermissionDenied
from .fakekernel import held_file, is_fake_tree
from .findings import Finding
from .health import inspect_interpreter, interpreter_findings
from .host import Host
from .kernel import KernelRules
from .procfs import BinfmtMisc, State
from .qemu import is_qemu_entry

__all__ = [
    "ACTIONS",
    "LOCK_TIMEOUT",
    "SEARCH_DIRS",
    "Action",
    "InstallError",
    "InstallOptions",
    "Outcome",
    "Plan",
    "Step",
    "apply",
    "carry_out",
    "find_interpreter",
    "is_qemu_entry",
    "lock",
    "plan",
    "plan_entries",
    "plan_uninstall",
    "planned_state",
]

Action = Literal[
    "register", "replace", "enable", "disable", "remove", "unchanged", "skip", "conflict"
]
#: Every action a step can have; the first five change the kernel's state.
ACTIONS: tuple[Action, ...] = get_args(Action)
_CHANGES = ACTIONS[:5]

#: Where to look for QEMU when no directory is given (QEMU's script defaults
#: to /usr/local/bin; distributions install to /usr/bin).
SEARCH_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/libexec/qemu-binfmt", "/bin")
#: Suffixes tried when none is given: static first, it works inside containers.
DEFAULT_SUFFIXES = ("-static", "")


@attrs.frozen
class InstallOptions:
    """``qemu-binfmt-conf.sh``'s options, and this tool's own."""

    #: Directory of the QEMU binaries; ``None``: search :data:`SEARCH_DIRS` and ``PATH``.
    qemu_path: Optional[str] = None
    #: Appended to ``qemu-<target>``; ``None``: ``-static`` if present, else nothing.
    qemu_suffix: Optional[str] = None
    #: ``F``: the kernel opens the interpreter now, so containers need not contain it.
    persistent: bool = False
    #: ``OC``: credentials from the binary (setuid works; see the security warning).
    credential: bool = False
    #: ``P``: pass the original argv[0] (needs a QEMU that understands it, as Debian's does).
    preserve_argv0: bool = False
    #: Replace an existing entry of the same name that differs.
    replace: bool = False
    #: Re-register identical entries too (an F entry keeps the file it opened:
    #: after upgrading QEMU, only a new registration runs the new one).
    refresh: bool = False
    #: Register even targets the host runs natively, or entries that capture its binaries.
    force: bool = False

    @property
    def flags(self) -> Flags:
        letters = ("OC" if self.credential else "") + ("F" if self.persistent else "")
        return Flags.from_letters(letters + ("P" if self.preserve_argv0 else ""))


@attrs.frozen
class Step:
    """One decision of a plan."""

    #: ``register``, ``replace``, ``enable``, ``disable``, ``remove`` (the
    #: changes), or ``unchanged``, ``skip``, ``conflict`` (a name taken by a
    #: different entry). A registered entry whose ``enabled`` is false is
    #: disabled right after its registration.
    action: Action = attrs.field(validator=attrs.validators.in_(ACTIONS))
    entry: Entry
    #: The QEMU target, when the step is about one.
    target: Optional[str] = None
    #: Why (for ``skip``/``unchanged``), or what (for the others); ``{name}``
    #: stands for option ``name`` of :attr:`options` (see :meth:`reason_text`).
    reason: str = ""
    #: The entry that ``replace``/``remove`` takes away.
    old: Optional[Entry] = None
    #: Options of the call the reason names (as in :attr:`binfmt.findings.Finding.options`).
    options: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        return self.action in _CHANGES

    def reason_text(self, names: Optional[Mapping[str, str]] = None) -> str:
        """The reason, each option spelled as ``names`` says (default: ``the force option``)."""
        if not self.options:
            return self.reason
        given = names or {}
        return self.reason.format_map({o: given.get(o, f"the {o} option") for o in self.options})

    def to_dict(
        self, kernel: KernelRules, names: Optional[Mapping[str, str]] = None
    ) -> dict[str, Any]:
        platforms = list(qemu.get(self.target).platforms) if self.target else []
        line = None
        if self.action in ("register", "replace"):
            line = self.entry.to_register(kernel)
        return {
            "action": self.action,
            "name": self.entry.name,
            "target": self.target,
            "platforms": platforms,
            "interpreter": self.entry.interpreter,
            "flags": self.entry.flags.letters,
            "line": line,
            "reason": self.reason_text(names),
        }


@attrs.frozen
class Plan:
    """What :func:`apply` will do, and what was found while deciding."""

    procfs: str
    steps: tuple[Step, ...]
    findings: tuple[Finding, ...] = ()
    kernel: KernelRules = attrs.field(factory=KernelRules)
    #: Entries a failure could leave not as they were (allowed by ``force``;
    #: without it each is a ``cannot-restore`` error and the plan is not ``ok``).
    cannot_restore: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """No finding stops the plan."""
        return not any(f.severity == "error" for f in self.findings)

    @property
    def changes(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.changes)

    def to_dict(self, names: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
        """The plan's document (``names``: see :meth:`Finding.fix_text`)."""
        return {
            "procfs": self.procfs,
            "ok": self.ok,
            "steps": [s.to_dict(self.kernel, names) for s in self.steps],
            "findings": [f.to_dict(names) for f in self.findings],
            "cannot_restore": list(self.cannot_restore),
        }


# -- finding the interpreters ---------------------------------------------------


def find_interpreter(sig: qemu.Signature, options: InstallOptions) -> Optional[str]:
    """The QEMU binary for ``sig`` under the options' path and suffix, or ``None``."""
    suffixes = (options.qemu_suffix,) if options.qemu_suffix is not None else DEFAULT_SUFFIXES
    if options.qemu_path is not None:
        dirs: Sequence[str] = (options.qemu_path,)
    else:
        path_dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
        dirs = [*SEARCH_DIRS, *(d for d in path_dirs if d not in SEARCH_DIRS)]
    for suffix in suffixes:
        for directory in dirs:
            candidate = os.path.join(directory, sig.interpreter_name + suffix)
            if os.path.isfile(candidate):
                return candidate
    return None


# -- planning -------------------------------------------------------------------


def plan(
    targets: Iterable[str],
    options: InstallOptions = InstallOptions(),
    *,
    state: State,
    host: Host,
    kernel: Optional[KernelRules] = None,
    this_machine: bool = True,
) -> Plan:
    """Decide how to register QEMU for ``targets`` (names, aliases, platforms or ``all``).

    ``this_machine=False`` plans for another node (its ``state`` and ``host``):
    its QEMU binaries are not looked for here, each is taken to be
    ``qemu-TARGET`` plus the suffix (default ``-static``) in the QEMU path
    (default ``/usr/bin``, where Debian's qemu-user-static puts them), and they
    are not inspected. :func:`planned_state` gives the state such a plan makes.
    """
    rules = kernel or host.kernel
    sigs = qemu.resolve(targets)
    explicit = "all" not in qemu.split_targets(targets)
    flags = options.flags
    steps: list[Step] = []
    findings: list[Finding] = []
    if Flags.FIX_BINARY in flags and "F" not in rules.flag_letters:
        findings.append(
            Finding(
                "kernel-too-old",
                message="the F flag needs Linux 4.8 or newer; this kernel refuses it",
                fix="upgrade the kernel, or leave out {persistent}",
                options=("persistent",),
            )
        )
    if Flags.CREDENTIALS in flags:
        findings.append(
            Finding(
                "credentials-flag",
                message="the C flag runs a setuid binary's emulator with the binary's privileges: "
                "QEMU is not hardened for that, and any matching setuid-root file runs it as root",
                fix="leave out {credential} unless setuid programs must keep their privileges",
                options=("credential",),
            )
        )
    for sig in sigs:
        steps.append(
            _plan_target(sig, options, flags, state, host, explicit, findings, this_machine)
        )
    if not this_machine:  # never applied here: what undoing would need is that node's business
        return Plan(state.path, tuple(steps), tuple(findings), rules)
    return _finish(state, steps, findings, rules, options.force)


def _plan_target(
    sig: qemu.Signature,
    options: InstallOptions,
    flags: Flags,
    state: State,
    host: Host,
    explicit: bool,
    findings: list[Finding],
    this_machine: bool = True,
) -> Step:
    if this_machine:
        interp = find_interpreter(sig, options)
    else:  # a file of that node: named, not looked for
        suffix = "-static" if options.qemu_suffix is None else options.qemu_suffix
        interp = os.path.join(options.qemu_path or SEARCH_DIRS[0], sig.interpreter_name + suffix)
    # Without a binary, name the path it was expected at (for the report).
    expected = os.path.join(
        options.qemu_path or SEARCH_DIRS[0], sig.interpreter_name + (options.qemu_suffix or "")
    )
    entry = sig.to_entry(interp or expected, flags)
    native = host.runs_natively(sig.name)
    if native and not options.force:
        why = f"the host runs {sig.name} natively"
        if not explicit:
            return Step("skip", entry, sig.name, why)
        return Step(
            "skip", entry, sig.name, why + " ({force} registers it anyway)", options=("force",)
        )
    if interp is None:
        if not explicit:
            return Step("skip", entry, sig.name, f"no {sig.interpreter_name} binary found")
        where = options.qemu_path or ", ".join(SEARCH_DIRS) + " and PATH"
        findings.append(
            Finding(
                "interpreter-missing",
                message=f"{sig.interpreter_name} not found in {where}",
                fix="install QEMU (e.g. Debian's qemu-user-static), or give its directory "
                "with {qemu_path}",
                entry=entry.name,
                options=("qemu_path",),
            )
        )
        return Step("register", entry, sig.name, "interpreter not found")
    if this_machine:
        findings.extend(_check_interpreter(entry))
    findings.extend(_capture_findings(entry, host, options.force))
    unsure = sig.name in host.unknown
    if unsure:
        findings.append(_unknown_finding(entry, sig.name, host))
    for other in state.entries:
        if other.name != entry.name and other.enabled and sig in qemu.identify(other):
            findings.append(
                Finding(
                    "shadows-entry",
                    message=f"{entry.name} will be newer than {other.name!r}, which also runs "
                    f"{sig.name} binaries ({other.interpreter}): {other.name!r} will no longer "
                    "be used",
                    entry=other.name,
                )
            )
    existing = state.get(entry.name)
    if existing is None:
        unknown = " (whether the host runs it itself is unknown)" if unsure else ""
        return Step("register", entry, sig.name, f"register {sig.name}{unknown}")
    if existing.same_registration(entry):
        if options.refresh:
            return Step(
                "replace", entry, sig.name, "re-register ({refresh})", existing, ("refresh",)
            )
        if existing.enabled:
            return Step("unchanged", entry, sig.name, "already registered, identical")
        return Step("enable", entry, sig.name, "registered identically but disabled", existing)
    if not options.replace:
        findings.append(
            Finding(
                "name-conflict",
                message=f"an entry named {entry.name!r} already exists and differs "
                f"({existing.interpreter}, flags {existing.flags.letters or '-'})",
                fix="{replace} replaces it",
                entry=entry.name,
                options=("replace",),
            )
        )
        return Step(
            "conflict",
            entry,
            sig.name,
            "differs; not replaced without {replace}",
            existing,
            ("replace",),
        )
    return Step("replace", entry, sig.name, f"replace the different {entry.name!r}", existing)


def _capture_findings(entry: Entry, host: Host, force: bool) -> list[Finding]:
    captured = host.captured_by(entry)
    if not captured:
        return []
    # Only the primary target's programs can loop; a compat target's run emulated.
    loop = " (or loop with ELOOP)" if host.primary in captured else ", emulated"
    return [
        Finding(
            "hijacks-native",
            message=f"{entry.name} would also match this host's own "
            f"{', '.join(captured)} binaries: every such exec would go to its interpreter"
            f"{loop}",
            severity="warning" if force else "error",
            fix="" if force else "{force} registers it anyway",
            entry=entry.name,
            options=() if force else ("force",),
        )
    ]


def _unknown_finding(entry: Entry, target: str, host: Host) -> Finding:
    why = dict(host.evidence).get(target, "not measured")
    return Finding(
        "native-unknown",
        message=f"whether this host runs {target} programs itself is unknown ({why}): "
        f"{entry.name} sends every one of them to {entry.interpreter}",
        fix=f"if the CPU runs {target} programs, leave {target} out",
        entry=entry.name,
    )


def _check_interpreter(entry: Entry) -> list[Finding]:
    return interpreter_findings(
        entry,
        inspect_interpreter(entry.interpreter),
        emulator=True,
        fix_binary_hint="",
    )


def planned_state(plan: Plan, state: State) -> State:
    """The state ``plan`` leaves when applied to ``state`` (itself, if the plan has errors).

    Each registration becomes the newest entry, as the kernel lists it.
    """
    if not plan.ok:
        return state
    entries = list(state.entries)
    for step in plan.changes:
        if step.action == "enable":
            entries = [
                attrs.evolve(e, enabled=True) if e.name == step.entry.name else e for e in entries
            ]
            continue
        if step.old is not None:
            entries = [e for e in entries if e.name != step.old.name]
        if step.action != "remove":
            entries.insert(0, step.entry)
    return attrs.evolve(
        state, mounted=True, enabled=state.enabled is not False, entries=tuple(entries)
    )


def plan_entries(
    entries: Iterable[Entry],
    *,
    state: State,
    host: Optional[Host] = None,
    force: bool = False,
) -> Plan:
    """Plan registering ``entries`` as given (from binfmt.d files, say), in order.

    An identical entry is left alone (or enabled), one of the same name that
    differs is replaced (the file names it: that is asking by name). An entry
    given disabled (``enabled=False``, as a saved :class:`State` holds it) is
    registered and then disabled, or disabled if it is there. Entries of
    other names are never touched. With ``host``, an entry that would capture
    the host's own binaries is an error unless ``force``; ``force`` also
    allows steps that a failure could not undo (``cannot-restore``).
    """
    steps: list[Step] = []
    findings: list[Finding] = []
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            findings.append(
                Finding(
                    "repeated-name",
                    message=f"{entry.name!r} is given twice; keep one",
                    entry=entry.name,
                )
            )
            continue
        seen.add(entry.name)
        if host is not None:
            findings.extend(_capture_findings(entry, host, force))
        existing = state.get(entry.name)
        if existing is None:
            steps.append(Step("register", entry, None, "register"))
        elif existing.same_registration(entry):
            action: Action = "unchanged"
            if existing.enabled != entry.enabled:
                action = "enable" if entry.enabled else "disable"
            steps.append(Step(action, entry, None, "already registered, identical", existing))
        else:
            steps.append(Step("replace", entry, None, "replace the different entry", existing))
    return _finish(state, steps, findings, KernelRules(), force)


def plan_uninstall(
    names: Iterable[str], *, all_qemu: bool = False, state: State, force: bool = False
) -> Plan:
    """Decide which entries to remove: named ones, or recognisably QEMU's for a target.

    A name that is an entry is removed whoever made it (it was asked for by
    name). A target (``arm64``, ``linux/arm/v7``) removes only entries that
    are QEMU's (:func:`is_qemu_entry`) for that target. ``all_qemu`` removes
    every QEMU entry. The global ``status`` is never written. Removals that
    a failure could not undo come last; if a failure could still leave one
    removed, that is a ``cannot-restore`` error unless ``force``.
    """
    steps: list[Step] = []
    findings: list[Finding] = []
    chosen: dict[str, Step] = {}
    for name in names:
        entry = state.get(name)
        if entry is not None:
            chosen.setdefault(name, Step("remove", entry, None, "named", entry))
            continue
        try:
            sig = qemu.lookup(name)
        except BinfmtError:
            findings.append(
                Finding(
                    "unknown-name", message=f"no entry named {name!r}, and it is not a QEMU target"
                )
            )
            continue
        matched = [e for e in state.entries if is_qemu_entry(e) and sig in qemu.identify(e)]
        if not matched:
            findings.append(
                Finding("nothing-to-remove", message=f"no QEMU entry for {sig.name} is registered")
            )
        for e in matched:
            chosen.setdefault(e.name, Step("remove", e, sig.name, f"QEMU entry for {sig.name}", e))
    if all_qemu:
        for e in state.entries:
            if is_qemu_entry(e):
                chosen.setdefault(e.name, Step("remove", e, None, "QEMU entry", e))
    steps = list(chosen.values())
    for e in state.entries:
        if e.name not in chosen and all_qemu:
            steps.append(Step("unchanged", e, None, "not QEMU's: left alone"))
    return _finish(state, steps, findings, KernelRules(), force)


# -- proving that a plan can be undone -----------------------------------------------

WriteOp = Literal["register", "remove", "enable", "disable"]


@attrs.frozen
class _Write:
    """One write to binfmt_misc: register an entry, or ``-1``/``1``/``0`` to one."""

    op: WriteOp
    name: str
    entry: Optional[Entry] = None


def _writes(steps: Iterable[Step]) -> list[_Write]:
    """The kernel writes that carry ``steps`` out, in order."""
    out: list[_Write] = []
    for step in steps:
        name = step.entry.name
        if step.action in ("enable", "disable"):
            out.append(_Write(step.action, name))
        elif step.action == "remove":
            assert step.old is not None
            out.append(_Write("remove", step.old.name))
        elif step.action in ("register", "replace"):
            if step.action == "replace":
                assert step.old is not None
                out.append(_Write("remove", step.old.name))
            out.append(_Write("register", name, step.entry))
            if not step.entry.enabled:
                out.append(_Write("disable", name))
    return out


def _simulate(entries: Sequence[Entry], writes: Iterable[_Write]) -> list[Entry]:
    """The entries, in lookup order, after ``writes`` (each assumed to succeed)."""
    out = list(entries)
    for w in writes:
        if w.op == "register":
            assert w.entry is not None
            new = w.entry if w.entry.enabled else attrs.evolve(w.entry, enabled=True)
            out = [new, *(e for e in out if e.name != w.name)]
        elif w.op == "remove":
            out = [e for e in out if e.name != w.name]
        else:
            on = w.op == "enable"
            out = [attrs.evolve(e, enabled=on) if e.name == w.name else e for e in out]
    return out


def _held_file_problem(entry: Entry, procfs: str) -> Optional[str]:
    """Why registering ``entry`` again would not give the entry the kernel has, or ``None``.

    Only ``F`` entries can differ: the kernel opened their interpreter when
    they were registered and keeps that file. The path still names that file
    only if the file (and the symlink, if the path is one) has not changed
    since the registration: its inode change time is older than the entry's
    (an entry file's timestamps are its registration time). A file changed
    in the same clock tick as the registration counts as changed.
    """
    if Flags.FIX_BINARY not in entry.flags:
        return None
    path = entry.interpreter
    if not os.path.isabs(path):
        return (
            f"its F interpreter {path!r} is a relative path: it was opened relative to the "
            "registering process's directory"
        )
    try:
        registered = os.stat(os.path.join(procfs, entry.name)).st_mtime_ns
    except OSError as exc:
        return f"its registration time cannot be read ({exc.strerror})"
    try:
        st = os.stat(path)
        link = os.lstat(path)
    except OSError as exc:
        return (
            f"its F interpreter {path} is gone ({exc.strerror}): the kernel holds a file "
            "that can no longer be opened"
        )
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        return f"its F interpreter {path} is no longer an executable file"
    if is_fake_tree(procfs):
        # A fake kernel says which file it holds; a captured tree's entry files have
        # a checkout's times, not registrations, and nothing of it holds a file here.
        held = held_file(procfs, entry.name)
        changed = held is not None and held != (st.st_dev, st.st_ino, st.st_ctime_ns)
    else:
        changed = st.st_ctime_ns >= registered or link.st_ctime_ns >= registered
    if changed:
        return (
            f"its F interpreter {path} changed after the entry was registered (replaced or "
            "modified): registering it again would hold the new file, not the one the kernel "
            "holds"
        )
    return None


def _file_id(path: str) -> Optional[tuple[int, int, int]]:
    """The file a path names now: device, inode, size (``None`` if it cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size)


def _unrestorable(state: State) -> dict[str, str]:
    """The entries of ``state`` that registering again would not reproduce, and why."""
    found: dict[str, str] = {}
    for entry in state.entries:
        problem = _held_file_problem(entry, state.path)
        if problem is not None:
            found[entry.name] = problem
    return found


def _same(a: Entry, b: Entry) -> bool:
    """:meth:`Entry.same_registration`, without building entries (planning compares many)."""
    return (a.name, a.interpreter, a.type, a.offset, a.magic, a.mask, a.extension, a.flags) == (
        b.name,
        b.interpreter,
        b.type,
        b.offset,
        b.magic,
        b.mask,
        b.extension,
        b.flags,
    )


@functools.lru_cache(maxsize=4096)
def _overlap(a: Entry, b: Entry) -> bool:
    """Whether some file (and exec path) can match both entries, so their order matters."""
    if a.type is EntryType.EXTENSION or b.type is EntryType.EXTENSION:
        if a.type is b.type:
            return a.extension == b.extension
        return True  # any file can have the extension and the magic
    start = max(a.offset, b.offset)
    end = min(a.offset + a.size, b.offset + b.size)
    for pos in range(start, end):
        ia, ib = pos - a.offset, pos - b.offset
        ma = a.mask[ia] if a.mask is not None else 0xFF
        mb = b.mask[ib] if b.mask is not None else 0xFF
        if (a.magic[ia] & ma & mb) != (b.magic[ib] & mb & ma):
            return False
    return True


def _restore_writes(
    current: Sequence[Entry],
    target: Sequence[Entry],
    pinned: Collection[str],
    *,
    exact: bool,
    can_register: Callable[[Entry], bool],
) -> list[_Write]:
    """Writes that turn ``current`` into ``target`` (both in lookup order, newest first).

    A registration goes to the head of the list, so the entries kept in
    place must already be in the target's order, and every target entry newer
    than one that must be registered again is registered again too, after it:
    every pair of entries (``exact``) or only pairs that can match the same
    file. ``pinned`` entries are never removed to be registered again (that
    would not give them back as they were); absent ones are registered only
    where ``can_register`` says so.
    """
    now = {e.name: e for e in current}
    position = {e.name: i for i, e in enumerate(current)}
    keep = {t.name for t in target if t.name in now and _same(now[t.name], t)}
    # Oldest first: whether an entry stays depends only on the older ones.
    for i in range(len(target) - 1, -1, -1):
        a = target[i]
        if a.name not in keep or a.name in pinned:
            continue
        for b in target[i + 1 :]:
            if (b.name not in keep or position[b.name] < position[a.name]) and (
                exact or _overlap(a, b)
            ):
                keep.discard(a.name)
                break
    # Entries that must go (or differ) first; then, oldest first, every target entry
    # not kept: registered, or removed and registered at once if it only moves, and
    # disabled right after if it was. So a failure part way loses as little as can be.
    moving = {t.name for t in target if t.name in now and _same(now[t.name], t)}
    writes = [
        _Write("remove", e.name) for e in current if e.name not in keep and e.name not in moving
    ]
    for t in reversed(target):
        if t.name in keep:
            if now[t.name].enabled != t.enabled:
                writes.append(_Write("enable" if t.enabled else "disable", t.name))
            continue
        if not can_register(t):
            continue
        if t.name in moving:
            writes.append(_Write("remove", t.name))
        writes.append(_Write("register", t.name, t))
        if not t.enabled:
            writes.append(_Write("disable", t.name))
    return writes


def _registrable(pinned: Collection[str]) -> Callable[[Entry], bool]:
    """Whether a rollback registers an entry again: any entry, but a pinned one (its
    ``F`` file cannot be put back as it was) only while its path still holds a file."""

    def can_register(entry: Entry) -> bool:
        return entry.name not in pinned or os.path.exists(entry.interpreter)

    return can_register


def _way_back(
    current: Sequence[Entry],
    target: Sequence[Entry],
    pinned: Collection[str],
    can_register: Callable[[Entry], bool],
) -> list[_Write]:
    """The writes back to ``target``: its exact order if reachable, else the order that matters."""
    exact = _restore_writes(current, target, pinned, exact=True, can_register=can_register)
    if _simulate(current, exact) == list(target):
        return exact
    return _restore_writes(current, target, pinned, exact=False, can_register=can_register)


@attrs.frozen
class _Difference:
    """One way two lists of entries differ."""

    #: The entry it is about (for an order difference: the one now too far ahead).
    name: str
    text: str
    #: Whether it can change what runs (everything but the order of unrelated entries).
    material: bool = True
    #: For an order difference: the entry it should come after.
    behind: Optional[str] = None


def _compare(before: Sequence[Entry], after: Sequence[Entry]) -> list[_Difference]:
    """Every difference between two lists of entries: presence, fields, enabled, order."""
    was = {e.name: e for e in before}
    now = {e.name: e for e in after}
    found: list[_Difference] = []
    for e in before:
        if e.name not in now:
            found.append(_Difference(e.name, f"{e.name!r} is gone"))
    for e in after:
        if e.name not in was:
            found.append(_Difference(e.name, f"{e.name!r} is new"))
    for e in before:
        other = now.get(e.name)
        if other is None:
            continue
        if not _same(other, e):
            found.append(_Difference(e.name, f"{e.name!r} differs: {_field_changes(e, other)}"))
        elif other.enabled != e.enabled:
            state = "enabled" if other.enabled else "disabled"
            found.append(_Difference(e.name, f"{e.name!r} is {state} (it was not)"))
    common_before = [e for e in before if e.name in now]
    if [e.name for e in common_before] == [e.name for e in after if e.name in was]:
        return found  # the same order
    rank = {e.name: i for i, e in enumerate(after)}
    harmless: list[str] = []
    for i, a in enumerate(common_before):
        for b in common_before[i + 1 :]:
            if rank[b.name] > rank[a.name]:
                continue
            if _overlap(a, b) or _overlap(now[a.name], now[b.name]):
                found.append(
                    _Difference(
                        b.name,
                        f"{b.name!r} is now tried before {a.name!r} (it was after), and both "
                        "can match the same file",
                        behind=a.name,
                    )
                )
            else:
                harmless.extend(n for n in (a.name, b.name) if n not in harmless)
    if harmless:
        old = ", ".join(repr(e.name) for e in before if e.name in harmless)
        new = ", ".join(repr(e.name) for e in after if e.name in harmless)
        found.append(
            _Difference(
                harmless[0],
                f"entries that match no common file are listed as {new} (it was {old}): "
                "no program runs differently",
                material=False,
            )
        )
    return found


def _field_changes(old: Entry, new: Entry) -> str:
    parts = []
    if new.interpreter != old.interpreter:
        parts.append(f"interpreter {new.interpreter!r} (it was {old.interpreter!r})")
    if new.flags != old.flags:
        parts.append(f"flags {new.flags.letters or '-'} (they were {old.flags.letters or '-'})")
    if (new.type, new.offset, new.magic, new.mask, new.extension) != (
        old.type,
        old.offset,
        old.magic,
        old.mask,
        old.extension,
    ):
        parts.append("it matches other files")
    return ", ".join(parts) or "its registration changed"


@attrs.frozen
class _Proof:
    """What a failure at any write of a plan could leave different."""

    #: Entries that could not be put back as they were, and why.
    lost: dict[str, str]
    #: Differences that change nothing that runs (the order of unrelated entries).
    notes: tuple[str, ...]


def _prove_undo(writes: Sequence[_Write], state: State, problems: Mapping[str, str]) -> _Proof:
    """Fail each write in turn, undo, and collect what would not be as it was."""
    target = list(state.entries)
    lost: dict[str, str] = {}
    notes: list[str] = []
    if not problems:
        return _Proof(lost, ())  # every entry can be registered again: the way back is exact

    can_register = _registrable(problems)  # as the rollback decides it (_roll_back)
    for k in range(1, len(writes)):
        current = _simulate(target, writes[:k])
        back = _way_back(current, target, problems, can_register)
        for w in back:
            if w.op == "register" and w.name in problems:
                # Registered again, but not as it was: it holds another file.
                lost.setdefault(w.name, problems[w.name])
        for diff in _compare(target, _simulate(current, back)):
            if not diff.material:
                if diff.text not in notes:
                    notes.append(diff.text)
            elif diff.behind is not None:
                blocker = diff.behind if diff.behind in problems else diff.name
                moved = diff.name if blocker == diff.behind else diff.behind
                lost.setdefault(
                    moved,
                    f"putting it back behind {blocker!r} would need {blocker!r} registered "
                    f"again, and {problems.get(blocker, 'it cannot be')}",
                )
            else:
                lost.setdefault(diff.name, problems.get(diff.name, diff.text))
    return _Proof(lost, tuple(notes))


def _removes_unrestorable(step: Step, problems: Mapping[str, str]) -> bool:
    return step.action == "remove" and step.old is not None and step.old.name in problems


def _finish(
    state: State,
    steps: list[Step],
    findings: list[Finding],
    kernel: KernelRules,
    force: bool,
) -> Plan:
    """The plan, once it has proved what it can undo (``cannot-restore`` unless ``force``).

    Removals of entries that cannot be registered again go last: when the
    last write of a plan fails, nothing needs undoing.
    """
    problems = _unrestorable(state)
    lost: tuple[str, ...] = ()
    if problems:
        steps = [s for s in steps if not _removes_unrestorable(s, problems)] + [
            s for s in steps if _removes_unrestorable(s, problems)
        ]
        proof = _prove_undo(_writes(s for s in steps if s.changes), state, problems)
        for name, why in proof.lost.items():
            findings.append(
                Finding(
                    "cannot-restore",
                    severity="warning" if force else "error",
                    message=f"if a later step fails, {name!r} cannot be put back as it was: {why}",
                    fix=""
                    if force
                    else "{force} goes ahead anyway; a failure then says what it left",
                    entry=name,
                    options=() if force else ("force",),
                )
            )
        for note in proof.notes:
            findings.append(
                Finding(
                    "restore-order",
                    message="if a later step fails, the rollback puts every entry back, but "
                    + note,
                )
            )
        lost = tuple(proof.lost)
    return Plan(state.path, tuple(steps), tuple(findings), kernel, lost)


# -- the writer lock -----------------------------------------------------------------------

#: How long :func:`lock` waits for another writer, in seconds, unless told otherwise.
LOCK_TIMEOUT = 30.0


@contextlib.contextmanager
def lock(procfs: str, *, timeout: Optional[float] = None) -> Iterator[None]:
    """Hold the writer lock of one binfmt_misc instance: ``flock`` on its ``register`` file.

    Only a process that may write ``register`` (root, or the root of the
    user namespace that owns the instance) can open it, so no other user can
    take the lock, and every path to the same instance locks the same file.
    Nothing is created, so nothing is left behind. Waits at most ``timeout``
    seconds (default :data:`LOCK_TIMEOUT`), then raises
    :class:`~binfmt.errors.LockTimeout` naming the holder's PID. Commands plan
    *and* apply under it, so two runs at once cannot interleave: the second
    sees what the first registered. ``flock(1)`` takes the same lock
    (``flock /proc/sys/fs/binfmt_misc/register systemctl restart
    systemd-binfmt``). Not reentrant: pass ``locked=True`` to :func:`apply`
    while holding it.
    """
    path = os.path.join(procfs, "register")
    limit = LOCK_TIMEOUT if timeout is None else timeout
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise NotMounted(procfs) from None
    except PermissionError:
        raise PermissionDenied(path, "lock") from None
    except OSError as exc:
        raise InstallError(f"cannot lock {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InstallError(f"cannot lock {path}: it is not a binfmt_misc register file")
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise InstallError(
                f"cannot lock {path}: other users can open it (owner {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):o}), so they could hold the lock"
            )
        deadline = time.monotonic() + limit
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    holder = _lock_holder(st)
                    raise LockTimeout(procfs, limit, holder, _command(holder)) from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, 0.05)
        yield
    finally:
        os.close(fd)


def _lock_holder(st: os.stat_result) -> Optional[int]:
    """The PID holding a ``flock`` on the file of ``st``, from ``/proc/locks``."""
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:28:3 0 EOF"; waiters are "1: -> FLOCK …".
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
            with contextlib.suppress(ValueError):
                pid = int(fields[4])
                if pid > 0 and pid != os.getpid():
                    return pid
    return None


def _command(pid: Optional[int]) -> Optional[str]:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode("utf-8", "replace").strip() or None
    except OSError:
        return None


# -- applying ---------------------------------------------------------------------


def apply(plan: Plan, misc: BinfmtMisc, *, locked: bool = False) -> list[Step]:
    """Carry out ``plan``'s changes on ``misc``; all or nothing. Returns the steps done.

    Raises :class:`InstallError` without writing if the plan has errors, the
    state changed since it was made, or a step became one a failure could not
    undo. When a write fails, the state is read again and brought back to the
    one before (the entries this run touched, in their lookup order), then
    read once more and compared: the error's ``restored`` says whether it is
    as it was, ``differences`` what is not (see
    :class:`~binfmt.errors.InstallError`). When every write succeeds but the
    state read afterwards is not the plan's (another writer), the error has
    ``applied`` set. ``locked`` says the caller already holds :func:`lock`.
    """
    if not plan.ok:
        errors = "; ".join(f.message for f in plan.findings if f.severity == "error")
        raise InstallError(f"the plan has errors, nothing was written: {errors}")
    with contextlib.nullcontext() if locked else lock(misc.path):
        before = misc.state()
        _check_unchanged(plan, before)
        writes = _writes(plan.changes)
        problems = _unrestorable(before)
        proof = _prove_undo(writes, before, problems)
        for name in proof.lost:
            if name not in plan.cannot_restore:
                raise InstallError(
                    f"entry {name!r} changed since the plan was made and a failure could no "
                    f"longer put it back ({proof.lost[name]}): nothing was written; run again"
                )
        held = {
            e.name: _file_id(e.interpreter)
            for e in before.entries
            if Flags.FIX_BINARY in e.flags and e.name not in problems
        }
        for done, w in enumerate(writes):
            try:
                _write(misc, w)
            except BinfmtError as exc:
                raise _roll_back(misc, before, writes, done, exc, problems, held) from exc
        _check_applied(misc, before, writes)
    return list(plan.changes)


def _check_unchanged(plan: Plan, now: State) -> None:
    for step in plan.changes:
        if now.get(step.entry.name) != step.old:
            raise InstallError(
                f"entry {step.entry.name!r} changed since the plan was made: run again"
            )


def _write(misc: BinfmtMisc, w: _Write) -> None:
    if w.op == "register":
        assert w.entry is not None
        misc.register(w.entry)
    elif w.op == "remove":
        misc.remove(w.name)
    elif w.op == "enable":
        misc.enable(w.name)
    else:
        misc.disable(w.name)


def _check_applied(misc: BinfmtMisc, before: State, writes: Sequence[_Write]) -> None:
    """After every write succeeded: is each entry the plan touched what the plan made?"""
    touched = {w.name for w in writes}
    expected = [e for e in _simulate(before.entries, writes) if e.name in touched]
    after = [e for e in misc.state().entries if e.name in touched]
    differences = [d.text for d in _compare(expected, after) if d.behind is None and d.material]
    if differences:
        raise InstallError(
            "every write succeeded, but binfmt_misc is not as planned (another writer changed "
            f"it meanwhile): {'; '.join(differences)}",
            applied=True,
            differences=tuple(differences),
        )


def _roll_back(
    misc: BinfmtMisc,
    before: State,
    writes: Sequence[_Write],
    done: int,
    exc: BinfmtError,
    problems: Mapping[str, str],
    held: Mapping[str, Optional[tuple[int, int, int]]],
) -> InstallError:
    """Bring the entries this run changed back to ``before``; the error that says how it went."""
    notes: list[str] = []
    failed: list[str] = []
    try:
        now = misc.state()
    except BinfmtError as read_error:
        return InstallError(
            f"{exc}; the state cannot be read to roll back ({read_error}): binfmt_misc may "
            "not be as it was before",
            restored=False,
            differences=(f"unknown: {read_error}",),
        )
    changed_files = {n for n, fid in held.items() if _file_id(_interpreter_of(before, n)) != fid}
    pinned = set(problems) | changed_files

    can_register = _registrable(pinned)
    ours = _left_by_this_run(before, now, writes, done)
    # Stop at the first write of the way back that fails, read again and try
    # once more from there: a write that depends on a failed one could lose more.
    for _ in range(3):
        back = _way_back(now.entries, _rollback_target(before, now, ours), pinned, can_register)
        if not back:
            break
        for w in back:
            try:
                _write(misc, w)
            except BinfmtError as undo_error:
                if str(undo_error) not in failed:
                    failed.append(str(undo_error))
                break
            note = (
                f"{w.name!r} is registered again, but holds the file now at "
                f"{_interpreter_of(before, w.name)}, not the one it held before"
            )
            if w.op == "register" and w.name in pinned and note not in notes:
                notes.append(note)
        else:
            break
        try:
            now = misc.state()
        except BinfmtError:
            break
    try:
        after = misc.state()
    except BinfmtError as read_error:
        return InstallError(
            f"{exc}; rolled back, but the state cannot be read again ({read_error})",
            restored=False,
            differences=(f"unknown: {read_error}",),
        )
    differences = [
        d.text if d.name in ours or d.behind is not None else f"{d.text} (not by this run)"
        for d in _compare(before.entries, after.entries)
    ]
    if before.enabled != after.enabled:
        differences.append(
            f"binfmt_misc is {'enabled' if after.enabled else 'disabled'} (not by this run)"
        )
    differences += notes
    if done:
        changes = f"rolled back {done} change{'s' if done != 1 else ''}"
    else:
        changes = "nothing had been changed"
    if not differences:
        return InstallError(f"{exc}; {changes}: binfmt_misc is as it was before", restored=True)
    undo = f" (undoing failed: {'; '.join(failed)})" if failed else ""
    return InstallError(
        f"{exc}; {changes}, but binfmt_misc is not as it was before: "
        f"{'; '.join(differences)}{undo}",
        restored=False,
        differences=tuple(differences),
    )


def _interpreter_of(state: State, name: str) -> str:
    entry = state.get(name)
    return entry.interpreter if entry is not None else ""


def _left_by_this_run(before: State, now: State, writes: Sequence[_Write], done: int) -> set[str]:
    """The entries that are as this run's writes left them (the failed one may have happened).

    Only those are brought back: an entry another writer changed since (a
    ``systemd-binfmt`` restart removing everything, say) is left as it is now.
    """
    results = [_simulate(before.entries, writes[:k]) for k in {done, min(done + 1, len(writes))}]
    ours = set()
    for name in {w.name for w in writes[: done + 1]}:
        current = now.get(name)
        for result in results:
            expected = next((e for e in result if e.name == name), None)
            if current == expected:  # both absent, or equal in every field and enabled
                ours.add(name)
    return ours


def _rollback_target(before: State, now: State, ours: Collection[str]) -> list[Entry]:
    """What to restore: the entries this run changed as they were; others as they are now."""
    was = set(before.names)
    target = [e for e in now.entries if e.name not in ours and e.name not in was]
    for e in before.entries:
        if e.name in ours:
            target.append(e)
        else:
            current = now.get(e.name)
            if current is not None:
                target.append(current)
    return target


# -- changing commands -------------------------------------------------------------------


@attrs.frozen
class Outcome:
    """What a changing command did: the plan, whether it was applied, and the state it left."""

    plan: Plan
    dry_run: bool
    applied: bool = False
    #: Why applying failed, and how the rollback went, if it did.
    failure: Optional[str] = None
    #: After a failed write: whether binfmt_misc is as it was before (read again and compared).
    restored: Optional[bool] = None
    #: What differs from the state before (after a failure) or from the plan's (after success).
    differences: tuple[str, ...] = ()
    #: The state read at the end, when something was written.
    left: Optional[State] = None

    def error(self, names: Optional[Mapping[str, str]] = None) -> Optional[str]:
        """The one-line error: the apply's failure, or the plan's first error and its fix.

        ``names`` spells the options a fix names (:meth:`Finding.fix_text
        <binfmt.findings.Finding.fix_text>`).
        """
        if self.failure is not None:
            return self.failure
        errors = [f for f in self.plan.findings if f.severity == "error"]
        if not errors:
            return None
        fix = errors[0].fix_text(names)
        more = len(errors) - 1
        return (
            errors[0].message
            + (f"; {fix}" if fix else "")
            + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")
        )

    def to_dict(self, names: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
        """The plan's document, with ``dry_run``, ``applied``, ``error`` and what was left."""
        doc = self.plan.to_dict(names)
        doc.update(
            dry_run=self.dry_run,
            applied=self.applied,
            error=self.error(names),
            restored=self.restored,
            differences=list(self.differences),
            left=None
            if self.left is None
            else [{"name": e.name, "enabled": e.enabled} for e in self.left.entries],
        )
        return doc


def carry_out(
    misc: BinfmtMisc, make_plan: Callable[[State], Plan], *, dry_run: bool = False
) -> Outcome:
    """Plan against the current state and apply, under the writer lock; never raises for the plan.

    Planning inside the lock means two runs at once cannot interleave: the
    second plans against what the first registered. ``dry_run`` plans only
    (without the lock, which only writers may take). Raises
    :class:`~binfmt.errors.LockTimeout` when another writer holds the lock
    too long.
    """
    if dry_run:
        return Outcome(make_plan(misc.state()), True)
    with lock(misc.path):
        the_plan = make_plan(misc.state())
        if not (the_plan.ok and the_plan.changes):
            return Outcome(the_plan, False)
        try:
            apply(the_plan, misc, locked=True)
        except InstallError as exc:
            return Outcome(
                the_plan,
                False,
                exc.applied,
                str(exc),
                exc.restored,
                exc.differences,
                _read_or_none(misc),
            )
        return Outcome(the_plan, False, True, left=_read_or_none(misc))


def _read_or_none(misc: BinfmtMisc) -> Optional[State]:
    try:
        return misc.state()
    except BinfmtError:
        return None
