"""binfmt: Linux binfmt_misc, modelled exactly as the kernel behaves.

>>> import binfmt
>>> entry = binfmt.Entry.parse(r":qemu-aarch64:M::\\x7fELF\\x02::/usr/bin/qemu-aarch64-static:F")
>>> entry.flags.letters
'F'

Importing this package does no work and does not import pyelftools;
:func:`predict` and its :class:`Verdict` load on first use.
"""

from typing import TYPE_CHECKING, Any

from .entry import Entry, EntryType, Flags
from .errors import (
    BinfmtError,
    InvalidEntry,
    InvalidValue,
    KernelError,
    MalformedStatus,
    NotMounted,
    PermissionDenied,
    UnknownTarget,
)
from .host import Host
from .procfs import DEFAULT_PATH, BinfmtMisc, State
from .qemu import SIGNATURES, Signature

if TYPE_CHECKING:
    from .emulated import Process, ProcessReport, processes
    from .findings import Finding
    from .kernel import KernelRules
    from .prediction import Verdict, predict

# Loaded on first use: `status` needs none of them (the ELF reader, the kernel rules).
_LAZY = {
    "predict": "prediction",
    "Verdict": "prediction",
    "Finding": "findings",
    "KernelRules": "kernel",
    "processes": "emulated",
    "Process": "emulated",
    "ProcessReport": "emulated",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_PATH",
    "SIGNATURES",
    "BinfmtError",
    "BinfmtMisc",
    "Entry",
    "EntryType",
    "Finding",
    "Flags",
    "Host",
    "InvalidEntry",
    "InvalidValue",
    "KernelError",
    "KernelRules",
    "MalformedStatus",
    "NotMounted",
    "PermissionDenied",
    "Process",
    "ProcessReport",
    "Signature",
    "State",
    "UnknownTarget",
    "Verdict",
    "predict",
    "processes",
]
