"""The kernel's side of binfmt_misc writes, carried out on a fake tree.

A fake tree is a directory laid out like binfmt_misc but made of ordinary
files (:func:`binfmt.testing.make_fake_procfs` builds one). Its ``register``
file is readable, unlike the kernel's, and lists the entry names in lookup
order, newest first, one per line. :class:`FakeKernel` answers each write the
way the kernel would under given :class:`~binfmt.kernel.KernelRules` (spec §1,
§3): parse the register line, refuse with the kernel's errno, create the entry
file, enable, disable, remove. :class:`~binfmt.procfs.BinfmtMisc` sends its
writes here when its directory is a fake tree, so code under test runs
unchanged against it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING, Optional

import attrs

from . import text
from .entry import Entry, Flags
from .errors import InvalidEntry, InvalidValue

if TYPE_CHECKING:
    from .kernel import KernelRules

__all__ = ["FakeKernel", "FakeRefusal", "held_file", "is_fake_tree", "read_order"]

#: The files every binfmt_misc directory has besides the entries.
#: Where a fake tree keeps which file each ``F`` entry holds (the kernel keeps it
#: in memory): not an entry.
HELD_FILES = ".binfmt-held"
#: The files of a binfmt_misc directory that are not entries (the last: fake trees only).
SPECIAL_FILES = ("register", "status", HELD_FILES)


class FakeRefusal(OSError):
    """An errno the fake kernel answers a write with (a refusal, not a permission problem)."""


def is_fake_tree(path: str) -> bool:
    """A fake tree's ``register`` is a readable file; the kernel's is write-only."""
    try:
        with open(os.path.join(path, "register"), "rb") as f:
            f.read(1)
    except OSError:
        return False
    return True


def held_file(path: str, name: str) -> Optional[tuple[int, int, int]]:
    """The file the fake tree at ``path`` says its ``F`` entry ``name`` holds:
    (device, inode, change time in ns), or ``None`` when it does not say (a
    tree captured from a kernel, whose files were not opened here)."""
    try:
        with open(os.path.join(path, HELD_FILES), "rb") as f:
            record = json.loads(f.read() or b"{}")
    except (OSError, ValueError):
        return None
    held = record.get(name)
    return tuple(held) if isinstance(held, list) and len(held) == 3 else None


def read_order(path: str) -> list[str]:
    """The entry names a fake ``register`` file lists, newest first."""
    with open(path, "rb") as f:
        content = text.decode(f.read())
    return [line for line in content.split("\n") if line]


def _write_order(path: str, names: Iterable[str]) -> None:
    with open(path, "wb") as f:
        f.write(text.encode("".join(f"{n}\n" for n in names)))


class FakeKernel:
    """One fake tree and the rules of the kernel it plays."""

    def __init__(self, path: str, kernel: KernelRules) -> None:
        self.path = path
        self.kernel = kernel
        self.order_file = os.path.join(path, "register")

    def write(self, name: str, data: bytes) -> None:
        """One ``write(2)`` of ``data`` to the file ``name``; raises the kernel's ``OSError``."""
        if name == "register":
            self._register(data)
            return
        target = os.path.join(self.path, name)
        if not os.path.isfile(target):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), target)
        command = _parse_command(data)
        if command is None:
            return
        if name == "status":
            self._status(command)
        else:
            self._entry(name, command)

    def _register(self, data: bytes) -> None:
        try:
            entry = Entry.parse(data, self.kernel)
        except InvalidEntry as exc:
            # A name longer than NAME_MAX, or one of the directory's own files
            # (EEXIST), fails in the dcache lookup, which comes after the F
            # interpreter is opened since 5.12: a missing one wins.
            late = (errno.ENAMETOOLONG, errno.EEXIST)
            if exc.errno in late and self.kernel.opens_interpreter_first:
                fixed = _with_short_name(data, self.kernel)
                err = self._open_interpreter(fixed, []) if fixed is not None else 0
                if err:
                    raise FakeRefusal(err, os.strerror(err)) from None
            raise FakeRefusal(exc.errno, os.strerror(exc.errno)) from None
        order = self._order()
        # Since 5.12 (and 5.10.218) the F interpreter is opened before the name is looked up.
        first = self.kernel.opens_interpreter_first
        if first is None:
            raise InvalidValue(
                "kernel rules",
                self.kernel.version,
                "a fake tree plays one kernel exactly, and "
                f"{self.kernel.why_unknown('opens_interpreter_first')}",
            )
        checks = [self._open_interpreter, self._lookup_name]
        if not first:
            checks.reverse()
        for check in checks:
            err = check(entry, order)
            if err:
                # Before 4.8 every refusal after parsing came back as EINVAL.
                err = err if self.kernel.precise_errors else errno.EINVAL
                raise FakeRefusal(err, os.strerror(err))
        self._save(entry)
        if Flags.FIX_BINARY in entry.flags:
            # The kernel opens an F interpreter before it creates the entry, whose
            # timestamps are the registration time: later than the file's last change.
            path = os.path.join(self.path, entry.name)
            held = os.stat(entry.interpreter)
            when = max(os.stat(path).st_mtime_ns, held.st_ctime_ns + 1)
            os.utime(path, ns=(when, when))
            self._hold(entry.name, (held.st_dev, held.st_ino, held.st_ctime_ns))
        _write_order(self.order_file, [entry.name, *order])

    def _hold(self, name: str, held: Optional[tuple[int, int, int]]) -> None:
        """Record (or with ``None`` forget) the file an F entry holds."""
        path = os.path.join(self.path, HELD_FILES)
        try:
            with open(path, "rb") as f:
                record = json.loads(f.read() or b"{}")
        except (OSError, ValueError):
            record = {}
        if held is None:
            if name not in record:
                return
            record.pop(name)
        else:
            record[name] = list(held)
        with open(path, "w") as f:
            json.dump(record, f)

    @staticmethod
    def _open_interpreter(entry: Entry, order: list[str]) -> int:
        if Flags.FIX_BINARY not in entry.flags:
            return 0
        interp = entry.interpreter
        try:
            st = os.stat(interp)  # the registering process's view: this machine's
        except OSError as exc:
            return exc.errno or errno.ENOENT  # ENOENT, ENOTDIR, ELOOP, EACCES …
        if not stat.S_ISREG(st.st_mode) or not os.access(interp, os.X_OK):
            return errno.EACCES
        return 0

    @staticmethod
    def _lookup_name(entry: Entry, order: list[str]) -> int:
        return errno.EEXIST if entry.name in order else 0

    def _status(self, command: str) -> None:
        if command == "-1":
            for name in self._order():
                os.unlink(os.path.join(self.path, name))
                self._hold(name, None)
            _write_order(self.order_file, [])
        else:
            with open(os.path.join(self.path, "status"), "wb") as f:
                f.write(b"enabled\n" if command == "1" else b"disabled\n")

    def _entry(self, name: str, command: str) -> None:
        if command == "-1":
            os.unlink(os.path.join(self.path, name))
            self._hold(name, None)
            _write_order(self.order_file, [n for n in self._order() if n != name])
            return
        path = os.path.join(self.path, name)
        with open(path, "rb") as f:
            entry = Entry.from_status(name, f.read())
        registered = os.stat(path).st_mtime_ns
        self._save(attrs.evolve(entry, enabled=command == "1"))
        os.utime(path, ns=(registered, registered))  # the kernel keeps the entry's timestamps

    def _order(self) -> list[str]:
        return [
            n for n in read_order(self.order_file) if os.path.exists(os.path.join(self.path, n))
        ]

    def _save(self, entry: Entry) -> None:
        with open(os.path.join(self.path, entry.name), "wb") as f:
            f.write(text.encode(entry.to_status()))


def _parse_command(data: bytes) -> Optional[str]:
    """parse_command(): ``0``, ``1`` or ``-1`` with one optional newline; empty does nothing."""
    if len(data) > 3:
        raise FakeRefusal(errno.EINVAL, os.strerror(errno.EINVAL))
    if not data:
        return None
    body = data[:-1] if data.endswith(b"\n") else data
    if body in (b"0", b"1", b"-1"):
        return body.decode()
    raise FakeRefusal(errno.EINVAL, os.strerror(errno.EINVAL))


def _with_short_name(data: bytes, kernel: KernelRules) -> Optional[Entry]:
    """The entry ``data`` would register under a short name, or ``None`` if it has other faults."""
    delim = data[:1]
    fields = data[1:].split(delim)
    if len(fields) < 7:
        return None
    name = b"n" if delim != b"n" else b"m"  # any valid name that is not the delimiter
    try:
        return Entry.parse(delim + name + delim + delim.join(fields[1:]), kernel)
    except InvalidEntry:
        return None
