"""Prove that emulation works by running a tiny program per target, not by reading entries.

An entry in binfmt_misc says nothing about whether its interpreter exists,
is static, is the right QEMU, or can be found inside a container. Buildkit's
``archutil`` (behind tonistiigi/binfmt's ``supported`` list) therefore
*executes* a small "exit" program per architecture, chrooted into a
directory that holds nothing else, so that only ``F`` entries (whose
interpreter the kernel opened at registration) can pass. :func:`verify` does
the same with the pure-Python probes of :mod:`binfmt.probes`: for each
target it writes the probe into a temporary directory (inside ``rootfs``
when one is given, chrooting there to run it), executes it, removes it, and
classifies what happened. :func:`~binfmt.prediction.predict` is run on the same
file, so each result names the entry and interpreter involved and carries
the findings that explain a failure ("entry qemu-arm lacks F and
/usr/bin/qemu-arm-static is missing inside the root").

Statuses (:data:`STATUSES`), one per target:

``works``
    the probe exited with :data:`~binfmt.probes.PROBE_STATUS` through a
    binfmt_misc entry;
``native``
    it exited with that status and no entry was involved: the kernel runs
    this target itself;
``entry-missing``
    ``execve`` gave ``ENOEXEC`` and no enabled entry matches the probe;
``disabled``
    ``ENOEXEC`` because binfmt_misc is switched off globally, although an
    enabled entry matches (with no matching entry it is ``entry-missing``);
``interpreter-missing``
    ``execve`` gave ``ENOENT``: the entry's interpreter (or its loader) is not
    found, typically a non-``F`` entry inside a container root;
``exec-failed``
    ``execve`` failed with another errno (``errno`` names it), or with
    ``ENOEXEC`` raised by the entry's interpreter;
``wrong-status``
    the program ran but exited with another status, was killed by a signal
    (``returncode`` is then minus the signal number, as in :mod:`subprocess`)
    or did not exit in time (``returncode`` ``None``);
``no-probe``
    there is no probe program for the target, so nothing was run.

The JSON document (:meth:`VerifyReport.to_dict`) extends tonistiigi/binfmt's
status (``supported`` and ``emulators`` mean what they mean there)::

    {"supported": [platform],        # OCI platforms of works/native targets, each once
     "emulators": [name],            # every individually enabled entry, sorted by name
     "ok": bool,                     # every requested target works or is native
     "enabled": bool|null,           # binfmt_misc's global switch (null: not mounted)
     "rootfs": str|null,             # the root the probes ran in (null: this machine's)
     "platforms": {platform: {"target": str, "status": str}},
     "targets": [{"target": str, "platforms": [platform], "status": str,
                  "entry": str|null, "interpreter": str|null, "errno": str|null,
                  "returncode": int|null, "detail": str,
                  "findings": [{"code": str, "severity": str, "message": str}]}]}

``platforms`` is keyed by OCI platform only; targets that have none (``i486``,
``alpha`` …) appear in ``targets`` alone. ``entry`` and ``interpreter`` are
what :func:`~binfmt.prediction.predict` says handles the probe (for
``disabled``, the entry that would).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Union, get_args

import attrs

from . import qemu
from .errors import InvalidValue, PermissionDenied, UnknownTarget, errno_name
from .findings import Finding
from .host import Host
from .prediction import Verdict, predict
from .probes import PROBE_STATUS, PROBE_TARGETS, probe, write_probe
from .procfs import State

if TYPE_CHECKING:
    from .sandbox import Sandbox

__all__ = [
    "DEFAULT_TIMEOUT",
    "STATUSES",
    "RunOutcome",
    "Runner",
    "Status",
    "TargetResult",
    "VerifyReport",
    "default_targets",
    "run_local",
    "sandbox_runner",
    "verify",
]

Status = Literal[
    "works",
    "native",
    "entry-missing",
    "disabled",
    "interpreter-missing",
    "exec-failed",
    "wrong-status",
    "no-probe",
]
#: Every status a :class:`TargetResult` can have.
STATUSES: tuple[Status, ...] = get_args(Status)
_OK = ("works", "native")

#: Seconds a probe may take: QEMU starts in milliseconds, so this only catches hangs.
DEFAULT_TIMEOUT = 10.0

# Probe targets QEMU's table no longer has (Debian still ships their QEMU).
_UNSIGNED = tuple(t for t in PROBE_TARGETS if t not in {s.name for s in qemu.SIGNATURES})


@attrs.frozen
class RunOutcome:
    """What executing one probe did; a :data:`Runner` returns it."""

    #: Exit status (negative: killed by that signal), or ``None`` if it never exited.
    returncode: Optional[int]
    #: The errno name when ``execve`` itself failed (``"ENOEXEC"``), else ``None``.
    errno: Optional[str] = None
    stderr: bytes = b""
    #: The program was killed after the timeout.
    timed_out: bool = False


#: Executes ``argv`` (``argv[0]`` is the probe's path) chrooted into ``root``
#: when it is not ``None``, and reports the outcome without raising for a
#: failed ``execve``. The probe must go through the binfmt_misc instance that
#: the ``state`` given to :func:`verify` describes.
Runner = Callable[[Sequence[str], Optional[str]], RunOutcome]


def run_local(
    argv: Sequence[str], root: Optional[str] = None, *, timeout: float = DEFAULT_TIMEOUT
) -> RunOutcome:
    """The default :data:`Runner`: execute here, through this machine's binfmt_misc.

    With ``root`` the child chroots there first, which needs ``CAP_SYS_CHROOT``
    (root); without it, :class:`~binfmt.errors.PermissionDenied` is raised.
    The environment is only ``PATH``, so a ``QEMU_*`` variable of the caller
    cannot change the result.
    """

    def enter() -> None:
        assert root is not None
        os.chroot(root)
        os.chdir("/")

    try:
        done = subprocess.run(
            list(argv),
            executable=argv[0],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env={"PATH": "/usr/bin:/bin"},
            timeout=timeout,
            preexec_fn=enter if root is not None else None,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr if isinstance(exc.stderr, bytes) else b""
        return RunOutcome(None, stderr=stderr, timed_out=True)
    except OSError as exc:
        return RunOutcome(None, errno=errno_name(exc.errno))
    except subprocess.SubprocessError:
        # Only the preexec_fn raises this: chroot was refused.
        assert root is not None
        raise PermissionDenied(root, "chroot into") from None
    return RunOutcome(done.returncode, stderr=done.stderr)


def sandbox_runner(box: Sandbox, *, timeout: float = DEFAULT_TIMEOUT) -> Runner:
    """A :data:`Runner` that executes inside a :class:`~binfmt.sandbox.Sandbox`.

    Pair it with ``state=box.misc.state()``: the probes then go through the
    sandbox's private instance, which is how the tests (and users' own tests)
    verify registrations without touching the host's.
    """

    def run(argv: Sequence[str], root: Optional[str]) -> RunOutcome:
        result = box.run(argv, executable=argv[0], root=root, timeout=timeout)
        if result.timed_out:
            return RunOutcome(None, stderr=result.stderr, timed_out=True)
        return RunOutcome(result.returncode, errno=result.errno, stderr=result.stderr)

    return run


@attrs.frozen
class TargetResult:
    """The verdict on one target: did its probe run, and if not, why."""

    #: QEMU target name (``"aarch64"``).
    target: str
    #: Its OCI platforms (``("linux/arm64",)``); empty for targets without one.
    platforms: tuple[str, ...]
    #: One of :data:`STATUSES`.
    status: Status = attrs.field(validator=attrs.validators.in_(STATUSES))
    #: The binfmt_misc entry that handles (or, for ``disabled``, would handle) the probe.
    entry: Optional[str] = None
    #: That entry's interpreter.
    interpreter: Optional[str] = None
    #: The errno name of a failed ``execve``.
    errno: Optional[str] = None
    #: The probe's exit status (negative: killed by a signal), if it exited.
    returncode: Optional[int] = None
    #: One line for people.
    detail: str = ""
    #: :func:`~binfmt.prediction.predict`'s findings on the probe, plus any disagreement
    #: between that prediction and what the kernel did (``unexpected-outcome``).
    findings: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        """The target runs: emulated through an entry, or natively."""
        return self.status in _OK

    def to_dict(self, names: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
        """One item of the report's ``targets`` list."""
        return {
            "target": self.target,
            "platforms": list(self.platforms),
            "status": self.status,
            "entry": self.entry,
            "interpreter": self.interpreter,
            "errno": self.errno,
            "returncode": self.returncode,
            "detail": self.detail,
            "findings": [f.to_dict(names) for f in self.findings],
        }


@attrs.frozen
class VerifyReport:
    """Every target's result, in the order verified, and the names of the enabled entries."""

    results: tuple[TargetResult, ...]
    #: Names of the individually enabled entries, sorted (tonistiigi's ``emulators``).
    emulators: tuple[str, ...] = ()
    #: binfmt_misc's global switch (``None``: not mounted).
    enabled: Optional[bool] = None
    #: The root the probes ran in, or ``None`` for this machine's.
    rootfs: Optional[str] = None

    @property
    def supported(self) -> list[str]:
        """OCI platforms of the targets that work or are native, each once, in order."""
        platforms: list[str] = []
        for result in self.results:
            if result.ok:
                platforms.extend(p for p in result.platforms if p not in platforms)
        return platforms

    @property
    def ok(self) -> bool:
        """Every requested target works or is native."""
        return all(result.ok for result in self.results)

    def get(self, target: str) -> Optional[TargetResult]:
        """The result for the QEMU target called ``target``, or ``None``."""
        for result in self.results:
            if result.target == target:
                return result
        return None

    def to_dict(self, names: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
        """The JSON document described in the module docstring (``names``: see
        :meth:`Finding.fix_text <binfmt.findings.Finding.fix_text>`)."""
        platforms: dict[str, dict[str, str]] = {}
        for result in self.results:
            for platform in result.platforms:
                platforms.setdefault(platform, {"target": result.target, "status": result.status})
        return {
            "supported": self.supported,
            "emulators": list(self.emulators),
            "ok": self.ok,
            "enabled": self.enabled,
            "rootfs": self.rootfs,
            "platforms": platforms,
            "targets": [result.to_dict(names) for result in self.results],
        }


# -- choosing targets -------------------------------------------------------------


def default_targets(state: State, host: Host) -> list[str]:
    """What :func:`verify` checks when not told: native targets, then what entries emulate.

    The host's native targets (and those it may run, :attr:`Host.unknown`: the
    probe settles it), then every target an individually enabled entry
    identifies (:func:`~binfmt.qemu.identify`), in QEMU's table order, then
    probe targets that QEMU's table has dropped but an entry still matches
    (Debian's ``qemu-cris``).
    """
    chosen = list(dict.fromkeys([*host.native, *host.unknown]))
    enabled = [entry for entry in state.entries if entry.enabled]
    found: set[str] = set()
    for entry in enabled:
        found.update(sig.name for sig in qemu.identify(entry))
    chosen += [sig.name for sig in qemu.SIGNATURES if sig.name in found]
    chosen += [t for t in _UNSIGNED if any(e.matches(probe(t), f"probe-{t}") for e in enabled)]
    return list(dict.fromkeys(chosen))


def _requested(targets: Union[str, Iterable[str]]) -> list[str]:
    """QEMU target names for names, aliases and platforms (``"all"``: every probe)."""
    names: list[str] = []
    for text in qemu.split_targets(targets):
        if text == "all":
            names += [sig.name for sig in qemu.SIGNATURES] + list(_UNSIGNED)
        elif text in _UNSIGNED:
            names.append(text)
        else:
            names.append(qemu.lookup(text).name)
    if not names:
        raise InvalidValue("targets", targets, "no target is named")
    return list(dict.fromkeys(names))


def _platforms(target: str) -> tuple[str, ...]:
    try:
        return qemu.get(target).platforms
    except UnknownTarget:
        return ()


# -- verifying --------------------------------------------------------------------


def verify(
    targets: Union[str, Iterable[str], None] = None,
    *,
    state: State,
    host: Host,
    rootfs: Optional[str] = None,
    runner: Optional[Runner] = None,
    workdir: Optional[str] = None,
) -> VerifyReport:
    """Execute each target's probe and report whether, and how, it runs.

    ``targets`` are QEMU target names, aliases or OCI platforms (as
    :func:`~binfmt.qemu.lookup` takes them; a string may list several
    separated by commas, ``"all"`` means every target with a probe); default
    :func:`default_targets`. ``state`` must describe the binfmt_misc instance
    the ``runner`` execs through (default runner :func:`run_local`: this
    machine's), and ``host`` the machine: they explain the outcome, the
    outcome itself is the kernel's.

    The probes are written into a fresh directory under ``workdir`` (default:
    the system's temporary directory; on a ``noexec`` mount every probe fails
    with ``EACCES``, and the findings say so) or, with ``rootfs``, under ``rootfs``
    (or ``workdir``, which must then lie inside it) and executed chrooted
    into ``rootfs``, as a container would. That directory is always removed.
    Raises :class:`~binfmt.errors.UnknownTarget` naming an unknown target, and
    :class:`~binfmt.errors.InvalidValue` for a ``rootfs`` that is not a
    directory or a ``workdir`` outside it.
    """
    names = default_targets(state, host) if targets is None else _requested(targets)
    root = _check_rootfs(rootfs)
    base = _check_workdir(workdir, root)
    run = runner if runner is not None else run_local
    emulators = tuple(sorted(e.name for e in state.entries if e.enabled))
    results: list[TargetResult] = []
    directory = tempfile.mkdtemp(prefix=".binfmt-verify-", dir=base)
    try:
        for name in names:
            results.append(_verify_one(name, directory, root, state, host, run))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return VerifyReport(tuple(results), emulators, state.enabled, root)


def _check_rootfs(rootfs: Optional[str]) -> Optional[str]:
    if rootfs is None:
        return None
    if not os.path.isdir(rootfs):
        raise InvalidValue("rootfs", rootfs, "not a directory")
    root = os.path.abspath(rootfs)
    return None if root == "/" else root


def _check_workdir(workdir: Optional[str], root: Optional[str]) -> Optional[str]:
    if workdir is None:
        return root
    if not os.path.isdir(workdir):
        raise InvalidValue("workdir", workdir, "not a directory")
    if root is not None:
        real, real_root = os.path.realpath(workdir), os.path.realpath(root)
        if os.path.commonpath([real, real_root]) != real_root:
            raise InvalidValue(
                "workdir",
                workdir,
                f"not inside the rootfs {root!r}, where the chrooted probe must find it",
            )
    return workdir


def _verify_one(
    target: str,
    directory: str,
    root: Optional[str],
    state: State,
    host: Host,
    run: Runner,
) -> TargetResult:
    platforms = _platforms(target)
    if target not in PROBE_TARGETS:
        return TargetResult(
            target, platforms, "no-probe", detail=f"there is no probe program for {target}"
        )
    path = write_probe(target, directory)
    try:
        if root is None:
            exec_path = path
        else:
            exec_path = "/" + os.path.relpath(os.path.realpath(path), os.path.realpath(root))
        verdict = predict(path, state=state, host=host, rootfs=root or "/", exec_path=exec_path)
        outcome = run([exec_path], root)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return _classify(target, platforms, outcome, verdict, state, host)


def _classify(
    target: str,
    platforms: tuple[str, ...],
    outcome: RunOutcome,
    verdict: Verdict,
    state: State,
    host: Host,
) -> TargetResult:
    """Turn what the kernel did (``outcome``) and what was predicted into a result."""
    via_entry = verdict.handler == "binfmt_misc"
    findings = _all_findings(verdict)
    result = TargetResult(
        target,
        platforms,
        "exec-failed",
        entry=verdict.entry if via_entry else None,
        interpreter=verdict.interpreter if via_entry else None,
        errno=outcome.errno,
        returncode=outcome.returncode,
        findings=findings,
    )
    if outcome.errno is None and not outcome.timed_out:
        if outcome.returncode == PROBE_STATUS:
            if via_entry:
                detail = f"exited {PROBE_STATUS} through {verdict.interpreter}"
                result = attrs.evolve(result, status="works", detail=detail)
            elif host.runs_natively(target) or target in host.unknown:
                result = attrs.evolve(result, status="native", detail="the kernel runs it itself")
            else:
                # It ran, but not natively: an entry of the kernel's instance that the
                # state read does not show (another --procfs, or an unmounted view).
                detail = (
                    f"exited {PROBE_STATUS} through a binfmt_misc entry not visible at {state.path}"
                )
                result = attrs.evolve(result, status="works", detail=detail)
        else:
            result = attrs.evolve(result, status="wrong-status", detail=_wrong(outcome))
    elif outcome.timed_out:
        result = attrs.evolve(result, status="wrong-status", detail=_wrong(outcome))
    elif outcome.errno == "ENOEXEC" and not (via_entry and verdict.errno == "ENOEXEC"):
        result = _no_handler(result, state, probe(target))
    elif outcome.errno == "ENOENT":
        detail = _first_error(findings) or (
            f"execve gave ENOENT: the interpreter {verdict.interpreter or ''} "
            "or its loader is not found"
        )
        result = attrs.evolve(result, status="interpreter-missing", detail=detail)
    else:
        detail = f"execve failed with {outcome.errno}"
        reason = _first_error(findings)
        result = attrs.evolve(result, detail=detail + (f": {reason}" if reason else ""))
    extra = _disagreement(target, outcome, verdict, host)
    if extra is not None:
        result = attrs.evolve(result, findings=(*result.findings, extra))
    return result


def _no_handler(result: TargetResult, state: State, head: bytes) -> TargetResult:
    """``ENOEXEC`` with no entry involved: switched off globally, or nothing matches."""
    path = f"probe-{result.target}"
    matching = [e for e in state.entries if e.matches(head, path)]
    usable = [e for e in matching if e.enabled]
    if state.mounted and state.enabled is False and usable:
        entry = usable[0]
        return attrs.evolve(
            result,
            status="disabled",
            entry=entry.name,
            interpreter=entry.interpreter,
            detail=f"binfmt_misc is disabled globally; entry {entry.name} would run it "
            f"(write 1 to {os.path.join(state.path, 'status')})",
        )
    detail = "no enabled binfmt_misc entry matches: exec format error"
    if matching:
        detail += f" (entry {matching[0].name} matches but is disabled)"
    if not state.mounted:
        detail += f" (binfmt_misc is not mounted at {state.path})"
    elif state.enabled is False:
        detail += " (and binfmt_misc is disabled globally)"
    return attrs.evolve(result, status="entry-missing", detail=detail)


def _wrong(outcome: RunOutcome) -> str:
    """Why a probe that started did not pass."""
    if outcome.timed_out:
        what = "did not exit in time (killed)"
    elif outcome.returncode is not None and outcome.returncode < 0:
        what = f"killed by {_signal_name(-outcome.returncode)}"
    else:
        what = f"exited {outcome.returncode}, expected {PROBE_STATUS}"
    first = _first_line(outcome.stderr)
    return what + (f": {first}" if first else "")


def _all_findings(verdict: Verdict) -> tuple[Finding, ...]:
    """The findings of the verdict and of each interpreter's verdict below it, once each.

    A failure one level down (a script interpreter's own ``#!`` interpreter
    missing inside the root) is recorded only on that level's verdict.
    """
    found: list[Finding] = []
    level: Optional[Verdict] = verdict
    while level is not None:
        found.extend(f for f in level.findings if f not in found)
        level = level.next
    return tuple(found)


def _first_error(findings: tuple[Finding, ...]) -> Optional[str]:
    for finding in findings:
        if finding.severity == "error":
            return finding.message
    return None


def _disagreement(
    target: str, outcome: RunOutcome, verdict: Verdict, host: Host
) -> Optional[Finding]:
    """A finding when the kernel did not do what :func:`predict` said."""
    if outcome.timed_out or outcome.errno == verdict.errno:
        return None
    if outcome.errno is None and target in host.unknown and verdict.handler == "none":
        return Finding(
            "native-confirmed",
            message=f"the host runs {target} natively (this could not be told from the kernel)",
        )
    said = f"fail with {verdict.errno}" if verdict.errno else "succeed"
    did = f"failed with {outcome.errno}" if outcome.errno else "succeeded"
    return Finding(
        "unexpected-outcome",
        message=f"predicted execve to {said}, but it {did}: the binfmt_misc state read may not be "
        "the one the kernel used",
    )


def _first_line(data: bytes, limit: int = 200) -> str:
    for raw in data.splitlines():
        text = raw.decode("utf-8", "replace").strip()
        if text:
            return text if len(text) <= limit else text[: limit - 1] + "…"
    return ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
