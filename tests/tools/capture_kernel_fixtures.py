#!/usr/bin/env python3
"""Produce the kernel fixtures under tests/data/ from a real, private binfmt_misc.

Run as root (or with unprivileged user namespaces) on Linux 6.7+:

    python tests/tools/capture_kernel_fixtures.py [--trees NAME ...]

It writes

- ``tests/data/register-lines.jsonl``: for each register line of the corpus
  below, what the kernel answered: the errno name, or the entry file's bytes;
- ``tests/data/procfs/<scenario>/``: whole binfmt_misc trees, copied from the
  kernel after registering each scenario's lines in order, with ``register``
  listing the entries in the kernel's directory order (newest first) — the
  fake-tree convention of :mod:`binfmt.procfs`; ``tests/data/procfs/SOURCE``
  names the kernel that produced them.

Everything happens inside a :class:`binfmt.sandbox.Sandbox`; the host's
instance is never touched.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from binfmt.errors import KernelError  # noqa: E402
from binfmt.sandbox import Sandbox  # noqa: E402

DATA = HERE.parent / "data"
TRUE = "/bin/true"

# Register lines whose handling the spec measured (§1), plus neighbours.
CORPUS: list[bytes] = [
    # length bounds
    b":a:E::b::c",
    b":a:E::b::c:",
    b":" + b"n" * 1900 + b":E::b::/i:",
    b":" + b"n" * 1901 + b":E::b::/i:",
    b":" + b"n" * 200 + b":M::" + b"A" * 1700 + b"::/i:",
    b":" + b"n" * 200 + b":M::" + b"A" * 1701 + b"::/i:",
    # delimiters
    b"|pipe|M::AB::/bin/cat|",
    b" space M::AB::/bin/cat ",
    b"QqQM:QABQQ/bin/catQ",
    b"|pipe|M||AB||/bin/cat|",
    b" space M  AB  /bin/cat ",
    b"QqQMQQABQQ/bin/catQ",
    b"Zname with : colonZMZZABZZ/bin/catZ",
    b"\x00nul\x00M\x00\x00AB\x00\x00/bin/cat\x00",
    b"PpPMPPABPP/bin/catP\n",
    b"FfFMFFABFF/bin/catF\n",
    b"OoOMOOABOO/bin/catO",
    b"CcCMCCABCC/bin/catC\n",
    b"AaAMAA\\xAAAA/bin/catA",
    b"xnamexMxx\\x41xx/bin/catx",
    b"\nnl\nM\n\nAB\n\n/bin/cat\n",
    b"\nnl\nM\n\nAB\n\n/bin/cat\n\n",
    b"TtTMTTABTT/bin/catT",
    # name
    b"::M::AB::/bin/cat:",
    b":.:M::AB::/bin/cat:",
    b":..:M::AB::/bin/cat:",
    b":...:M::AB::/bin/cat:",
    b":a/b:M::AB::/bin/cat:",
    b":ab\x00cd:M::AB::/bin/cat:",
    b":a\\x41:M::AB::/bin/cat:",
    b":with space:M::AB::/bin/cat:",
    b":new\nline:M::AB::/bin/cat:",
    b":\xc3\xa9t\xc3\xa9:M::AB::/bin/cat:",
    b":\xff\xfe:M::AB::/bin/cat:",
    b":register:M::AB::/bin/cat:",
    b":status:M::AB::/bin/cat:",
    b":" + b"n" * 255 + b":M::AB::/bin/cat:",
    b":" + b"n" * 256 + b":M::AB::/bin/cat:",
    # type
    b":t:m::AB::/bin/cat:",
    b":t:X::AB::/bin/cat:",
    b":t:MM::AB::/bin/cat:",
    b":t:::AB::/bin/cat:",
    # offset
    b":o:M:+5:AB::/bin/cat:",
    b":o:M:007:AB::/bin/cat:",
    b":o:M:-0:AB::/bin/cat:",
    b":o:M:5\n:AB::/bin/cat:",
    b":o:M:-1:AB::/bin/cat:",
    b":o:M:0x10:AB::/bin/cat:",
    b":o:M: 5:AB::/bin/cat:",
    b":o:M:5 :AB::/bin/cat:",
    b":o:M:2147483648:AB::/bin/cat:",
    b":o:M:4294967295:AB::/bin/cat:",
    b":o:M:2147483647:A::/bin/cat:",
    b":o:M:+-5:AB::/bin/cat:",
    b":o:M:-+5:AB::/bin/cat:",
    b":o:M:\n:AB::/bin/cat:",
    b":o:M:1\x002:AB::/bin/cat:",
    b":o:M:254:AB::/bin/cat:",
    b":o:M:255:AB::/bin/cat:",
    b":o:M:255:A::/bin/cat:",
    b":o:M:256:A::/bin/cat:",
    b":o:M:127:AB::/bin/cat:",
    # magic escapes
    b":m:M::\\x7fELF\\x02::/bin/cat:",
    b":m:M::\\x4::/bin/cat:",
    b":m:M::\\x4g::/bin/cat:",
    b":m:M::\\xZZ::/bin/cat:",
    b":m:M::\\x::/bin/cat:",
    b":m:M::\\X41::/bin/cat:",
    b":m:M::A\\\\B::/bin/cat:",
    b":m:M::A\\nB::/bin/cat:",
    b":m:M::\\101::/bin/cat:",
    b":m:M::A\\::/bin/cat:",
    b":m:M::\\::/bin/cat:",
    b":m:M::\\\\x41::/bin/cat:",
    b":m:M::\\\\\\x41::/bin/cat:",
    b":m:M::A\\x00B::/bin/cat:",
    b":m:M::A\x00B::/bin/cat:",
    b":m:M::\x00AB::/bin/cat:",
    b":m:M::::/bin/cat:",
    b":m:M::" + b"\\x41" * 256 + b"::/bin/cat:",
    b":m:M::" + b"\\x41" * 257 + b"::/bin/cat:",
    b":m:M::" + b"A" * 256 + b"::/bin/cat:",
    b":m:M::" + b"A" * 257 + b"::/bin/cat:",
    b":m:M::\\xfF\\xAb::/bin/cat:",
    # mask
    b":k:M::\\xff\\xfe:\\x0f\\xf0:/usr/bin/x y:POC",
    b":k:M::\\x5f:\\xf0:/bin/cat:",
    b":k:M::AB:\\xff:/bin/cat:",
    b":k:M::AB:\\xff\\xff\\xff:/bin/cat:",
    b":k:M::AB:\\xff\x00\\xff:/bin/cat:",
    b":k:M::AB:\x00\\xff:/bin/cat:",
    b":k:M::AB:\\x00\\x00:/bin/cat:",
    b":k:M::AB:\\xzz:/bin/cat:",
    # extension entries
    b":e1:E::exe::/usr/bin/wine:",
    b":e2:E::x::/i:PC\n",
    b":e:E::\\x41::/i:",
    b":e:E::.dotted::/i:",
    b":e:E::a.b::/i:",
    b":e:E::a/b::/i:",
    b":e:E::::/i:",
    b":e:E::n\nl::/i:",
    b":e:E:abc:x::/i:",
    b":e:E:-1:x::/i:",
    b":e:E::x:\\xZZ:/i:",
    b":e:E::x\x00y::/i:",
    b":e:E::" + b"e" * 1000 + b"::/i:",
    # interpreter
    b":i:M::AB:::",
    b":i:M::AB::cat:",
    b":i:M::AB::/usr/bin/x y:",
    b":i:M::AB::/bin/x\nmagic 00:",
    b":i:M::AB::/bin/\x00cat:",
    b":i:M::AB::/" + b"p" * 1800 + b":",
    b":i:M::AB::/bin/cat",
    b":i:M::AB::/bin/cat\n",
    # flags
    b":f:M::AB::/bin/cat:PPP",
    b":f:M::AB::/bin/cat:FCOP",
    b":f:M::AB::/bin/cat:C",
    b":f:M::AB::/bin/cat:p",
    b":f:M::AB::/bin/cat:X",
    b":f:M::AB::/bin/cat:P ",
    b":f:M::AB::/bin/cat:P\n",
    b":f:M::AB::/bin/cat:P\n\n",
    b":f:M::AB::/bin/cat:P\r\n",
    b":f:M::AB::/bin/cat:P:",
    b":f:M::AB::/bin/cat:T",
    b":f:M::AB::/bin/cat:L",
    b":f:M::AB::/bin/cat:D",
    b":f:M::AB::/bin/cat:\nP",
    # F opens the interpreter at registration
    b":F1:M::AB::/bin/true:F",
    b":F2:M::AB::/nonexistent/qemu:F",
    b":F3:M::AB::/etc/passwd:F",
    b":F4:M::AB::/etc:F",
    b":F5:M::AB::/etc/passwd/x:F",
    b":F6:M::AB::relative-missing:F",
]

# Whole trees: lines registered in this order (oldest first).
SCENARIOS: dict[str, list[str]] = {
    "empty": [],
    "spec-examples": [
        ":m1:M::\\x7fELF\\x02::/bin/cat:",
        ":m2:M:3:\\xff\\xfe:\\x0f\\xf0:/usr/bin/x y:POC",
        ":e1:E::exe::/usr/bin/wine:",
        ":e2:E::x::/i:PC\n",
        ":m3:M::\\xff::" + TRUE + ":F",
    ],
    "order": [f":{n}:M::{n}::/bin/cat:" for n in ("b", "a", "c", "10", "2")],
    "mixed-registrants": [
        ":python3.11:M::\\xa7\\x0d\\x0d\\x0a::/usr/bin/python3.11:",
        ":jar:E::jar::/usr/bin/jexec:",
        ":WSLInterop:M::MZ::/init:P",
        ":qemu-aarch64:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00"
        "\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff"
        "\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/usr/bin/qemu-aarch64-static:F",
        ":rosetta:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02"
        "\\x00\\x3e\\x00:\\xff\\xff\\xff\\xff\\xff\\xfe\\xfe\\x00\\xff\\xff\\xff\\xff\\xff\\xff"
        "\\xff\\xff\\xfe\\xff\\xff\\xff:/mnt/lima-rosetta/rosetta:OC",
        ":with space:E::sp::/bin/cat:",
    ],
}


def _qemu_line(target: str, interpreter: str, flags: str, name: str = "") -> str:
    from binfmt import qemu

    entry = qemu.get(target).to_entry(interpreter, flags, name=name or None)
    return entry.to_register()


def _fex_line() -> str:
    """FEX's x86_64 entry: QEMU's magic, but bytes 8-10 (ABI version, padding) ignored."""
    from binfmt import Entry, qemu

    sig = qemu.get("x86_64")
    mask = bytearray(sig.mask)
    mask[8:11] = b"\0\0\0"
    return Entry(
        "FEX-x86_64", "/usr/bin/FEXInterpreter", magic=sig.magic, mask=bytes(mask), flags="OC"
    ).to_register()


# One problem of each kind `binfmt doctor` reports about entries (tests/test_doctor.py
# builds the matching fake root: which interpreters exist, are dynamic, writable …).
def _doctor_lines() -> list[str]:
    return [
        _qemu_line("aarch64", "/usr/bin/qemu-aarch64-static", "F"),  # healthy
        _qemu_line("arm", "/usr/bin/qemu-arm", ""),  # dynamic, no F
        _qemu_line("riscv64", "/opt/missing/qemu-riscv64-static", ""),  # missing
        _qemu_line("s390x", "/usr/local/bin/qemu-s390x-static", "OC"),  # writable with C
        _qemu_line("hppa", "/usr/bin/qemu-hppa-static", ""),  # not executable
        _qemu_line("mips64el", "/usr/bin/qemu-mips64el-static", "F"),  # gone since
        _qemu_line("x86_64", "/usr/bin/qemu-x86_64-static", "F"),  # captures the host's own
        _qemu_line("x86_64", "/mnt/rosetta/rosetta", "OC", name="rosetta"),  # same test
        _fex_line(),  # a wider mask for the same binaries: shadows both
        _qemu_line("ppc64le", "/usr/bin/qemu-ppc64le-static", "F"),
        _qemu_line("ppc64le", "/usr/bin/qemu-ppc64le-static", "F", name="ppc64le-again"),
    ]


# Debian's qemu-user-static lines, as its binfmt.d files have them.
DEBIAN_BINFMT_D = Path("/usr/lib/binfmt.d")
# Entries to disable after registration, per scenario; and global off.
DISABLE = {"mixed-registrants": ["jar"]}
GLOBAL_OFF = {"spec-examples"}


def _forty_lines() -> list[str]:
    """A busy node: QEMU's 34 targets (all x86_64 binaries' neighbours) and 6 other registrants.

    The start-up benchmark's tree (docs/performance.rst): 40 entries, as a node
    with qemu-user-static, language runtimes and WSL-like entries would have.
    """
    from binfmt import qemu

    lines = [_qemu_line(sig.name, TRUE, "F") for sig in qemu.SIGNATURES]
    lines += SCENARIOS["mixed-registrants"][:3]  # python3.11, jar, WSLInterop
    lines += [
        ":CLR:M::MZ::/usr/bin/mono:",
        ":wine:E::exe::/usr/bin/wine:",
        ":box64:M:0:\\x7fELF::/usr/bin/box64:",
    ]
    return lines


def _debian_lines() -> list[str]:
    lines = []
    for conf in sorted(DEBIAN_BINFMT_D.glob("qemu-*.conf")):
        for line in conf.read_text().splitlines():
            if line and not line.startswith(("#", ";")):
                lines.append(line)
    return lines


def capture_corpus(box: Sandbox) -> list[dict[str, object]]:
    misc = box.misc
    results = []
    for line in CORPUS:
        before = set(misc.names())
        record: dict[str, object] = {"line": base64.b64encode(line).decode()}
        try:
            misc.register(line)
        except KernelError as exc:
            record["errno"] = exc.errno_name
        else:
            new = [n for n in misc.names() if n not in before]
            assert len(new) == 1, new
            name = new[0]
            record["name"] = base64.b64encode(name.encode("utf-8", "surrogateescape")).decode()
            with open(os.path.join(misc.path, name), "rb") as f:
                record["status"] = base64.b64encode(f.read()).decode()
            misc.remove(name)
        results.append(record)
    return results


def capture_tree(box: Sandbox, name: str, lines: list[str], dest: Path) -> None:
    box.reset()
    misc = box.misc
    for line in lines:
        misc.register(line)
    for entry_name in DISABLE.get(name, []):
        misc.disable(entry_name)
    if name in GLOBAL_OFF:
        misc.set_enabled(False)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    order = os.listdir(misc.path)  # the kernel's directory order: newest first
    for entry_name in order:
        if entry_name in ("register", "status"):
            continue
        shutil.copyfile(os.path.join(misc.path, entry_name), dest / entry_name)
    shutil.copyfile(os.path.join(misc.path, "status"), dest / "status")
    names = [n for n in order if n not in ("register", "status")]
    (dest / "register").write_bytes(b"".join(n.encode() + b"\n" for n in names))
    box.reset()


def main() -> int:
    """Capture everything; ``--trees NAME …`` captures only those trees."""
    only = sys.argv[2:] if sys.argv[1:2] == ["--trees"] else None
    with Sandbox() as box:
        corpus = [] if only else capture_corpus(box)
        header = {"kernel": os.uname().release, "count": len(corpus)}
        if not only:
            with open(DATA / "register-lines.jsonl", "w") as f:
                f.write(json.dumps(header) + "\n")
                for record in corpus:
                    f.write(json.dumps(record, sort_keys=True) + "\n")
        scenarios = dict(SCENARIOS)
        scenarios["debian-qemu-user-static"] = _debian_lines()
        scenarios["doctor-problems"] = _doctor_lines()
        scenarios["forty-entries"] = _forty_lines()
        for name, lines in scenarios.items():
            if only is None or name in only:
                capture_tree(box, name, lines, DATA / "procfs" / name)
        source = DATA / "procfs" / "SOURCE"
        if only is None:
            source.write_text(
                f"Captured from a private binfmt_misc instance on Linux {os.uname().release}\n"
                "by tests/tools/capture_kernel_fixtures.py.\n"
            )
        else:
            with open(source, "a") as f:
                f.write(f"{', '.join(only)}: re-captured on Linux {os.uname().release}\n")
    accepted = sum(1 for r in corpus if "status" in r)
    print(f"{len(corpus)} lines ({accepted} accepted), {len(scenarios)} trees, kernel {header}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
