"""ELF offsets at the edges of what off_t holds: a library error, never an OverflowError.

The fuzzer (tests/fuzz) found that a program-header or PT_INTERP offset near
2**63 made ``os.pread`` raise ``OverflowError`` in ``scan``; these pin it for
both readers and for predict()/scan() of such a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from binfmt import Host, State
from binfmt.elf import ElfHeader, InvalidElf, details, program_interpreter
from binfmt.prediction import predict
from binfmt.scan import FileResult, scan

from .test_elf import make_header, make_phdr

X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
EDGES = [2**63 - 1, 2**63 - 56, 2**63, 2**64 - 1, 2**62]
PT_INTERP = 3


def _files() -> list[tuple[str, bytes]]:
    files = []
    for offset in EDGES:
        # The program header table itself far away.
        files.append((f"phoff {offset}", make_header(64, "little", etype=3, phnum=1, phoff=offset)))
        # PT_INTERP far away.
        header = make_header(64, "little", etype=3, phnum=1)
        files.append((f"interp {offset}", header + make_phdr(64, "little", PT_INTERP, offset, 16)))
    return files


@pytest.mark.parametrize(("label", "data"), _files(), ids=[label for label, _ in _files()])
def test_offsets_near_two_to_the_63(tmp_path: Path, label: str, data: bytes) -> None:
    """Both readers refuse the file with InvalidElf; predict() and scan() judge it."""
    path = tmp_path / "file"
    path.write_bytes(data)
    path.chmod(0o755)
    header = ElfHeader.decode(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(InvalidElf):
            program_interpreter(fd, header)
    finally:
        os.close(fd)
    with pytest.raises(InvalidElf):
        details(str(path))
    state = State("/fake", True, True, ())
    verdict = predict(str(path), state=state, host=X86)
    assert verdict.errno == "ENOEXEC" and verdict.problem is not None
    assert verdict.problem.code == "invalid-elf"
    found: list[FileResult] = []
    scan(str(tmp_path), state=state, host=X86, on_result=found.append)
    assert [r.reason for r in found] == ["invalid-elf"]
