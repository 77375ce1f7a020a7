"""What the kernel should answer to a register line, according to the library.

Shared by the corpus test (against checked-in kernel answers) and the live
differential test (against a private instance). The only part of a
registration that is not syntax is ``F`` opening the interpreter, which
depends on this machine's files; it is modelled here with ``os.stat``.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Union

from binfmt.entry import Entry, Flags
from binfmt.errors import InvalidEntry, KernelError
from binfmt.kernel import KernelRules
from binfmt.sandbox import Sandbox

#: ("ok", entry file bytes) or ("err", errno name)
Outcome = tuple[str, Union[bytes, str]]


def open_exec_errno(path: str) -> int:
    """The errno open_exec() gives for ``path`` (0 if it opens), for the common cases."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.errno or errno.EIO
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        return errno.EACCES
    return 0


def expected(line: bytes, rules: KernelRules) -> Outcome:
    try:
        entry = Entry.parse(line, rules)
    except InvalidEntry as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.EEXIST) and rules.opens_interpreter_first:
            # The kernel opens an F interpreter before it looks the name up.
            fixed = _fixed_interpreter(line, rules)
            if fixed is not None:
                err = open_exec_errno(fixed)
                if err:
                    return "err", errno.errorcode[err]
        return "err", errno.errorcode[exc.errno]
    if Flags.FIX_BINARY in entry.flags:
        err = open_exec_errno(entry.interpreter)
        if err:
            return "err", errno.errorcode[err]
    return "ok", entry.to_status().encode("utf-8", "surrogateescape")


def _fixed_interpreter(line: bytes, rules: KernelRules) -> Union[str, None]:
    """The interpreter of a line refused only for its name, if it has F."""
    delim = line[:1]
    fields = line[1:].split(delim)
    if len(fields) < 7:
        return None
    renamed = delim + b"x" + delim + delim.join(fields[1:])
    try:
        entry = Entry.parse(renamed, rules)
    except InvalidEntry:
        return None
    return entry.interpreter if Flags.FIX_BINARY in entry.flags else None


def kernel_answer(box: Sandbox, line: bytes) -> Outcome:
    """What the sandbox's kernel answers to ``line``: its errno, or the entry file it writes."""
    misc = box.misc
    try:
        misc.register(line)
    except KernelError as exc:
        return "err", exc.errno_name
    (name,) = misc.names()
    with open(os.path.join(misc.path, name), "rb") as f:
        return "ok", f.read()
