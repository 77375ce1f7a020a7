"""Tiny x86-64 Linux programs for the differential exec tests: they print their argv.

The kernel tests compare the argv the prediction says a program receives with
the argv it really receives. :func:`reporter` is a static program of a few
dozen bytes that writes each of its arguments followed by a NUL byte to
stdout and exits 0: it needs no loader and no library, so it runs in any
root. :func:`dynamic` is a program whose ``PT_INTERP`` names a loader; give
it ``reporter(pie=True)`` as that loader and the loader prints the program's
argv (the kernel starts the loader with the program's stack), so that a
loader found (or not) inside a root is visible too.

The machine code, assembled from (Intel syntax)::

    _start: mov r12, [rsp]        ; argc
            lea r13, [rsp+8]      ; argv
    next:   test r12, r12
            jz done
            mov rsi, [r13]
            mov rdx, rsi
    len:    cmp byte ptr [rdx], 0
            je write
            inc rdx
            jmp len
    write:  sub rdx, rsi
            inc rdx               ; the NUL too
            mov eax, 1            ; write(1, arg, len + 1)
            mov edi, 1
            syscall
            add r13, 8
            dec r12
            jmp next
    done:   mov eax, 60           ; exit(0)
            xor edi, edi
            syscall
"""

from __future__ import annotations

import platform
import struct
from typing import Optional

CODE = bytes.fromhex(
    "4c8b24244c8d6c24084d85e4742c498b75004889f2803a00740548ffc2ebf64829f248ffc2"
    "b801000000bf010000000f054983c50849ffccebcfb83c00000031ff0f05"
)
_EHDR = 64
_PHDR = 56
_PT_LOAD, _PT_INTERP = 1, 3
_ET_EXEC, _ET_DYN = 2, 3
_BASE = 0x400000


def runs_here() -> bool:
    """Whether this machine runs these programs (x86-64 Linux)."""
    return platform.machine() == "x86_64" and platform.system() == "Linux"


def _elf(etype: int, base: int, interp: Optional[bytes]) -> bytes:
    phnum = 1 if interp is None else 2
    code_at = _EHDR + _PHDR * phnum
    interp_at = code_at + len(CODE)
    size = interp_at + (0 if interp is None else len(interp) + 1)
    header = b"\x7fELF\x02\x01\x01" + bytes(9)
    header += struct.pack(
        "<HHIQQQIHHHHHH", etype, 62, 1, base + code_at, _EHDR, 0, 0, _EHDR, _PHDR, phnum, 64, 0, 0
    )
    phdrs = b""
    if interp is not None:
        phdrs += struct.pack(
            "<IIQQQQQQ",
            _PT_INTERP,
            4,
            interp_at,
            base + interp_at,
            base + interp_at,
            len(interp) + 1,
            len(interp) + 1,
            1,
        )
    phdrs += struct.pack("<IIQQQQQQ", _PT_LOAD, 5, 0, base, base, size, size, 0x1000)
    body = header + phdrs + CODE + (b"" if interp is None else interp + b"\0")
    assert len(body) == size
    return body


def reporter(*, pie: bool = False) -> bytes:
    """The static argv printer: ``ET_EXEC`` at 0x400000, or position independent (``ET_DYN``)."""
    return _elf(_ET_DYN, 0, None) if pie else _elf(_ET_EXEC, _BASE, None)


def dynamic(loader: str) -> bytes:
    """A program whose ``PT_INTERP`` is ``loader`` (its own code never runs)."""
    return _elf(_ET_EXEC, _BASE, loader.encode("utf-8", "surrogateescape"))


def argv_of(stdout: bytes) -> list[str]:
    """The argv a reporter printed."""
    assert stdout.endswith(b"\0") or not stdout, stdout
    if not stdout:
        return []
    return [a.decode("utf-8", "surrogateescape") for a in stdout[:-1].split(b"\0")]
