"""Plan and apply QEMU registrations (and their removal), all or nothing.

:func:`plan` decides, for each requested target, what to do and why —
register, replace, enable, leave unchanged or skip — and collects findings:
errors that stop the plan (a missing interpreter, a name conflict without
``replace``, an entry that would capture the host's own binaries) and
warnings that do not (a dynamically linked QEMU with ``F``, the ``C`` flag's
security cost, a newer entry shadowing another registrant). Nothing is
written while planning.

:func:`apply` carries a plan out under a lock, after checking that the
state is still the one planned against. When a registration fails, every
change this run made is undone (entries it added are removed, entries it
replaced are registered again) and the error names the failing entry and the
kernel's errno.

Hosts are judged by what they really run (:class:`~binfmt.host.Host`), not
by QEMU's "family" table: an x86_64 kernel without IA32 emulation gets
``qemu-i386``; an arm64 CPU without AArch32 gets ``qemu-arm``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable, Literal, Optional

import attrs

from . import qemu
from .entry import Entry, Flags
from .errors import BinfmtError, InstallError
from .findings import Finding
from .health import inspect_interpreter, interpreter_findings
from .host import Host
from .kernel import KernelRules
from .procfs import BinfmtMisc, State
from .qemu import is_qemu_entry

__all__ = [
    "ACTIONS",
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

Action = Literal["register", "replace", "enable", "remove", "unchanged", "skip", "conflict"]
#: Every action a step can have; the first four change the kernel's state.
ACTIONS: tuple[Action, ...] = (
    "register",
    "replace",
    "enable",
    "remove",
    "unchanged",
    "skip",
    "conflict",
)
_CHANGES = ACTIONS[:4]

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

    #: ``register``, ``replace``, ``enable``, ``remove`` (the changes), or
    #: ``unchanged``, ``skip``, ``conflict`` (a name taken by a different entry).
    action: Action = attrs.field(validator=attrs.validators.in_(ACTIONS))
    entry: Entry
    #: The QEMU target, when the step is about one.
    target: Optional[str] = None
    #: Why (for ``skip``/``unchanged``), or what (for the others).
    reason: str = ""
    #: The entry that ``replace``/``remove`` takes away.
    old: Optional[Entry] = None

    @property
    def changes(self) -> bool:
        return self.action in _CHANGES

    def to_dict(self, kernel: KernelRules) -> dict[str, Any]:
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
            "reason": self.reason,
        }


@attrs.frozen
class Plan:
    """What :func:`apply` will do, and what was found while deciding."""

    procfs: str
    steps: tuple[Step, ...]
    findings: tuple[Finding, ...] = ()
    kernel: KernelRules = attrs.field(factory=KernelRules)

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
            "steps": [s.to_dict(self.kernel) for s in self.steps],
            "findings": [f.to_dict(names) for f in self.findings],
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
    return Plan(state.path, tuple(steps), tuple(findings), rules)


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
        if explicit:
            why += " (forcing registers it anyway)"
        return Step("skip", entry, sig.name, why)
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
        return Step("register", entry, sig.name, f"register {sig.name}")
    if existing.same_registration(entry):
        if options.refresh:
            return Step("replace", entry, sig.name, "re-register (--refresh)", existing)
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
            "conflict", entry, sig.name, "differs; not replaced without --replace", existing
        )
    return Step("replace", entry, sig.name, f"replace the different {entry.name!r}", existing)


def _capture_findings(entry: Entry, host: Host, force: bool) -> list[Finding]:
    captured = host.captured_by(entry)
    if not captured:
        return []
    return [
        Finding(
            "hijacks-native",
            message=f"{entry.name} would also match this host's own "
            f"{', '.join(captured)} binaries: every such exec would go to its interpreter "
            "(or loop with ELOOP)",
            severity="warning" if force else "error",
            fix="" if force else "{force} registers it anyway",
            entry=entry.name,
            options=() if force else ("force",),
        )
    ]


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
    differs is replaced (the file names it: that is asking by name). Entries
    of other names are never touched. With ``host``, an entry that would
    capture the host's own binaries is an error unless ``force``.
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
            action: Action = "unchanged" if existing.enabled else "enable"
            steps.append(Step(action, entry, None, "already registered, identical", existing))
        else:
            steps.append(Step("replace", entry, None, "replace the different entry", existing))
    return Plan(state.path, tuple(steps), tuple(findings))


def plan_uninstall(names: Iterable[str], *, all_qemu: bool = False, state: State) -> Plan:
    """Decide which entries to remove: named ones, or recognisably QEMU's for a target.

    A name that is an entry is removed whoever made it (it was asked for by
    name). A target (``arm64``, ``linux/arm/v7``) removes only entries that
    are QEMU's (:func:`is_qemu_entry`) for that target. ``all_qemu`` removes
    every QEMU entry. The global ``status`` is never written.
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
    return Plan(state.path, tuple(steps), tuple(findings))


# -- applying ---------------------------------------------------------------------


@contextlib.contextmanager
def lock(procfs: str) -> Iterator[None]:
    """Hold the writer lock of one binfmt_misc directory (``flock`` on a lock file).

    Commands plan *and* apply under it, so two runs at once cannot interleave:
    the second sees what the first registered. Not reentrant: pass
    ``locked=True`` to :func:`apply` while holding it.
    """
    key = hashlib.sha256(os.path.realpath(procfs).encode()).hexdigest()[:16]
    base = "/run/lock" if os.access("/run/lock", os.W_OK) else tempfile.gettempdir()
    path = os.path.join(base, f"binfmt-{key}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def apply(plan: Plan, misc: BinfmtMisc, *, locked: bool = False) -> list[Step]:
    """Carry out ``plan``'s changes on ``misc``; all or nothing. Returns the steps done.

    Raises :class:`InstallError` without writing if the plan has errors or the
    state changed since it was made, and after rolling back if a write fails.
    ``locked`` says the caller already holds :func:`lock`.
    """
    if not plan.ok:
        errors = "; ".join(f.message for f in plan.findings if f.severity == "error")
        raise InstallError(f"the plan has errors, nothing was written: {errors}")
    with contextlib.nullcontext() if locked else lock(misc.path):
        _check_unchanged(plan, misc.state())
        done: list[tuple[str, Entry]] = []
        try:
            for step in plan.changes:
                _apply_step(step, misc, done)
        except BinfmtError as exc:
            undone = _roll_back(done, misc)
            raise InstallError(
                f"{exc}; rolled back {undone} change{'s' if undone != 1 else ''}: "
                "binfmt_misc is as it was before"
            ) from exc
    return list(plan.changes)


def _check_unchanged(plan: Plan, now: State) -> None:
    for step in plan.changes:
        if now.get(step.entry.name) != step.old:
            raise InstallError(
                f"entry {step.entry.name!r} changed since the plan was made: run again"
            )


def _apply_step(step: Step, misc: BinfmtMisc, done: list[tuple[str, Entry]]) -> None:
    if step.action == "enable":
        misc.enable(step.entry.name)
        done.append(("enabled", step.entry))
    elif step.action == "remove":
        assert step.old is not None
        misc.remove(step.old.name)
        done.append(("removed", step.old))
    else:
        if step.action == "replace":
            assert step.old is not None
            misc.remove(step.old.name)
            done.append(("removed", step.old))
        misc.register(step.entry)
        done.append(("added", step.entry))


def _roll_back(done: list[tuple[str, Entry]], misc: BinfmtMisc) -> int:
    for what, entry in reversed(done):
        with contextlib.suppress(BinfmtError):
            if what == "added":
                misc.remove(entry.name)
            elif what == "enabled":
                misc.disable(entry.name)
            else:  # removed: put it back as it was
                misc.register(entry)
                if not entry.enabled:
                    misc.disable(entry.name)
    return len(done)


@attrs.frozen
class Outcome:
    """What a changing command did: the plan, whether it was applied, and why not."""

    plan: Plan
    dry_run: bool
    applied: bool = False
    #: Why applying failed (everything was rolled back), if it did.
    failure: Optional[str] = None

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
        """The plan's document, with ``dry_run``, ``applied`` and ``error``."""
        doc = self.plan.to_dict(names)
        doc.update(dry_run=self.dry_run, applied=self.applied, error=self.error(names))
        return doc


def carry_out(
    misc: BinfmtMisc, make_plan: Callable[[State], Plan], *, dry_run: bool = False
) -> Outcome:
    """Plan against the current state and apply, under the writer lock; never raises for the plan.

    Planning inside the lock means two runs at once cannot interleave: the
    second plans against what the first registered. ``dry_run`` plans only.
    """
    applied = False
    failure: Optional[str] = None
    with lock(misc.path):
        the_plan = make_plan(misc.state())
        if not dry_run and the_plan.ok and the_plan.changes:
            try:
                apply(the_plan, misc, locked=True)
                applied = True
            except InstallError as exc:
                failure = str(exc)
    return Outcome(the_plan, dry_run, applied, failure)
