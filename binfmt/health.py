"""An entry's interpreter on the host: is it there, executable, static, and safe?

The one place that judges an interpreter file, for :func:`binfmt.install.plan`
(before registering) and :func:`binfmt.doctor.diagnose` (after): what
:func:`inspect_interpreter` finds, and the findings
:func:`interpreter_findings` draws from it. What an exec inside a container
root makes of an interpreter is the exec model's question
(:mod:`binfmt.prediction`), not this module's.
"""

from __future__ import annotations

import os
import shlex
import stat
from typing import Optional

import attrs

from .entry import Entry, Flags
from .errors import BinfmtError
from .findings import Finding

__all__ = ["InterpreterFacts", "inspect_interpreter", "interpreter_findings"]


@attrs.frozen
class InterpreterFacts:
    """What the file an entry names as its interpreter is, on the host."""

    #: The interpreter path as the entry names it.
    path: str
    #: Why it cannot be found (``os.strerror``), or ``None`` when it exists.
    missing: Optional[str] = None
    #: A regular file with an exec bit.
    executable: bool = False
    #: Someone other than root may change it (not owned by root, or group/other writable).
    writable_by_others: bool = False
    #: Why it is not a readable ELF program, or ``None`` (also when not looked at).
    not_elf: Optional[str] = None
    #: The dynamic loader it needs, when it is a dynamically linked ELF program.
    loader: Optional[str] = None
    #: Needs a dynamic loader (PT_INTERP, or DT_NEEDED without one).
    dynamic: bool = False

    @property
    def usable(self) -> bool:
        """It exists and may be executed."""
        return self.missing is None and self.executable


def inspect_interpreter(path: str, host_root: str = "/", *, elf: bool = True) -> InterpreterFacts:
    """Look at the interpreter ``path`` under ``host_root`` (``/``: this machine's root).

    With ``elf``, its program headers are read too (pyelftools), to tell a
    static build from a dynamic one.
    """
    host_path = os.path.join(host_root, path.lstrip("/")) if host_root != "/" else path
    try:
        st = os.stat(host_path)
    except OSError as exc:
        return InterpreterFacts(path, missing=exc.strerror or "not found")
    executable = stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)
    facts = InterpreterFacts(
        path,
        executable=executable,
        writable_by_others=st.st_uid != 0 or bool(st.st_mode & 0o022),
    )
    if not (elf and executable):
        return facts
    from .elf import details

    try:
        info = details(host_path)
    except (BinfmtError, OSError) as exc:
        return attrs.evolve(facts, not_elf=str(exc))
    return attrs.evolve(facts, loader=info.interpreter, dynamic=info.is_dynamic)


def interpreter_findings(
    entry: Entry, facts: InterpreterFacts, *, emulator: bool, fix_binary_hint: str = ""
) -> list[Finding]:
    """The problems of ``entry``'s interpreter, each with its fix.

    ``emulator`` says the entry runs foreign programs (a QEMU target): only
    then do a dynamically linked interpreter and a missing ``F`` matter, because
    containers of that platform will run it. ``fix_binary_hint`` is the fix to
    show for a missing ``F`` (default: register it with F, the ``persistent`` option).
    """
    name = entry.name
    fixed = Flags.FIX_BINARY in entry.flags
    if facts.missing is not None:
        if fixed:
            return [
                Finding(
                    "interpreter-gone",
                    message=f"{facts.path} is gone; the kernel still runs the file it opened at "
                    "registration (an old version, after an upgrade?)",
                    fix=f"register {name} again (replacing it) once the interpreter is back",
                    entry=name,
                )
            ]
        return [
            Finding(
                "interpreter-missing",
                message=f"interpreter {facts.path} does not exist ({facts.missing}): every "
                "matching exec fails with ENOENT",
                fix=f"install it, or remove the entry (binfmt uninstall {shlex.quote(name)})",
                entry=name,
            )
        ]
    if not facts.executable:
        return [
            Finding(
                "interpreter-not-executable",
                message=f"interpreter {facts.path} is not an executable file: "
                "execs fail with EACCES",
                fix=f"chmod +x {facts.path}, or point the entry at the right file",
                entry=name,
            )
        ]
    found: list[Finding] = []
    if facts.writable_by_others:
        fix = f"chown root {facts.path} && chmod go-w {facts.path}"
        if Flags.CREDENTIALS in entry.flags:
            found.append(
                Finding(
                    "writable-credentials-interpreter",
                    message=f"{facts.path} has the C flag but can be changed by a non-root user: "
                    "anyone who can write it runs code with the privileges of every setuid "
                    "program it emulates",
                    fix=fix,
                    entry=name,
                )
            )
        else:
            found.append(
                Finding(
                    "writable-interpreter",
                    message=f"{facts.path} can be changed by a non-root user, who then controls "
                    "every matching program anyone runs on this node, root's included",
                    fix=fix,
                    entry=name,
                )
            )
    if not emulator:
        return found
    if facts.not_elf is not None:
        found.append(
            Finding(
                "interpreter-not-elf",
                message=f"{facts.path} is not a readable ELF program ({facts.not_elf})",
                entry=name,
            )
        )
    if facts.dynamic:
        loader = f" (loader {facts.loader})" if facts.loader else ""
        found.append(
            Finding(
                "interpreter-dynamic",
                message=f"{facts.path} is dynamically linked{loader}: inside a container it needs "
                "its loader and libraries there too, and fails without them, even with F: "
                "use a static QEMU",
                fix="use a static build (Debian/Ubuntu: qemu-user-static) and register it again",
                entry=name,
            )
        )
    if not fixed:
        found.append(
            Finding(
                "no-fix-binary",
                message=f"{name} has no F flag: the kernel looks for {facts.path} inside each "
                "container, where it is usually missing (ENOENT)",
                fix=fix_binary_hint or "register it with F ({persistent})",
                entry=name,
                options=() if fix_binary_hint else ("persistent",),
            )
        )
    return found
