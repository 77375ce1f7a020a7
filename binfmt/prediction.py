"""Predict what ``execve`` does with a file: which handler, through what, and whether it works.

This module holds the library's one model of the kernel's exec decision
(spec §4), :class:`ExecModel`; :func:`predict` asks it about one file, and
:func:`binfmt.scan.scan` about every file of a tree. Step by step:

1. the file must be a regular file with an exec bit, on a mount without
   ``noexec`` (else ``EACCES``);
2. binfmt_misc is asked first: if it is on, the newest enabled entry that
   matches the first bytes (or the extension of the path as given) wins,
   with no fallback to older entries;
3. then ``#!`` scripts (:func:`parse_shebang`), whose interpreter is exec'd in turn;
4. then ELF, which the kernel runs itself only for program types (ET_EXEC,
   ET_DYN) of the architectures the host runs natively;
5. otherwise ``ENOEXEC``, "exec format error".

Every interpreter, script interpreter and dynamic loader is looked up inside
the root of the exec (``rootfs``, a container's root) as the kernel would
(:func:`binfmt.rootfs.resolve`), except an ``F`` entry's interpreter, which
the kernel opened at registration. Each rewrite counts toward the kernel's
limit (:attr:`~binfmt.kernel.KernelRules.max_rewrites`); one more gives ``ELOOP``.

The :class:`Verdict` names the handler, the entry, the interpreter, the argv
it receives and the errno of a failing ``execve``, plus
:class:`~binfmt.findings.Finding` s that explain problems (a missing
interpreter inside the container, a dynamically linked QEMU, a missing
loader, shadowed entries, an entry that captures native binaries …). A
verdict can also fail *after* a successful ``execve``: an emulated dynamic
binary whose loader is missing from the root starts QEMU, which then exits;
:attr:`Verdict.runs` covers both.
"""

from __future__ import annotations

import errno as errnos
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Literal, Optional, Union, get_args

import attrs

from . import qemu
from .elf import ElfHeader, NotElf
from .entry import Entry, Flags
from .errors import BinfmtError, InvalidValue, errno_name
from .findings import Finding, Severity
from .host import Host
from .kernel import KernelRules
from .matcher import Matcher
from .procfs import BinfmtMisc, State
from .rootfs import DirectoryRoot, ExecFile, OpenedFile, Root, open_exec_file
from .text import decode

__all__ = [
    "HANDLERS",
    "ExecFile",
    "ExecModel",
    "Handler",
    "OpenedFile",
    "Shebang",
    "Verdict",
    "open_exec_file",
    "parse_shebang",
    "predict",
]

Handler = Literal["binfmt_misc", "script", "native", "none"]
#: The handlers a verdict can name.
HANDLERS: tuple[Handler, ...] = get_args(Handler)


@attrs.frozen
class Verdict:
    """What the kernel does with one exec, and what follows from it."""

    #: The file examined, as a path on this machine.
    path: str
    #: The path string passed to ``execve`` (what extension entries and argv see).
    exec_path: str
    #: ``"binfmt_misc"``, ``"script"``, ``"native"`` or ``"none"``.
    handler: Handler
    #: The binfmt_misc entry that matched, if any.
    entry: Optional[str] = None
    #: The program the kernel starts instead: the entry's or the script's
    #: interpreter, or a native binary's dynamic loader.
    interpreter: Optional[str] = None
    #: The argv the interpreter (or the program) receives; ``None`` when the
    #: model was asked not to follow argv (a scan of many files).
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

    @property
    def program(self) -> str:
        """What kind of program the file is, for people: its OCI platform (else QEMU target,
        else ELF machine), ``"script"`` for a ``#!`` script, ``"-"`` for anything else."""
        if self.elf is not None:
            return self.platform or self.target or self.elf.machine_name
        return "script" if self.handler == "script" else "-"

    @property
    def problem(self) -> Optional[Finding]:
        """The error that decides a failure: the deepest one, where it happened."""
        errors = [f for f in self.findings if f.severity == "error"]
        return errors[-1] if errors else None

    def to_dict(self, names: Optional[Mapping[str, str]] = None) -> dict[str, object]:
        """The JSON form documented for ``binfmt check --json`` (``names``: see
        :meth:`Finding.fix_text <binfmt.findings.Finding.fix_text>`)."""
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
            "findings": [f.to_dict(names) for f in self.findings],
        }


# -- #! lines -------------------------------------------------------------------------


@attrs.frozen
class Shebang:
    """What ``binfmt_script`` reads from a ``#!`` line."""

    #: The interpreter path, as the kernel opens it (relative paths are relative to the cwd).
    interpreter: str
    #: The one optional argument, passed before the script's path.
    argument: Optional[str] = None


def parse_shebang(head: bytes, buffer_size: int) -> Optional[Shebang]:
    """binfmt_script's reading of ``#!interpreter [one argument]``, or ``None`` (ENOEXEC).

    ``load_script()`` in ``fs/binfmt_script.c`` (5.1+), step by step, over the
    kernel's buffer: ``buffer_size`` bytes (:attr:`~binfmt.kernel.KernelRules.buffer_size`),
    zero past the end of the file. The interpreter may come out empty (``#!``
    and blanks up to the end of the file): the kernel then opens the working
    directory, which fails with EACCES.
    """
    if not head.startswith(b"#!"):
        return None
    buf = head[:buffer_size].ljust(buffer_size, b"\0")
    buf_end = buffer_size - 1
    # i_end = strnchr(buf, size, '\n'): the search stops at the first NUL.
    newline, nul = buf.find(b"\n"), buf.find(b"\0")
    if newline >= 0 and (nul < 0 or newline < nul):
        i_end = newline
    else:
        # No newline: the line fills the buffer. It must hold an interpreter
        # name that ends inside it (a blank or a NUL after it), else ENOEXEC.
        first = _next_non_spacetab(buf, 2, buf_end)
        if first is None or _next_terminator(buf, first, buf_end) is None:
            return None
        i_end = buf_end  # the last byte is overwritten with the NUL below
    while buf[i_end - 1] in _SPACETAB:  # trim trailing blanks
        i_end -= 1
    i_name = _next_non_spacetab(buf, 2, i_end)
    if i_name is None or i_name == i_end:
        return None  # no interpreter name
    i_sep = _next_terminator(buf, i_name, i_end)
    i_arg = None
    if i_sep is not None and buf[i_sep] != 0:
        i_arg = _next_non_spacetab(buf, i_sep, i_end)
    # *i_end = 0, and *i_sep = 0 when there is an argument: each is a C string.
    line = buf[:i_end] + b"\0"
    if i_arg is not None:
        assert i_sep is not None
        line = line[:i_sep] + b"\0" + line[i_sep + 1 :]
    name = line[i_name : line.index(0, i_name)]
    arg = None if i_arg is None else line[i_arg : line.index(0, i_arg)]
    return Shebang(decode(name), None if arg is None else decode(arg))


_SPACETAB = b" \t"


def _next_non_spacetab(buf: bytes, first: int, last: int) -> Optional[int]:
    for i in range(first, last + 1):
        if buf[i] not in _SPACETAB:
            return i
    return None


def _next_terminator(buf: bytes, first: int, last: int) -> Optional[int]:
    for i in range(first, last + 1):
        if buf[i] in _SPACETAB or buf[i] == 0:
            return i
    return None


# -- the model --------------------------------------------------------------------------


@attrs.frozen
class _Loop:
    """exec_binprm()'s bookkeeping across interpreter rewrites (fs/exec.c, 5.8+)."""

    #: Rewrites done so far.
    depth: int = 0
    #: An O (or C) entry was used: the kernel keeps the original file for AT_EXECFD.
    have_execfd: bool = False
    #: That original file has been set aside; a further rewrite is ENOEXEC.
    executable_set: bool = False


#: Why an exec stops: the errno name ``execve`` returns, and the finding that explains it.
_Stop = tuple[str, Finding]


class ExecModel:
    """The kernel's exec decision for one binfmt_misc state, host and root.

    ``rootfs`` is the root the exec happens in (interpreters and loaders are
    looked up there): a directory of this machine, or any
    :class:`~binfmt.rootfs.Root` (an image archive's tree,
    :class:`binfmt.archive.ArchiveRoot`); every file is read through it.
    ``cwd`` is the working directory inside it (for relative interpreter
    paths), ``kernel`` the rules (default: the host's).

    ``this_machine`` says whether ``state`` and ``host`` are this machine's.
    For another node's (a state document, :meth:`State.from_document
    <binfmt.procfs.State.from_document>`, and a host such as
    :meth:`Host.for_platform <binfmt.host.Host.for_platform>`), nothing of
    this machine is consulted: an ``F`` entry's interpreter counts as present
    (the node's kernel opened it at registration) and is not judged further,
    and this machine's mounts (``noexec``) and user (exec permission) play no
    part.

    With ``many_files``, the model is set up for judging a whole tree: each
    interpreter's own verdict and each loader lookup is worked out once and
    reused (the file system is assumed not to change meanwhile), and argv is
    not followed (:attr:`Verdict.argv` is ``None``); every decision is the same.
    """

    def __init__(
        self,
        state: State,
        host: Host,
        *,
        rootfs: Union[str, Root] = "/",
        cwd: str = "/",
        kernel: Optional[KernelRules] = None,
        many_files: bool = False,
        this_machine: bool = True,
    ) -> None:
        self.state = state
        self.host = host
        self.fs: Root = DirectoryRoot(rootfs) if isinstance(rootfs, str) else rootfs
        #: The root as shown in messages.
        self.root = self.fs.label
        self.this_machine = this_machine
        self._host_fs: Optional[Root] = None
        self.cwd = cwd
        self.rules = kernel or host.kernel
        self.matcher = Matcher(state)
        self.many_files = many_files
        self._interpreters: dict[tuple[str, str, _Loop, bool, bool], Verdict] = {}
        self._loaders: dict[str, Optional[OSError]] = {}
        self._targets: dict[bytes, Optional[qemu.Signature]] = {}

    # -- entry points ---------------------------------------------------------------

    def exec(
        self, path: Optional[str], exec_path: str, argv: Optional[Sequence[str]] = None
    ) -> Verdict:
        """``execve(exec_path, argv)``: of the file at ``path`` (a name of the root: a
        path on this machine for a directory), or with ``path`` ``None`` of ``exec_path``
        looked up inside the root, as the kernel of a process in that root would
        (symlinks resolved inside it).

        ``argv`` defaults to ``(exec_path,)``.
        """
        args = self._argv(exec_path, argv)
        if path is None:
            try:
                path = self.fs.resolve(exec_path, cwd=self.cwd)
            except OSError as exc:
                return _unopened(exec_path, exec_path, args, exc)
        try:
            with self.fs.open(path, self.rules.buffer_size) as file:
                return self.judge(file, exec_path, args)
        except OSError as exc:
            return _unopened(path, exec_path, args, exc)

    def judge(
        self,
        file: OpenedFile,
        exec_path: str,
        argv: Optional[Sequence[str]] = None,
        *,
        as_executable: bool = False,
    ) -> Verdict:
        """The verdict for a file already opened (:func:`open_exec_file`, or the root's
        :meth:`~binfmt.rootfs.Root.open`).

        ``as_executable`` judges a file without exec bits as if it had them:
        what its format would need to run.
        """
        args = self._argv(exec_path, argv)
        refusal = self._refusal(file, as_executable)
        if refusal is not None:
            return Verdict(
                file.path, exec_path, "none", argv=args, errno="EACCES", findings=(refusal,)
            )
        return self._handle(file, exec_path, args, _Loop())

    def _argv(self, exec_path: str, argv: Optional[Sequence[str]]) -> Optional[tuple[str, ...]]:
        if self.many_files:
            return None
        return tuple(argv) if argv is not None else (exec_path,)

    # -- the exec path --------------------------------------------------------------

    def _refusal(
        self, file: OpenedFile, as_executable: bool = False, fs: Optional[Root] = None
    ) -> Optional[Finding]:
        """The kernel's checks when it opens a file for exec (do_open_execat): EACCES."""
        if not file.regular:
            kind = "directory" if stat.S_ISDIR(file.mode) else "special file"
            return Finding("not-regular", message=f"{file.path} is a {kind}, not a file")
        fs = fs or self.fs
        if not as_executable and (not file.mode & 0o111 or (self.this_machine and fs.denied(file))):
            return Finding("not-executable", message=f"{file.path} has no exec permission")
        if self.this_machine and fs.noexec(file):
            return Finding("noexec-mount", message=f"{file.path} is on a filesystem mounted noexec")
        return None

    def _handle(
        self, file: OpenedFile, exec_path: str, argv: Optional[tuple[str, ...]], loop: _Loop
    ) -> Verdict:
        """search_binary_handler(): the formats in the kernel's order, for an opened file."""
        head = file.head
        elf, sig = self._identify(head)
        base = Verdict(
            file.path,
            exec_path,
            "none",
            argv=argv,
            elf=elf,
            target=sig.name if sig is not None else None,
            platform=sig.platforms[0] if sig is not None and sig.platforms else None,
        )
        # 1. binfmt_misc, consulted before any other format.
        candidates = self.matcher.candidates(head, exec_path)
        if candidates:
            return self._via_binfmt_misc(base, file, candidates, loop)
        # 2. scripts.
        if head.startswith(b"#!"):
            return self._via_script(base, head, loop)
        # 3. ELF the kernel runs itself.
        if elf is not None:
            return self._via_elf(base, file, elf)
        return _stopped(
            base,
            (
                "ENOEXEC",
                Finding(
                    "unknown-format",
                    message="not ELF, not a script, and no binfmt_misc entry matches: "
                    "exec format error",
                ),
            ),
        )

    def _identify(self, head: bytes) -> tuple[Optional[ElfHeader], Optional[qemu.Signature]]:
        try:
            elf = ElfHeader.decode(head)
        except NotElf:
            return None, None
        # The signatures compare e_ident, e_type, e_machine and (MIPS) e_flags.
        key = head[4:20] + head[36:40]
        if key not in self._targets:
            self._targets[key] = qemu.match_header(head)
        return elf, self._targets[key]

    def _via_binfmt_misc(
        self, base: Verdict, file: OpenedFile, candidates: list[Entry], loop: _Loop
    ) -> Verdict:
        entry = candidates[0]
        findings = [
            Finding(
                "shadowed-entry",
                message=f"entry {other.name!r} also matches but is never used: "
                f"{entry.name!r} is newer",
                severity="info",
                entry=other.name,
            )
            for other in candidates[1:]
        ]
        captured = self.host.captured_by(entry)
        if captured:
            findings.append(
                Finding(
                    "hijacks-native",
                    message=f"entry {entry.name!r} also matches this host's native "
                    f"{', '.join(captured)} binaries: every such exec goes to "
                    f"{entry.interpreter!r}, and loops (ELOOP) if that is one of them",
                    severity="warning",
                    entry=entry.name,
                )
            )
        argv = None
        if base.argv is not None:
            keep = base.argv[:1] if Flags.PRESERVE_ARGV0 in entry.flags else ()
            argv = (entry.interpreter, base.exec_path, *keep, *base.argv[1:])
        verdict = attrs.evolve(
            base, handler="binfmt_misc", entry=entry.name, interpreter=entry.interpreter, argv=argv
        )
        located = self._locate(entry)
        if isinstance(located, tuple):
            return _stopped(verdict, located, findings)
        if isinstance(located, Finding):  # an F interpreter that is gone: it still runs,
            # and the kernel still counts the rewrite to it (the limit, the O/C rule).
            step = self._rewrite(loop, _sets_execfd(entry))
            if isinstance(step, tuple):
                return _stopped(verdict, step, (*findings, located))
            return attrs.evolve(verdict, findings=(*findings, located))
        fixed = Flags.FIX_BINARY in entry.flags
        if fixed and not self.this_machine:
            # Another node's kernel holds the file it opened at registration: it
            # runs, and there is nothing here to judge it by.
            verdict = attrs.evolve(verdict, findings=tuple(findings))
            if base.target is not None:
                verdict = self._check_loader(verdict, file, emulated=True)
            return verdict
        child = self._interpreter(
            located, entry.interpreter, argv, loop, _sets_execfd(entry), host=fixed
        )
        if child.handler == "native" and child.interpreter is not None:
            findings.append(
                Finding(
                    "interpreter-dynamic",
                    message=f"interpreter {entry.interpreter!r} is dynamically linked (loader "
                    f"{child.interpreter}): inside a container whose root lacks its loader and "
                    "libraries it fails even with F",
                    fix="use a static build (qemu-user-static)",
                    entry=entry.name,
                )
            )
        findings.extend(_nested_problems(child))
        verdict = attrs.evolve(verdict, errno=child.errno, findings=tuple(findings), next=child)
        if child.errno is None and base.target is not None:
            # An emulator resolves the guest binary's own loader in the same root.
            verdict = self._check_loader(verdict, file, emulated=True)
        return verdict

    def _locate(self, entry: Entry) -> str | Finding | _Stop:
        """Where the kernel finds an entry's interpreter, a warning (F, file gone), or why not."""
        if Flags.FIX_BINARY in entry.flags:
            # Opened at registration from the registering process's root; the
            # kernel keeps using that file whatever the exec'ing root holds.
            if not self.this_machine or os.path.exists(entry.interpreter):
                return entry.interpreter
            return Finding(
                "interpreter-gone",
                message=f"F entry {entry.name!r}: {entry.interpreter!r} no longer exists; "
                "the kernel still runs the file it opened at registration (an old version after an "
                "upgrade?), and registering the entry again would fail",
                entry=entry.name,
            )
        try:
            return self.fs.resolve(entry.interpreter, cwd=self.cwd)
        except OSError as exc:
            return errno_name(exc.errno), Finding(
                "interpreter-missing",
                message=f"interpreter {entry.interpreter!r} of entry {entry.name!r} is not "
                f"found{self._where()} ({exc.strerror}) and the entry lacks F",
                fix="register the entry with F ({persistent}), so that the kernel opens the "
                "interpreter once, at registration",
                entry=entry.name,
                options=("persistent",),
            )

    def _where(self) -> str:
        return "" if self.root == "/" else f" inside {self.root}"

    def _interpreter(
        self,
        host_path: str,
        exec_path: str,
        argv: Optional[tuple[str, ...]],
        loop: _Loop,
        sets_execfd: bool,
        host: bool = False,
    ) -> Verdict:
        """The kernel opens the interpreter, counts one rewrite, and starts over with it.

        ``host``: the file is this machine's (an ``F`` entry's), not the root's.
        """
        key = (host_path, exec_path, loop, sets_execfd, host)
        if self.many_files and key in self._interpreters:
            return self._interpreters[key]
        fs = self.fs
        if host:
            if self._host_fs is None:
                self._host_fs = DirectoryRoot("/")
            fs = self._host_fs
        try:
            with fs.open(host_path, self.rules.buffer_size) as file:
                refusal = self._refusal(file, fs=fs)
                step = self._rewrite(loop, sets_execfd) if refusal is None else ("EACCES", refusal)
                if isinstance(step, tuple):
                    verdict = Verdict(
                        host_path, exec_path, "none", argv=argv, errno=step[0], findings=(step[1],)
                    )
                else:
                    verdict = self._handle(file, exec_path, argv, step)
        except OSError as exc:
            verdict = _unopened(host_path, exec_path, argv, exc)
        if self.many_files:
            self._interpreters[key] = verdict
        return verdict

    def _rewrite(self, loop: _Loop, sets_execfd: bool) -> _Loop | _Stop:
        """One more interpreter rewrite (exec_binprm's loop): on, or ENOEXEC, or ELOOP."""
        have = loop.have_execfd or (sets_execfd and self.rules.open_binary_no_rewrite)
        if have and loop.executable_set:
            return "ENOEXEC", Finding(
                "open-binary-rewrite",
                message="an O/C entry's interpreter is itself rewritten (a script or another "
                "binfmt_misc match): since Linux 5.8 the kernel refuses with ENOEXEC",
            )
        depth = loop.depth + 1
        if depth > self.rules.max_rewrites:
            return "ELOOP", Finding(
                "too-deep",
                message=f"more than {self.rules.max_rewrites} interpreter rewrites "
                "(an entry that matches its own interpreter?): the kernel gives ELOOP",
            )
        return _Loop(depth, have, loop.executable_set or have)

    def _via_script(self, base: Verdict, head: bytes, loop: _Loop) -> Verdict:
        shebang = parse_shebang(head, self.rules.buffer_size)
        if shebang is None:
            return _stopped(
                attrs.evolve(base, handler="script"),
                (
                    "ENOEXEC",
                    Finding(
                        "bad-shebang",
                        message="the #! line names no interpreter "
                        "(or it does not fit the kernel's buffer)",
                    ),
                ),
            )
        interp = shebang.interpreter
        argv = None
        if base.argv is not None:
            optional = (shebang.argument,) if shebang.argument is not None else ()
            argv = (interp, *optional, base.exec_path, *base.argv[1:])
        verdict = attrs.evolve(base, handler="script", interpreter=interp, argv=argv)
        try:
            host_path = self.fs.resolve(interp, cwd=self.cwd)
        except OSError as exc:
            return _stopped(
                verdict,
                (
                    errno_name(exc.errno),
                    Finding(
                        "script-interpreter-missing",
                        message=f"script interpreter {interp!r} is not found{self._where()} "
                        f"({exc.strerror})",
                    ),
                ),
            )
        child = self._interpreter(host_path, interp, argv, loop, sets_execfd=False)
        return attrs.evolve(
            verdict, errno=child.errno, findings=_nested_problems(child), next=child
        )

    def _via_elf(self, base: Verdict, file: OpenedFile, elf: ElfHeader) -> Verdict:
        # load_elf_binary() checks e_type before the architecture.
        if not elf.is_executable_type:
            return _stopped(
                base,
                (
                    "ENOEXEC",
                    Finding(
                        "not-executable-elf",
                        message=f"ELF type {elf.type} is not an executable or shared object",
                    ),
                ),
            )
        target = base.target
        if target is None or not self.host.runs_natively(target):
            what = target or elf.machine_name
            return _stopped(
                base,
                (
                    "ENOEXEC",
                    Finding(
                        "no-handler",
                        message=f"{what} binary, which this host does not run natively, and no "
                        "binfmt_misc entry matches: exec format error",
                        fix=f"register an emulator for {target}" if target else "",
                    ),
                ),
            )
        return self._check_loader(attrs.evolve(base, handler="native"), file, emulated=False)

    def _check_loader(self, verdict: Verdict, file: OpenedFile, *, emulated: bool) -> Verdict:
        """A dynamic binary's PT_INTERP must exist inside the root."""
        assert verdict.elf is not None
        try:
            loader = file.program_interpreter(verdict.elf)
        except (BinfmtError, OSError) as exc:
            # The kernel refuses such a file; an emulator may read it differently.
            severity: Severity = "warning" if emulated else "error"
            finding = Finding(
                "invalid-elf", message=f"cannot read the program headers: {exc}", severity=severity
            )
            return _stopped(verdict, (None if emulated else "ENOEXEC", finding), verdict.findings)
        if loader is None:
            return verdict
        if not emulated:
            verdict = attrs.evolve(verdict, interpreter=loader)
        problem = self._find_loader(loader)
        if problem is None:
            return verdict
        finding = Finding(
            "loader-missing",
            message=f"the binary's dynamic loader {loader} is not found{self._where()} "
            f"({problem.strerror})",
        )
        return _stopped(
            verdict, (None if emulated else errno_name(problem.errno), finding), verdict.findings
        )

    def _find_loader(self, loader: str) -> Optional[OSError]:
        """Why ``loader`` cannot be opened in the root, or ``None`` (memoized for many files)."""
        if self.many_files and loader in self._loaders:
            return self._loaders[loader]
        problem: Optional[OSError] = None
        try:
            self.fs.resolve(loader)
        except OSError as exc:
            problem = exc
        if self.many_files:
            self._loaders[loader] = problem
        return problem


#: open(2) errors that mean the path does not lead to a file.
_LOOKUP_ERRNOS = frozenset((errnos.ENOENT, errnos.ENOTDIR, errnos.ELOOP, errnos.ENAMETOOLONG))


def _unopened(path: str, exec_path: str, argv: Optional[tuple[str, ...]], exc: OSError) -> Verdict:
    """The verdict for a file that could not be opened (or read)."""
    if exc.errno in _LOOKUP_ERRNOS:
        finding = Finding("not-found", message=f"{path}: {exc.strerror}")
    else:
        finding = Finding("unreadable", message=f"cannot read {path}: {exc.strerror}")
    return Verdict(
        path, exec_path, "none", argv=argv, errno=errno_name(exc.errno), findings=(finding,)
    )


def _sets_execfd(entry: Entry) -> bool:
    return Flags.OPEN_BINARY in entry.flags


def _stopped(
    verdict: Verdict,
    stop: tuple[Optional[str], Finding],
    before: Sequence[Finding] = (),
) -> Verdict:
    """``verdict`` ending in ``stop``: its errno (``None``: the exec itself works) and finding."""
    errno, finding = stop
    return attrs.evolve(verdict, errno=errno, findings=(*before, finding))


def _nested_problems(child: Verdict) -> tuple[Finding, ...]:
    """The interpreter's own errors and warnings, so the top verdict explains itself."""
    return tuple(f for f in child.findings if f.severity != "info")


# -- the function -----------------------------------------------------------------------


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
    this_machine: bool = True,
) -> Verdict:
    """Predict ``execve(exec_path, argv)`` of the file at ``path``.

    ``state`` is the binfmt_misc state (default: read
    ``/proc/sys/fs/binfmt_misc``), ``host`` the machine (default: this one),
    ``rootfs`` the root the exec happens in. ``exec_path`` is the path string
    the program is started by (default: ``path`` relative to ``rootfs``, with
    a leading ``/``, or ``path`` itself when ``rootfs`` is ``/``); ``cwd`` the
    working directory inside ``rootfs`` for relative interpreter paths;
    ``kernel`` the rules (default: the host's).

    For another node, pass its ``state`` and ``host`` (a ``status --json``
    document taken there: :meth:`State.from_document
    <binfmt.procfs.State.from_document>`, :meth:`Host.from_document
    <binfmt.host.Host.from_document>`) and ``this_machine=False``: see
    :class:`ExecModel`.
    """
    if not this_machine and (state is None or host is None):
        raise InvalidValue("this_machine", this_machine, "another node needs its state and host")
    if state is None:
        state = BinfmtMisc().state()
    if host is None:
        host = Host.detect()
    root = os.path.abspath(rootfs)
    if exec_path is None:
        exec_path = _path_inside(root, path)
    if cwd is None:
        cwd = os.getcwd() if root == "/" else "/"
    model = ExecModel(state, host, rootfs=root, cwd=cwd, kernel=kernel, this_machine=this_machine)
    inside = _path_inside(root, path)
    if root != "/" and inside.startswith("/") and inside == exec_path != path:
        # A file of the root, started by its path there: the kernel of a process
        # in that root follows its symlinks inside it, not on this machine.
        return attrs.evolve(model.exec(None, exec_path, argv), path=path)
    return model.exec(path, exec_path, argv)


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
