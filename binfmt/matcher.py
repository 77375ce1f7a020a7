"""A binfmt_misc state compiled for looking up many files quickly.

:meth:`State.lookup <binfmt.procfs.State.lookup>` tries every entry in turn,
which is what the kernel does and is fine for one file. A scan asks the same
question for hundreds of thousands of files, and nodes may carry dozens of
entries. Entries that compare the same bytes (same offset, size and mask —
QEMU's 34 targets use five masks) are grouped, and each group becomes one
dictionary keyed by the masked value of those bytes: a lookup costs one
integer mask and one dict probe per group, whatever the number of entries.
The winner is the one earliest in lookup order, as in the kernel.
"""

from __future__ import annotations

from typing import Optional

from .entry import Entry, EntryType
from .procfs import State

__all__ = ["Matcher"]


class Matcher:
    """``lookup(header, path)`` with the kernel's answer, for many files."""

    def __init__(self, state: State) -> None:
        self.entries: tuple[Entry, ...] = tuple(state.entries) if state.enabled else ()
        #: (offset, end, mask) → {masked value → rank of the first such entry}
        self._groups: dict[tuple[int, int, int], dict[int, int]] = {}
        self._extensions: dict[str, int] = {}
        for rank, entry in enumerate(self.entries):
            if not entry.enabled:
                continue
            if entry.type is EntryType.EXTENSION:
                assert entry.extension is not None
                self._extensions.setdefault(entry.extension, rank)
                continue
            size = entry.size
            mask = (
                int.from_bytes(entry.mask, "big")
                if entry.mask is not None
                else (1 << (8 * size)) - 1
            )
            value = int.from_bytes(entry.magic, "big") & mask
            table = self._groups.setdefault((entry.offset, entry.offset + size, mask), {})
            table.setdefault(value, rank)
        self._group_items = tuple(self._groups.items())

    @property
    def groups(self) -> int:
        """How many dictionary probes one lookup costs (plus one for extensions)."""
        return len(self._groups)

    def lookup(self, header: bytes, path: str = "") -> Optional[Entry]:
        """The entry the kernel picks for a file whose first bytes are ``header``."""
        best: Optional[int] = None
        length = len(header)
        for (start, end, mask), table in self._group_items:
            window = header[start:end]
            if end > length:  # the kernel's buffer is zero-filled past EOF
                window = window + bytes(end - start - len(window))
            rank = table.get(int.from_bytes(window, "big") & mask)
            if rank is not None and (best is None or rank < best):
                best = rank
        if self._extensions:
            dot = path.rfind(".")
            if dot >= 0:
                rank = self._extensions.get(path[dot + 1 :])
                if rank is not None and (best is None or rank < best):
                    best = rank
        return None if best is None else self.entries[best]
