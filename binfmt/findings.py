"""Findings: one type for every observation, and the registry of their stable codes.

:func:`~binfmt.predict`, :func:`~binfmt.install.plan`, :func:`~binfmt.verify.verify`,
:func:`~binfmt.scan.scan` and :func:`~binfmt.doctor.diagnose` all report what
they notice as :class:`Finding` values: a stable ``code`` from :data:`CODES`
(scripts may match on it), a severity, a one-line message, what fixes it, and
the entry it is about. Messages speak in the library's terms; where an
option of the same call fixes the problem, :attr:`Finding.options` names it
(``"replace"``, ``"force"`` …, the keyword arguments and
:class:`~binfmt.install.InstallOptions` fields), and the command line shows
the matching flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Optional, get_args

import attrs

__all__ = ["CODES", "SEVERITIES", "Finding", "Severity", "worst"]

Severity = Literal["info", "warning", "error"]

#: The severities in increasing order.
SEVERITIES: tuple[Severity, ...] = get_args(Severity)

#: Every code, with its usual severity and what it means. A finding may carry
#: another severity where the context changes the stakes (a capture allowed
#: with ``force`` is a warning, not an error).
CODES: dict[str, tuple[Severity, str]] = {
    # -- the exec of one file (predict, check, scan, verify) ------------------------
    "not-found": ("error", "the file, or a directory on its path, does not exist"),
    "not-regular": ("error", "a directory or special file: only regular files execute"),
    "not-executable": ("error", "the file has no exec permission"),
    "noexec-mount": ("error", "the file is on a filesystem mounted noexec"),
    "unreadable": ("error", "the file cannot be read"),
    "unknown-format": ("error", "not ELF, not a script, and no entry matches: ENOEXEC"),
    "not-executable-elf": ("error", "an ELF file that is not a program (ET_REL, ET_CORE)"),
    "no-handler": ("error", "a foreign ELF program and no entry for it: ENOEXEC"),
    "invalid-elf": ("error", "the program headers cannot be read as the kernel would"),
    "loader-missing": ("error", "the program's dynamic loader is not in the root"),
    "bad-shebang": ("error", "a #! line that names no interpreter"),
    "script-interpreter-missing": ("error", "the #! interpreter is not in the root"),
    "open-binary-rewrite": ("error", "an O/C entry's interpreter needs a further rewrite"),
    "too-deep": ("error", "more interpreter rewrites than the kernel allows: ELOOP"),
    "shadowed-entry": ("warning", "an older entry that the newer one hides"),
    # -- an entry's interpreter (predict, install, doctor) --------------------------
    "interpreter-missing": ("error", "the interpreter does not exist where it is looked up"),
    "interpreter-gone": ("warning", "an F entry whose interpreter file was deleted"),
    "interpreter-not-executable": ("error", "the interpreter is not an executable file"),
    "interpreter-not-elf": ("warning", "the interpreter is not a readable ELF program"),
    "interpreter-dynamic": ("warning", "the interpreter needs a loader and libraries"),
    "writable-credentials-interpreter": ("error", "a C entry's interpreter non-root can change"),
    "writable-interpreter": ("warning", "an interpreter that a non-root user can change"),
    "no-fix-binary": ("warning", "no F flag: the interpreter must exist in each container"),
    "hijacks-native": ("error", "the entry matches the host's own programs"),
    "native-unknown": ("warning", "whether the host runs a compat target itself is unknown"),
    # -- plans (install, uninstall, load) -------------------------------------------
    "kernel-too-old": ("error", "the kernel refuses a flag the plan needs"),
    "credentials-flag": ("warning", "the C flag runs emulators with setuid privileges"),
    "shadows-entry": ("warning", "the new entry hides an older registrant's"),
    "name-conflict": ("error", "an entry of that name exists and differs"),
    "repeated-name": ("error", "the same entry name is given twice"),
    "unknown-name": ("error", "neither an entry nor a QEMU target"),
    "nothing-to-remove": ("info", "no QEMU entry for that target is registered"),
    "cannot-restore": ("error", "if a later step failed, an entry could not be put back as it was"),
    "restore-order": (
        "warning",
        "a rollback would list entries that match no common file reordered",
    ),
    # -- verify -----------------------------------------------------------------------
    "unexpected-outcome": ("warning", "the kernel did not do what the prediction said"),
    "native-confirmed": ("info", "a compat target the kernel could not tell about runs"),
    # -- doctor -----------------------------------------------------------------------
    "not-mounted": ("error", "binfmt_misc is not mounted"),
    "automount-not-triggered": ("error", "an automount point that did not mount binfmt_misc"),
    "disabled": ("error", "binfmt_misc is switched off globally"),
    "kernel-without-f": ("warning", "the kernel predates the F flag"),
    "user-namespace": ("info", "running in a user namespace with its own instance"),
    "duplicate-entry": ("warning", "two entries test exactly the same bits"),
    "not-persisted": ("warning", "an entry no binfmt.d file registers at boot"),
    "boot-order-differs": ("warning", "another entry wins after a reboot"),
    "systemd-binfmt-flushes": ("info", "systemd-binfmt removes unpersisted entries"),
    "platform-unavailable": ("error", "a platform asked for cannot run"),
    "platform-ok": ("info", "a platform asked for runs"),
    "no-kernel-support": ("error", "the kernel has no binfmt_misc"),
    "no-credentials": ("info", "setuid programs run without their privileges"),
    "qemu-versions": ("info", "the QEMU versions behind the entries"),
    "unreadable-entry": ("warning", "an entry file that cannot be read"),
    "invalid-config": ("warning", "a binfmt.d line systemd skips"),
    "kernel-rules-unknown": ("info", "a kernel rule that depends on an unknown patch level"),
    # -- ps, doctor (issue 14) ----------------------------------------------------------
    "interpreter-deleted": ("warning", "processes run an interpreter file deleted or replaced"),
}


def _usual_severity(finding: Finding) -> Severity:
    return CODES[finding.code][0] if finding.code in CODES else "error"


@attrs.frozen
class Finding:
    """One observation: what is wrong (or worth knowing), and how to fix it.

    Build one with keywords after the code: ``Finding("name-conflict",
    message=…, fix=…)``; the severity defaults to the code's usual one.
    """

    #: A stable code; every code the library emits is in :data:`CODES`.
    code: str
    #: ``"info"``, ``"warning"`` or ``"error"``; by default the code's usual severity.
    severity: Severity = attrs.field(
        default=attrs.Factory(_usual_severity, takes_self=True),
        validator=attrs.validators.in_(SEVERITIES),
    )
    #: One line for people; untrusted names in it are escaped when printed.
    message: str = ""
    #: What to do about it, or ``""``; ``{name}`` stands for option ``name``
    #: of :attr:`options` (see :meth:`fix_text`).
    fix: str = ""
    #: The binfmt_misc entry it is about, if any.
    entry: Optional[str] = None
    #: The options of the same call that the fix uses (``("replace",)``), if any.
    options: tuple[str, ...] = ()

    def fix_text(self, names: Optional[Mapping[str, str]] = None) -> str:
        """The fix, each option spelled as ``names`` says (default: ``the replace option``).

        The command line passes its flags (``{"replace": "--replace"}``).
        """
        if not self.options:
            return self.fix
        given = names or {}
        return self.fix.format_map({o: given.get(o, f"the {o} option") for o in self.options})

    def to_dict(self, names: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
        """The JSON form shared by every command's document (``names``: see :meth:`fix_text`).

        ``options`` is there only when the fix uses options of the same call.
        """
        doc: dict[str, Any] = {
            "code": self.code,
            "severity": self.severity,
            "entry": self.entry,
            "message": self.message,
            "fix": self.fix_text(names),
        }
        if self.options:
            doc["options"] = list(self.options)
        return doc


def worst(findings: Any) -> Severity:
    """The highest severity among ``findings`` (``"info"`` for none)."""
    level = 0
    for finding in findings:
        level = max(level, SEVERITIES.index(finding.severity))
    return SEVERITIES[level]
