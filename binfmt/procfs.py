"""Read and write a binfmt_misc directory: the kernel's, or a fake one in tests.

:class:`BinfmtMisc` reads the directory into a :class:`State` (entries in the
kernel's lookup order, newest first) and performs the kernel's writes: each
write is exactly one ``write(2)`` call, because the kernel parses every write
on its own (spec §1.1), and every ``OSError`` comes back as a library error
carrying the kernel's errno.

**Fake trees.** A directory laid out like binfmt_misc, but made of ordinary
files, is treated as a simulated kernel (:mod:`binfmt.fakekernel`): the
kernel's ``register`` file is write-only, a fake one is readable and lists the
entry names in lookup order. Which of the two a directory is, is decided once
per :class:`BinfmtMisc`, the first time it is found mounted. Build one with
:func:`binfmt.testing.make_fake_procfs`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

import attrs

from . import text
from .entry import Entry, EntryType, Flags
from .errors import (
    BinfmtError,
    InvalidEntry,
    InvalidValue,
    KernelError,
    MalformedStatus,
    NotMounted,
    PermissionDenied,
)
from .fakekernel import SPECIAL_FILES, FakeKernel, FakeRefusal, is_fake_tree, read_order

if TYPE_CHECKING:  # loaded on first use: reading a tree needs no kernel rules
    from .kernel import KernelRules

__all__ = ["DEFAULT_PATH", "BinfmtMisc", "State"]

#: Where the kernel's binfmt_misc is mounted (by systemd, or ``mount -t binfmt_misc``).
DEFAULT_PATH = "/proc/sys/fs/binfmt_misc"


@attrs.frozen
class State:
    """What one binfmt_misc instance holds, read at one moment."""

    #: The directory read.
    path: str
    #: Whether binfmt_misc (or a fake of it) is there.
    mounted: bool
    #: The global switch (``status``); ``None`` when not mounted.
    enabled: Optional[bool] = None
    #: Every entry, in the kernel's lookup order: newest first.
    entries: tuple[Entry, ...] = ()
    #: Entry files that exist but give no entry, in lookup order: they cannot be
    #: read (permission denied, a read error) or their text is not what the kernel
    #: writes. They are not in :attr:`entries`; the others are read all the same.
    unreadable: tuple[str, ...] = ()
    #: Why, for each of :attr:`unreadable`: ``(name, reason)`` pairs in the same
    #: order (``"permission denied"``, an ``strerror``, or what is wrong with the text).
    unreadable_reasons: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], source: str = "state document") -> State:
        """The state a ``status --json`` document describes (taken on another node, say).

        Reads ``procfs``, ``mounted``, ``enabled``, ``entries`` (each entry's
        ``name``, ``enabled``, ``type``, ``offset``, ``magic``, ``mask``,
        ``extension``, ``interpreter`` and ``flags``) and ``unreadable``;
        other keys are ignored, so ``install --dry-run --json`` documents,
        which carry the state their plan makes, are read too. Raises
        :class:`~binfmt.errors.InvalidValue` naming ``source`` and what is wrong.
        """
        if not isinstance(doc, Mapping):
            raise InvalidValue(source, doc, "must be a JSON object (binfmt status --json)")
        for key in ("mounted", "entries"):
            if key not in doc:
                raise InvalidValue(
                    source, sorted(doc)[:8], f"has no {key!r} key: not a status document"
                )
        mounted, enabled = doc["mounted"], doc.get("enabled")
        if not isinstance(mounted, bool) or not isinstance(enabled, (bool, type(None))):
            raise InvalidValue(
                f"{source} mounted/enabled", (mounted, enabled), "must be true or false"
            )
        items = doc["entries"]
        if not isinstance(items, list):
            raise InvalidValue(f"{source} entries", items, "must be a list")
        entries = tuple(_entry_from_document(item, source) for item in items)
        unreadable = doc.get("unreadable", [])
        if not isinstance(unreadable, list) or not all(isinstance(n, str) for n in unreadable):
            raise InvalidValue(f"{source} unreadable", unreadable, "must be a list of names")
        path = doc.get("procfs", DEFAULT_PATH)
        return cls(
            path=path if isinstance(path, str) else DEFAULT_PATH,
            mounted=mounted,
            enabled=enabled if mounted else None,
            entries=entries,
            unreadable=tuple(unreadable),
        )

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> Optional[Entry]:
        """The entry called ``name``, or ``None``."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        return None

    @property
    def names(self) -> tuple[str, ...]:
        """Entry names in lookup order."""
        return tuple(e.name for e in self.entries)

    def unreadable_reason(self, name: str) -> Optional[str]:
        """Why the entry file ``name`` gives no entry (``None`` if it is not unreadable).

        A name of :attr:`unreadable` given without a reason counts as
        ``"permission denied"``, the field's only meaning in earlier versions.
        """
        for other, reason in self.unreadable_reasons:
            if other == name:
                return reason
        return "permission denied" if name in self.unreadable else None

    def candidates(self, header: bytes, path: str = "") -> list[Entry]:
        """Every enabled entry that matches, in lookup order (the first one wins)."""
        if not self.enabled:
            return []
        return [e for e in self.entries if e.enabled and e.matches(header, path)]

    def lookup(self, header: bytes, path: str = "") -> Optional[Entry]:
        """The entry the kernel picks for a file, or ``None`` (then other binfmts run).

        The kernel takes the first enabled match, newest first, and never
        falls back to an older one, even if the winner's interpreter is missing.
        """
        if not self.enabled:
            return None
        for entry in self.entries:
            if entry.enabled and entry.matches(header, path):
                return entry
        return None


def _entry_from_document(item: object, source: str) -> Entry:
    """One entry of a status document (:func:`binfmt.report.entry_document`'s form)."""
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise InvalidValue(f"{source} entry", item, "must be an object with a name")
    name = item["name"]
    kind = item.get("type", "magic")
    if kind not in ("magic", "extension"):
        raise InvalidValue(f"{source} entry {name!r} type", kind, "must be magic or extension")
    interpreter = item.get("interpreter")
    if not isinstance(interpreter, str):
        raise InvalidValue(f"{source} entry {name!r} interpreter", interpreter, "must be a string")
    try:
        common: dict[str, Any] = {
            "flags": item.get("flags") or "",
            "enabled": bool(item.get("enabled", True)),
        }
        if kind == "extension":
            return Entry(
                name,
                interpreter,
                type=EntryType.EXTENSION,
                extension=item.get("extension"),
                **common,
            )
        mask = item.get("mask")
        return Entry(
            name,
            interpreter,
            offset=int(item.get("offset") or 0),
            magic=bytes.fromhex(item.get("magic") or ""),
            mask=bytes.fromhex(mask) if mask is not None else None,
            **common,
        )
    except InvalidValue:
        raise
    except (BinfmtError, TypeError, ValueError) as exc:
        raise InvalidValue(f"{source} entry", name, str(exc)) from None


class BinfmtMisc:
    """A binfmt_misc directory: ``/proc/sys/fs/binfmt_misc`` or any tree laid out like it.

    ``kernel`` gives the rules used to explain refusals and to emulate a
    fake tree (default: the running kernel's).
    """

    def __init__(self, path: str = DEFAULT_PATH, kernel: Optional[KernelRules] = None) -> None:
        #: The directory: the kernel's mount, or a fake tree.
        self.path = os.fspath(path)
        self._kernel = kernel
        self._fake: Optional[bool] = None  # decided once, when found mounted

    def __repr__(self) -> str:
        return f"BinfmtMisc({self.path!r})"

    @property
    def kernel(self) -> KernelRules:
        """The rules used to explain refusals and to emulate a fake tree."""
        if self._kernel is not None:
            return self._kernel
        from .kernel import KernelRules

        return KernelRules.running()

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # -- reading ------------------------------------------------------------

    def is_mounted(self) -> bool:
        """Whether binfmt_misc (or a fake) is at :attr:`path`: its ``status`` file exists."""
        return os.path.isfile(self._file("status"))

    def is_fake(self) -> bool:
        """Whether this is a fake tree (its ``register`` is readable; the kernel's is not)."""
        if self._fake is None:
            if not self.is_mounted():
                return False  # nothing there yet: decide when something is
            self._fake = is_fake_tree(self.path)
        return self._fake

    def state(self) -> State:
        """Read everything: mount, global switch, entries in lookup order.

        Entries that vanish between listing and reading are skipped. An entry
        file that cannot be read, or whose text is not what the kernel writes,
        is listed in :attr:`State.unreadable` with the reason in
        :attr:`State.unreadable_reasons`, and never hides the other entries.
        Raises :class:`~binfmt.errors.PermissionDenied` if the directory itself
        cannot be listed, :class:`~binfmt.errors.MalformedStatus` if the
        global ``status`` file is not ``enabled`` or ``disabled``.
        """
        if not self.is_mounted():
            return State(path=self.path, mounted=False)
        enabled = self.read_enabled()
        entries: list[Entry] = []
        unreadable: list[tuple[str, str]] = []
        for name in self._lookup_order():
            try:
                entries.append(self.read_entry(name))
            except FileNotFoundError:
                continue  # removed while we were reading: it is gone
            except PermissionDenied:
                unreadable.append((name, "permission denied"))
            except MalformedStatus as exc:
                unreadable.append((name, exc.problem))
            except OSError as exc:  # a directory, a read error: this one only
                unreadable.append((name, exc.strerror or str(exc)))
        return State(
            path=self.path,
            mounted=True,
            enabled=enabled,
            entries=tuple(entries),
            unreadable=tuple(name for name, _ in unreadable),
            unreadable_reasons=tuple(unreadable),
        )

    def require_mounted(self) -> None:
        """Raise :class:`~binfmt.errors.NotMounted` (with the fix) unless mounted."""
        if not self.is_mounted():
            raise NotMounted(self.path)

    def read_enabled(self) -> bool:
        """The global switch, from ``status``."""
        text = self._read("status")
        if text == b"enabled\n":
            return True
        if text == b"disabled\n":
            return False
        raise MalformedStatus(self._file("status"), f"{text!r} is neither 'enabled' nor 'disabled'")

    def read_entry(self, name: str) -> Entry:
        """Read and parse one entry file.

        Raises :class:`~binfmt.errors.MalformedStatus` naming the file if its
        text is not what the kernel writes, :class:`~binfmt.errors.PermissionDenied`
        if it cannot be opened, ``OSError`` for other read errors.
        """
        text = self._read(name)
        try:
            return Entry.from_status(name, text)
        except MalformedStatus as exc:
            raise MalformedStatus(self._file(name), exc.problem) from None

    def names(self) -> list[str]:
        """Entry names in lookup order (newest first)."""
        return self._lookup_order()

    def _lookup_order(self) -> list[str]:
        try:
            listing = [n for n in os.listdir(self.path) if n not in SPECIAL_FILES]
        except PermissionError:
            raise PermissionDenied(self.path, "list") from None
        except FileNotFoundError:
            raise NotMounted(self.path) from None
        if not self.is_fake():
            # The kernel lists entries newest first, which is its match order.
            return listing
        listed = read_order(self._file("register"))
        present = set(listing)
        # Each name once, where it is first listed (a hand-edited order file may repeat one).
        ordered = list(dict.fromkeys(n for n in listed if n in present))
        seen = set(ordered)
        return ordered + [n for n in listing if n not in seen]

    def _read(self, name: str) -> bytes:
        path = self._file(name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except PermissionError:
            raise PermissionDenied(path, "read") from None

    # -- writing ------------------------------------------------------------

    def register(self, entry: Union[Entry, str, bytes]) -> None:
        """Register an entry (or a raw register line) with one write.

        Raises :class:`~binfmt.errors.KernelError` with the kernel's errno and
        an explanation (EEXIST: the name is taken; ENOENT/EACCES with ``F``: the
        interpreter cannot be opened; EINVAL: the line was refused, with the
        reason when this library can tell it).
        """
        if isinstance(entry, Entry):
            line = entry.to_register(self.kernel)
            name: Optional[str] = entry.name
        else:
            line = text.decode(entry) if isinstance(entry, bytes) else entry
            name = _guess_name(line)
        data = text.encode(line)
        try:
            self._write("register", data)
        except OSError as exc:
            raise self._register_error(exc, line, name) from None

    def enable(self, name: str) -> None:
        """Turn one entry on (``1``)."""
        self._command(name, b"1", "enable")

    def disable(self, name: str) -> None:
        """Turn one entry off (``0``): it stays listed but never matches."""
        self._command(name, b"0", "disable")

    def remove(self, name: str) -> None:
        """Remove one entry (``-1``)."""
        self._command(name, b"-1", "remove")

    def set_enabled(self, enabled: bool) -> None:
        """Turn binfmt_misc as a whole on or off (``status``); entries keep their own state."""
        self._command("status", b"1" if enabled else b"0", "enable" if enabled else "disable")

    def remove_all(self) -> None:
        """Remove every entry, whoever made it (``-1`` to ``status``). Use with care."""
        self._command("status", b"-1", "remove all entries of")

    def _command(self, name: str, payload: bytes, action: str) -> None:
        if name in SPECIAL_FILES and name != "status":
            raise KernelError(errno.EINVAL, self._file(name), f"{name!r} is not an entry")
        try:
            self._write(name, payload)
        except FileNotFoundError:
            if not self.is_mounted():
                raise NotMounted(self.path) from None
            raise KernelError(
                errno.ENOENT, self._file(name), f"cannot {action} {name!r}: no such entry", name
            ) from None
        except PermissionError:
            raise PermissionDenied(self._file(name), f"{action}") from None
        except OSError as exc:
            raise KernelError(
                exc.errno or errno.EIO, self._file(name), f"cannot {action} {name!r}", name
            ) from None

    def _write(self, name: str, data: bytes) -> None:
        """Exactly one ``write(2)`` of ``data`` to ``name`` (emulated on a fake tree)."""
        path = self._file(name)
        if self.is_fake():
            FakeKernel(self.path, self.kernel).write(name, data)
            return
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):  # the kernel consumes whole writes or fails
            raise OSError(errno.EIO, f"short write to {path}: {written} of {len(data)} bytes")

    def _register_error(self, exc: OSError, line: str, name: Optional[str]) -> Exception:
        err = exc.errno or errno.EIO
        path = self._file("register")
        who = f"entry {name!r}" if name else "the register line"
        if err == errno.ENOENT and not self.is_mounted():
            return NotMounted(self.path)
        if err == errno.EACCES and not isinstance(exc, FakeRefusal) and _is_open_error(exc):
            return PermissionDenied(path, "write to")
        interpreter, flags = _guess_interpreter_and_flags(line)
        fixed = flags is not None and Flags.FIX_BINARY in flags
        if err == errno.EEXIST:
            msg = f"cannot register {who}: an entry with that name already exists"
            if fixed and self.kernel.releases_interpreter_on_failed_register is False:
                msg += (
                    f"; this kernel keeps {interpreter!r} from being written (ETXTBSY) "
                    "after such a failed registration, until it is evicted (in practice: reboot)"
                )
        elif err == errno.EINVAL:
            msg = f"cannot register {who}: the kernel refused the line"
            reason = _explain_refusal(line, self.kernel)
            if reason:
                msg += f" ({reason})"
        elif fixed and err in (errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.ELOOP):
            msg = (
                f"cannot register {who}: the F flag opens the interpreter {interpreter!r} now, "
                "and it is missing or not executable"
            )
            if self.kernel.opens_interpreter_first is not False:
                # The open comes before the name check: the name may be taken too.
                msg += " (the name may also be taken: this kernel checks the file first)"
        elif fixed and err == errno.ETXTBSY:
            msg = f"cannot register {who}: the interpreter {interpreter!r} is open for writing"
        elif err == errno.ENAMETOOLONG:
            msg = f"cannot register {who}: the name is longer than 255 bytes"
        else:
            msg = f"cannot register {who}"
        return KernelError(err, path, msg, name)


def _is_open_error(exc: OSError) -> bool:
    # os.open() failures carry the file name; the kernel's write() refusals do not.
    return exc.filename is not None


def _explain_refusal(line: str, kernel: KernelRules) -> Optional[str]:
    try:
        Entry.parse(line, kernel)
    except InvalidEntry as exc:
        return str(exc)
    return None


def _guess_name(line: str) -> Optional[str]:
    if len(line) < 2:
        return None
    name = line[1:].split(line[0], 1)[0]
    return name or None


def _guess_interpreter_and_flags(line: str) -> tuple[str, Optional[Flags]]:
    try:
        from .kernel import KernelRules

        entry = Entry.parse(line, KernelRules(flag_letters="POCFTLD"))
    except InvalidEntry:
        return "", None
    return entry.interpreter, entry.flags
