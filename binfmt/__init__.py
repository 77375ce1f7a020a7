"""binfmt: Linux binfmt_misc, modelled exactly as the kernel behaves.

>>> import binfmt
>>> entry = binfmt.Entry.parse(r":qemu-aarch64:M::\\x7fELF\\x02::/usr/bin/qemu-aarch64-static:F")
>>> entry.flags.letters
'F'

Importing this package does no work and does not import pyelftools.
"""

from .entry import Entry, EntryType, Flags
from .errors import (
    BinfmtError,
    InvalidEntry,
    KernelError,
    MalformedStatus,
    NotMounted,
    PermissionDenied,
    UnknownTarget,
)
from .host import Host
from .kernel import KernelRules
from .procfs import DEFAULT_PATH, BinfmtMisc, State
from .qemu import SIGNATURES, Signature

__all__ = [
    "DEFAULT_PATH",
    "SIGNATURES",
    "BinfmtError",
    "BinfmtMisc",
    "Entry",
    "EntryType",
    "Flags",
    "Host",
    "InvalidEntry",
    "KernelError",
    "KernelRules",
    "MalformedStatus",
    "NotMounted",
    "PermissionDenied",
    "Signature",
    "State",
    "UnknownTarget",
]
