"""Text that is really bytes: the one convention for kernel and file-system strings.

Entry names, interpreter paths, extensions, file names and ``#!`` lines are
bytes to the kernel. The library holds them as ``str``: the bytes decoded as
UTF-8 with ``surrogateescape``, so valid UTF-8 reads naturally and every other
byte ``0xXX`` becomes the lone surrogate ``U+DCXX`` and survives the round
trip. :func:`encode` is the way back; a ``str`` holding another lone
surrogate (which no byte string decodes to) is not bytes and is refused.
"""

from __future__ import annotations

__all__ = ["decode", "encodable", "encode"]


def decode(raw: bytes) -> str:
    """Bytes as the library holds them: UTF-8, undecodable bytes as ``U+DC80``..``U+DCFF``."""
    return raw.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    """The bytes ``text`` stands for; raises ``UnicodeEncodeError`` if it is not bytes."""
    return text.encode("utf-8", "surrogateescape")


def encodable(text: str) -> bool:
    """Whether ``text`` stands for bytes (no lone surrogate outside ``U+DC80``..``U+DCFF``)."""
    try:
        encode(text)
    except UnicodeEncodeError:
        return False
    return True
