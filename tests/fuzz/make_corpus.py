"""Write the seed corpus of every fuzz target into tests/fuzz/corpus/<target>/.

Run from the repository's root: ``python -m tests.fuzz.make_corpus``. Seeds
come from the test data (recorded kernel register lines and trees, Debian's
format files and binfmt.d files, QEMU's table) and from the boundary cases of
the kernel tests; each file is named after the SHA-1 of its content, as
libFuzzer names what it adds. Inputs a longer fuzzing run found worth
keeping can be copied in beside them (``tests/fuzz/corpus/<target>/``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path

from binfmt import Entry, EntryType, qemu
from binfmt.binfmt_d import render_binfmt_d
from binfmt.text import encode

from ..argv_reporter import dynamic, reporter
from ..test_elf import make_elf
from ..test_kernel_shebang import cases as shebang_cases

HERE = Path(__file__).parent
DATA = HERE.parent / "data"
CORPUS = HERE / "corpus"
PT_INTERP, PT_DYNAMIC = 3, 2


def _write(target: str, seeds: Iterable[bytes]) -> int:
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for seed in seeds:
        name = hashlib.sha1(seed).hexdigest()
        path = directory / name
        if not path.exists():
            path.write_bytes(seed)
            count += 1
    return count


def _entries() -> list[Entry]:
    entries = [sig.to_entry(f"/usr/bin/qemu-{sig.name}-static", "F") for sig in qemu.SIGNATURES]
    entries += [
        Entry("jar", "/usr/bin/jexec", type=EntryType.EXTENSION, extension="jar"),
        Entry("nl", "/bin/x\nflags: P", magic=b"AB", flags="POC"),
        Entry("nl-ext", "/i", type=EntryType.EXTENSION, extension="x\nflags: \nextension .y"),
        Entry("off", "/i", offset=254, magic=b"\x00\xff", mask=b"\x0f\xf0"),
        Entry("dis", "/i", magic=b"#!", enabled=False),
    ]
    return entries


def register_lines() -> list[bytes]:
    lines = [json.loads(line) for line in (DATA / "register-lines.jsonl").read_text().splitlines()]
    seeds = [b"\x00" + base64.b64decode(record["line"]) for record in lines[1:]]
    for i, entry in enumerate(_entries()):
        seeds.append(bytes([i % 4]) + encode(entry.to_register()))
    return seeds


def entry_files() -> list[bytes]:
    seeds = [encode(entry.to_status()) for entry in _entries()]
    for path in sorted((DATA / "procfs").rglob("*")):
        if path.is_file() and path.name not in ("register", "status", "SOURCE"):
            seeds.append(path.read_bytes())
    return seeds[:80]


def procfs_trees() -> list[bytes]:
    seeds = []
    for tree in sorted((DATA / "procfs").iterdir()):
        if not tree.is_dir():
            continue
        parts = [(tree / "status").read_bytes(), (tree / "register").read_bytes()]
        for path in sorted(tree.iterdir())[:8]:
            if path.name not in ("register", "status"):
                parts.append(path.name.encode() + b"=" + path.read_bytes())
        seeds.append(b"\0\0".join(parts))
    return seeds


def binfmt_d_files() -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted((DATA / "persist").rglob("*.conf"))]
    entries = [e for e in _entries() if "\n" not in e.interpreter + (e.extension or "")]
    seeds.append(encode(render_binfmt_d(entries[:6], comment="seed\n; two")))
    seeds.append(b"# comment\n; other\n\n  :a:M::AB::/i:F  \r:b:E::x::/i:\0:c:M:3:\\x41::/i:")
    return [b"\x00" + seed for seed in seeds]


def debian_files() -> list[bytes]:
    return [p.read_bytes() for p in sorted((DATA / "persist").rglob("usr/share/binfmts/*"))]


def elf_files() -> list[bytes]:
    seeds = [reporter(), reporter(pie=True), dynamic("/lib/ld-linux.so.2")]
    for sig in qemu.SIGNATURES:
        seeds.append(sig.header(2))
    seeds.append(make_elf([(PT_INTERP, b"/lib/ld-linux-aarch64.so.1\0")], machine=183))
    seeds.append(make_elf([(PT_INTERP, b"/lib/ld.so\0")], elf_class=32, machine=3))
    seeds.append(make_elf([(PT_DYNAMIC, bytes(32)), (PT_INTERP, b"x\0")]))
    return seeds


def shebang_lines() -> list[bytes]:
    rng = random.Random(10)
    cases = [content for _, content in shebang_cases()]
    return [b"\x00" + c for c in rng.sample(cases, 60)] + [b"\x80#!/bin/sh -e\n"]


def exec_files() -> list[bytes]:
    return [
        *elf_files()[:6],
        b"#!/bin/sh\n",
        b"#!/fuzz/interp arg\n",
        b"#!\n",
        b"#!   ",
        b"x#!/fuzz\n",
        b"#!/bin/tr\0ue\n",
        b"",
    ]


SEEDS = {
    "register_line": register_lines,
    "entry_file": entry_files,
    "procfs_tree": procfs_trees,
    "binfmt_d": binfmt_d_files,
    "debian_format": debian_files,
    "elf_header": elf_files,
    "elf_file": elf_files,
    "shebang_line": shebang_lines,
    "exec_file": exec_files,
}


def main() -> None:
    for target, make in SEEDS.items():
        print(f"{target}: {_write(target, make())} new seeds")


if __name__ == "__main__":
    main()
