"""Predict what ``execve`` does with a file: which handler, through what, and whether it works.

:func:`predict` follows the kernel's exec path step by step (spec §4):

1. the file must be a regular file with an exec bit, on a mount without
   ``noexec`` (else ``EACCES``);
2. binfmt_misc is asked first: if it is on, the newest enabled entry that
   matches the first bytes (or the extension of the path as given) wins,
   with no fallback to older entries;
3. then ``#!`` scripts, whose interpreter is exec'd in turn;
4. then ELF, which the kernel runs itself only for the architectures the host
   runs natively;
5. otherwise ``ENOEXEC``, "exec format error".

Every interpreter, script interpreter and dynamic loader is looked up inside
``rootfs`` (the container's root) as the kernel would, except an ``F``
entry's interpreter, which the kernel opened at registration. Each rewrite
counts toward the kernel's limit of 5; the 6th gives ``ELOOP``.

The :class:`Verdict` names the handler, the entry, the interpreter, the argv
it receives and the errno of a failing ``execve``, plus :class:`Finding` s
that explain problems (a missing interpreter inside the container, a
dynamically linked QEMU, a missing loader, shadowed entries, an entry that
hijacks native binaries …). A verdict can also fail *after* a successful
``execve``: an emulated dynamic binary whose loader is missing from the root
starts QEMU, which then exits; :attr:`Verdict.runs` covers both.
"""

from __future__ import annotations

import errno as errnos
import os
import stat
from collections.abc import Sequence
from typing import Any, Optional

import attrs

from . import qemu
from .elf import ElfDetails, ElfError, ElfHeader, NotElf, details, read_head
from .entry import Entry, Flags
from .host import Host
from .kernel import KernelRules
from .procfs import BinfmtMisc, State
from .rootfs import resolve

__all__ = ["HANDLERS", "Finding", "Verdict", "predict"]

#: The handlers a verdict can name.
HANDLERS = ("binfmt_misc", "script", "native", "none")
SEVERITIES = ("info", "warning", "error")


@attrs.frozen
class Finding:
    """One observation about an exec: a stable ``code``, a severity and a one-line message."""

    code: str
    severity: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity, "message": self.message}


@attrs.frozen
class Verdict:
    """What the kernel does with one exec, and what follows from it."""

    #: The file examined, as a path on this machine.
    path: str
    #: The path string passed to ``execve`` (what extension entries and argv see).
    exec_path: str
    #: ``"binfmt_misc"``, ``"script"``, ``"native"`` or ``"none"``.
    handler: str
    #: The binfmt_misc entry that matched, if any.
    entry: Optional[str] = None
    #: The program the kernel starts instead: the entry's or the script's
    #: interpreter, or a native binary's dynamic loader.
    interpreter: Optional[str] = None
    #: The argv the interpreter (or the program) receives.
    argv: Optional[tuple[str, ...]] = None
    #: The errno name ``execve`` fails with, or ``None`` if it succeeds.
    errno: Optional[str] = None
    #: The file's ELF header, if it is an ELF file.
    elf: Optional[ElfHeader] = None
    #: The QEMU target and OCI platform of that ELF header, if known.
    target: Optional[str] = None
    platform: Optional[str] = None
    findings: tuple[Finding, ...] = ()
    #: The verdict for exec'ing the interpreter, one level down.
    next: Optional[Verdict] = None

    @property
    def runs(self) -> bool:
        """The exec succeeds and nothing found stops the program from starting."""
        return self.errno is None and not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form documented for ``binfmt check --json``."""
        elf = None
        if self.elf is not None:
            h = self.elf
            elf = {
                "class": h.elf_class,
                "byte_order": h.byte_order,
                "machine": h.machine,
                "machine_name": h.machine_name,
                "type": h.type,
                "osabi": h.osabi,
                "flags": h.flags,
                "target": self.target,
                "platform": self.platform,
            }
        return {
            "path": self.path,
            "elf": elf,
            "handler": self.handler,
            "entry": self.entry,
            "interpreter": self.interpreter,
            "argv": list(self.argv) if self.argv is not None else None,
            "errno": self.errno,
            "runs": self.runs,
            "findings": [f.to_dict() for f in self.findings],
        }


def predict(
    path: str,
    *,
    state: Optional[State] = None,
    host: Optional[Host] = None,
    rootfs: str = "/",
    exec_path: Optional[str] = None,
    argv: Optional[Sequence[str]] = None,
    cwd: Optional[str] = None,
    kernel: Optional[KernelRules] = None,
) -> Verdict:
    """Predict ``execve(exec_path, argv)`` of the file at ``path``.

    ``state`` is the binfmt_misc state (default: read
    ``/proc/sys/fs/binfmt_misc``), ``host`` the machine (default: this one),
    ``rootfs`` the root the exec happens in. ``exec_path`` is the path string
    the program is started by (default: ``path`` relative to ``rootfs``, with
    a leading ``/``, or ``path`` itself when ``rootfs`` is ``/``); ``cwd`` the
    working directory inside ``rootfs`` for relative interpreter paths.
    """
    if state is None:
        state = BinfmtMisc().state()
    if host is None:
        host = Host.detect()
    rules = kernel or host.kernel
    root = os.path.abspath(rootfs)
    if exec_path is None:
        exec_path = _path_inside(root, path)
    if cwd is None:
        cwd = os.getcwd() if root == "/" else "/"
    predictor = _Predictor(state, host, root, cwd, rules)
    args = tuple(argv) if argv is not None else (exec_path,)
    return predictor.exec(path, exec_path, args, _Loop())


def _path_inside(root: str, path: str) -> str:
    if root == "/":
        return path
    absolute = os.path.abspath(path)
    rel = os.path.relpath(absolute, root)
    if rel == os.curdir:
        return "/"
    if rel.startswith(os.pardir):
        return path
    return "/" + rel


def _errno(exc: OSError) -> str:
    return errnos.errorcode.get(exc.errno or errnos.EIO, "EIO")


@attrs.frozen
class _Loop:
    """exec_binprm()'s bookkeeping across interpreter rewrites (fs/exec.c, 5.8+)."""

    #: Rewrites done so far.
    depth: int = 0
    #: An O (or C) entry was used: the kernel keeps the original file for AT_EXECFD.
    have_execfd: bool = False
    #: That original file has been set aside; a further rewrite is ENOEXEC.
    executable_set: bool = False


class _Predictor:
    """One prediction: the state it reads and the limits it applies."""

    def __init__(self, state: State, host: Host, root: str, cwd: str, rules: KernelRules) -> None:
        self.state = state
        self.host = host
        self.root = root
        self.cwd = cwd
        self.rules = rules

    # -- the exec path ----------------------------------------------------------

    def exec(self, path: str, exec_path: str, argv: tuple[str, ...], loop: _Loop) -> Verdict:
        base = Verdict(path=path, exec_path=exec_path, handler="none", argv=argv)
        problem = self.check_file(path)
        if problem is not None:
            err, finding = problem
            return attrs.evolve(base, errno=err, findings=(finding,))
        try:
            head = read_head(path, self.rules.buffer_size)
        except OSError as exc:
            return attrs.evolve(
                base,
                errno=_errno(exc),
                findings=(Finding("unreadable", "error", f"cannot read {path}: {exc.strerror}"),),
            )
        elf, target, platform = _identify(head)
        base = attrs.evolve(base, elf=elf, target=target, platform=platform)

        # 1. binfmt_misc, consulted before any other format.
        candidates = self.state.candidates(head, exec_path)
        if candidates:
            return self.via_binfmt_misc(base, head, candidates, loop)
        # 2. scripts.
        if head.startswith(b"#!"):
            return self.via_script(base, head, loop)
        # 3. ELF the kernel runs itself.
        if elf is not None:
            return self.via_elf(base, elf, target)
        return attrs.evolve(
            base,
            errno="ENOEXEC",
            findings=(
                Finding(
                    "unknown-format",
                    "error",
                    "not ELF, not a script, and no binfmt_misc entry matches: exec format error",
                ),
            ),
        )

    def check_file(self, path: str) -> Optional[tuple[str, Finding]]:
        """The kernel's checks before any handler: a regular, executable file."""
        try:
            st = os.stat(path)
        except OSError as exc:
            return _errno(exc), Finding("not-found", "error", f"{path}: {exc.strerror}")
        if not stat.S_ISREG(st.st_mode):
            kind = "directory" if stat.S_ISDIR(st.st_mode) else "special file"
            return "EACCES", Finding("not-regular", "error", f"{path} is a {kind}, not a file")
        if not st.st_mode & 0o111 or (os.geteuid() != 0 and not os.access(path, os.X_OK)):
            return "EACCES", Finding("not-executable", "error", f"{path} has no exec permission")
        try:
            if os.statvfs(path).f_flag & os.ST_NOEXEC:
                return "EACCES", Finding(
                    "noexec-mount", "error", f"{path} is on a filesystem mounted noexec"
                )
        except OSError:
            pass
        return None

    def via_binfmt_misc(
        self, base: Verdict, head: bytes, candidates: list[Entry], loop: _Loop
    ) -> Verdict:
        entry = candidates[0]
        findings = [
            Finding(
                "shadowed-entry",
                "info",
                f"entry {other.name!r} also matches but is never used: {entry.name!r} is newer",
            )
            for other in candidates[1:]
        ]
        hijacked = self.host.captured_by(entry)
        if hijacked:
            findings.append(
                Finding(
                    "hijacks-native",
                    "error",
                    f"entry {entry.name!r} also matches this host's native "
                    f"{', '.join(hijacked)} binaries: every such exec goes to "
                    f"{entry.interpreter!r}, and loops (ELOOP) if that is one of them",
                )
            )
        caller = base.argv or ()
        keep = caller[:1] if Flags.PRESERVE_ARGV0 in entry.flags else ()
        argv = (entry.interpreter, base.exec_path, *keep, *caller[1:])
        verdict = attrs.evolve(
            base, handler="binfmt_misc", entry=entry.name, interpreter=entry.interpreter, argv=argv
        )
        interp_path, problem = self.locate_interpreter(entry)
        if problem is not None:
            err, finding = problem
            return attrs.evolve(verdict, errno=err, findings=(*findings, finding))
        assert interp_path is not None
        if Flags.FIX_BINARY in entry.flags and not os.path.exists(interp_path):
            # The kernel still holds the file it opened at registration: the exec
            # works, but what runs can no longer be looked at.
            findings.append(
                Finding(
                    "interpreter-gone",
                    "warning",
                    f"F entry {entry.name!r}: {entry.interpreter!r} no longer exists; the kernel "
                    "still runs the file it opened at registration (an old version after an "
                    "upgrade?), and registering the entry again would fail",
                )
            )
            return attrs.evolve(verdict, findings=tuple(findings))
        # The kernel opens the interpreter before it looks at its contents.
        problem = self.check_file(interp_path)
        if problem is not None:
            err, finding = problem
            return attrs.evolve(verdict, errno=err, findings=(*findings, finding))
        next_loop, stop = self.rewrite(loop, Flags.OPEN_BINARY in entry.flags)
        if stop is not None:
            err, finding = stop
            return attrs.evolve(verdict, errno=err, findings=(*findings, finding))
        child = self.exec(interp_path, entry.interpreter, argv, next_loop)
        findings.extend(self.interpreter_findings(entry, child))
        findings.extend(_nested_problems(child))
        verdict = attrs.evolve(verdict, errno=child.errno, findings=tuple(findings), next=child)
        if child.errno is None and base.target is not None:
            # An emulator resolves the guest binary's own loader in the same root.
            verdict = self.check_loader(verdict, emulated=True)
        return verdict

    def locate_interpreter(
        self, entry: Entry
    ) -> tuple[Optional[str], Optional[tuple[str, Finding]]]:
        """Where the kernel finds an entry's interpreter, or why it does not."""
        if Flags.FIX_BINARY in entry.flags:
            # Opened at registration from the registering process's root;
            # the kernel keeps using that file whatever the exec'ing root has.
            return entry.interpreter, None
        try:
            return resolve(self.root, entry.interpreter, cwd=self.cwd), None
        except OSError as exc:
            where = "" if self.root == "/" else f" inside {self.root}"
            return None, (
                _errno(exc),
                Finding(
                    "interpreter-missing",
                    "error",
                    f"interpreter {entry.interpreter!r} of entry {entry.name!r} is not "
                    f"found{where} ({exc.strerror}) and the entry lacks F: register it with F "
                    "(--persistent) so the kernel opens it once, at registration",
                ),
            )

    def rewrite(
        self, loop: _Loop, sets_execfd: bool
    ) -> tuple[_Loop, Optional[tuple[str, Finding]]]:
        """One more interpreter rewrite, after its interpreter opened: ENOEXEC, ELOOP or on."""
        have = loop.have_execfd or (sets_execfd and self.rules.open_binary_no_rewrite)
        if have and loop.executable_set:
            return loop, (
                "ENOEXEC",
                Finding(
                    "open-binary-rewrite",
                    "error",
                    "an O/C entry's interpreter is itself rewritten (a script or another "
                    "binfmt_misc match): since Linux 5.8 the kernel refuses with ENOEXEC",
                ),
            )
        depth = loop.depth + 1
        if depth > self.rules.max_rewrites:
            return loop, (
                "ELOOP",
                Finding(
                    "too-deep",
                    "error",
                    f"more than {self.rules.max_rewrites} interpreter rewrites "
                    "(an entry that matches its own interpreter?): the kernel gives ELOOP",
                ),
            )
        return _Loop(depth, have, loop.executable_set or have), None

    def interpreter_findings(self, entry: Entry, child: Verdict) -> list[Finding]:
        if child.handler != "native" or child.interpreter is None:
            return []
        return [
            Finding(
                "interpreter-dynamic",
                "warning",
                f"interpreter {entry.interpreter!r} is dynamically linked (loader "
                f"{child.interpreter}): inside a container whose root lacks its loader and "
                "libraries it fails even with F; use a static build (qemu-user-static)",
            )
        ]

    def via_script(self, base: Verdict, head: bytes, loop: _Loop) -> Verdict:
        parsed = _parse_shebang(head, self.rules.buffer_size)
        if parsed is None:
            return _fail(
                attrs.evolve(base, handler="script"),
                [],
                "ENOEXEC",
                "bad-shebang",
                "the #! line names no interpreter (or it does not fit the kernel's buffer)",
            )
        interp, arg = parsed
        optional = (arg,) if arg is not None else ()
        argv = (interp, *optional, base.exec_path, *(base.argv or ())[1:])
        verdict = attrs.evolve(base, handler="script", interpreter=interp, argv=argv)
        try:
            host_path = resolve(self.root, interp, cwd=self.cwd)
        except OSError as exc:
            where = "" if self.root == "/" else f" inside {self.root}"
            return _fail(
                verdict,
                [],
                _errno(exc),
                "script-interpreter-missing",
                f"script interpreter {interp!r} is not found{where} ({exc.strerror})",
            )
        problem = self.check_file(host_path)
        if problem is not None:
            err, finding = problem
            return attrs.evolve(verdict, errno=err, findings=(finding,))
        next_loop, stop = self.rewrite(loop, sets_execfd=False)
        if stop is not None:
            err, finding = stop
            return attrs.evolve(verdict, errno=err, findings=(finding,))
        child = self.exec(host_path, interp, argv, next_loop)
        return attrs.evolve(
            verdict, errno=child.errno, findings=_nested_problems(child), next=child
        )

    def via_elf(self, base: Verdict, elf: ElfHeader, target: Optional[str]) -> Verdict:
        if target is None or not self.host.runs_natively(target):
            what = f"{target} " if target else f"{elf.machine_name} "
            how = f" (register one: binfmt install {target})" if target else ""
            return _fail(
                base,
                [],
                "ENOEXEC",
                "no-handler",
                f"{what}binary, which this host does not run natively, and no binfmt_misc "
                f"entry matches: exec format error{how}",
            )
        if not elf.is_executable_type:
            return _fail(
                base,
                [],
                "ENOEXEC",
                "not-executable-elf",
                f"ELF type {elf.type} is not an executable or shared object",
            )
        verdict = attrs.evolve(base, handler="native")
        return self.check_loader(verdict, emulated=False)

    def check_loader(self, verdict: Verdict, *, emulated: bool) -> Verdict:
        """A dynamic binary's PT_INTERP must exist inside the root."""
        try:
            info: ElfDetails = details(verdict.path)
        except (ElfError, OSError) as exc:
            severity = "warning" if emulated else "error"
            finding = Finding("invalid-elf", severity, f"cannot read the program headers: {exc}")
            if emulated:
                return attrs.evolve(verdict, findings=(*verdict.findings, finding))
            return attrs.evolve(verdict, errno="ENOEXEC", findings=(*verdict.findings, finding))
        loader = info.interpreter
        if loader is None:
            return verdict
        if not emulated:
            verdict = attrs.evolve(verdict, interpreter=loader)
        try:
            resolve(self.root, loader)
        except OSError as exc:
            where = "" if self.root == "/" else f" inside {self.root}"
            finding = Finding(
                "loader-missing",
                "error",
                f"the binary's dynamic loader {loader} is not found{where} ({exc.strerror})",
            )
            errno_name = None if emulated else _errno(exc)
            return attrs.evolve(verdict, errno=errno_name, findings=(*verdict.findings, finding))
        return verdict


def _nested_problems(child: Verdict) -> tuple[Finding, ...]:
    """The interpreter's own errors and warnings, so the top verdict explains itself."""
    return tuple(f for f in child.findings if f.severity != "info")


def _fail(verdict: Verdict, findings: list[Finding], err: str, code: str, message: str) -> Verdict:
    return attrs.evolve(verdict, errno=err, findings=(*findings, Finding(code, "error", message)))


def _identify(head: bytes) -> tuple[Optional[ElfHeader], Optional[str], Optional[str]]:
    try:
        elf = ElfHeader.decode(head)
    except NotElf:
        return None, None, None
    sig = qemu.match_header(head)
    if sig is None:
        return elf, None, None
    return elf, sig.name, sig.platforms[0] if sig.platforms else None


def _parse_shebang(head: bytes, buffer_size: int) -> Optional[tuple[str, Optional[str]]]:
    """binfmt_script's reading of ``#!interpreter [one argument]``."""
    body = head[2:buffer_size]
    newline = body.find(b"\n")
    line = (body[:newline] if newline >= 0 else body).strip(b" \t")
    if not line:
        return None
    split = [i for i, c in enumerate(line) if c in b" \t"]
    if split:
        interp, arg = line[: split[0]], line[split[0] :].strip(b" \t")
    else:
        interp, arg = line, b""
    if newline < 0 and len(head) >= buffer_size and not split:
        # The interpreter name may be cut by the buffer: the kernel refuses.
        return None
    return _text(interp), (_text(arg) if arg else None)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
