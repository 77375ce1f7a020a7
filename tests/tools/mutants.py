"""Mutation testing of the rules: does some test fail when a rule is changed?

Usage, from the repository's root (the test layers of the modules' selections
must be able to run, the kernel ones included)::

    python tests/tools/mutants.py                    # every module, 2 jobs
    python tests/tools/mutants.py --module entry --jobs 1
    python tests/tools/mutants.py --list             # the mutants, not run
    python tests/tools/mutants.py --only 'prediction:_Loop...'

Each mutant changes one thing in one rule function of ``binfmt/entry.py``,
``binfmt/prediction.py``, ``binfmt/rootfs.py`` or ``binfmt/install.py`` (the
functions listed in :data:`RULES`): a comparison (``<`` and ``<=``, ``==`` and
``!=``, ``in`` and ``not in``, ``is`` and ``is not``), ``and``/``or``, a
``not`` dropped, an ``if`` condition negated, an integer constant one up or
down, ``True``/``False``, ``+``/``-``, ``break``/``continue``. Message text
(strings, f-strings, the arguments of the library's errors and findings) is
not mutated. The mutant is written into a copy of the repository and the
module's test selection (:data:`TESTS`, fast tests first) runs with ``-x``;
a failing test kills it. A mutant no test kills is a *survivor*: it needs a
test, or a reason in :data:`EXPLAINED` (an equivalent mutant, say). The run
prints every survivor and exits 1 if one is unexplained.

``mutmut`` (3.8) was tried first; it cannot copy this repository's test
data (dangling symlinks in the fake ``/proc`` trees), hence this script.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]

#: The rule functions mutated, per module (qualified names; a class name means all its methods).
RULES: dict[str, tuple[str, ...]] = {
    "entry": (
        "masked_key",
        "extension_of",
        "_implied",
        "Entry._check_extension_fields",
        "Entry._check_magic_fields",
        "Entry.check",
        "Entry.to_register",
        "Entry.matches",
        "_check_name",
        "_check_window",
        "_check_flag_combinations",
        "_choose_delimiter",
        "_shortest_letters",
        "_RegisterParser",
        "_unescape_hex",
        "_parse_status",
        "_entry_of",
        "_offset_line",
        "_hex_line",
    ),
    "prediction": (
        "parse_shebang",
        "_next_non_spacetab",
        "_next_terminator",
        "ExecModel._refusal",
        "ExecModel._handle",
        "ExecModel._via_binfmt_misc",
        "ExecModel._locate",
        "ExecModel._interpreter",
        "ExecModel._rewrite",
        "ExecModel._via_script",
        "ExecModel._via_elf",
        "ExecModel._check_loader",
        "_sets_execfd",
        "predict",
        "_path_inside",
    ),
    "rootfs": ("walk", "resolve"),
    "install": (
        "find_interpreter",
        "plan",
        "_plan_target",
        "_capture_findings",
        "_check_interpreter",
        "plan_entries",
        "plan_uninstall",
        "_check_unchanged",
        "_apply_step",
        "_registrable",
        "_roll_back",
        "apply",
    ),
}

#: The tests run against each module's mutants, fastest (and most likely to fail) first.
TESTS: dict[str, tuple[str, ...]] = {
    "entry": (
        "tests/test_entry.py",
        "tests/test_kernel_corpus.py",
        "tests/test_procfs.py",
        "tests/test_fuzz.py::test_corpus_replays",
        "tests/test_kernel_register_edges.py",
        "tests/test_kernel_differential.py",
        "tests/test_persist.py",
    ),
    "prediction": (
        "tests/test_predict_edges.py",
        "tests/test_predict.py",
        "tests/test_kernel_shebang.py",
        "tests/test_kernel_chains.py",
        "tests/test_predict_kernel.py",
        "tests/test_scan.py",
        "tests/test_one_model.py",
    ),
    "rootfs": (
        "tests/test_predict.py",
        "tests/test_predict_edges.py",
        "tests/test_kernel_chains.py",
        "tests/test_one_model.py",
    ),
    "install": (
        "tests/test_install.py",
        "tests/test_undo.py",
        "tests/test_host.py",
        "tests/test_node_profile.py",
        "tests/test_export_load.py",
        "tests/test_lock.py",
        "tests/test_hardening.py",
        "tests/test_cli_status.py",
        "tests/test_doctor.py",
        "tests/test_rollback.py",
    ),
}

#: Survivors that need no test, with the reason (an equivalent mutant, or a
#: guard that no input can reach). Keys are mutant ids as printed.
EXPLAINED: dict[str, str] = {
    # parse_shebang: the buffer starts with "#!" (tested first), so neither a
    # newline nor a NUL is at index 0 or 1, and they are never at one index.
    "prediction:parse_shebang#17: newline >= 0 -> newline > 0": "no newline at index 0",
    "prediction:parse_shebang#31: 0 -> 1 (line 179)": "no newline or NUL at index 0 or 1",
    "prediction:parse_shebang#33: nul < 0 -> nul <= 0": "no NUL at index 0",
    "prediction:parse_shebang#34: newline < nul -> newline <= nul": "a newline is not a NUL",
    "prediction:parse_shebang#44: 0 -> 1 (line 179)": "no newline at index 0 or 1",
    "prediction:_next_non_spacetab#5: 1 -> 0 (line 211)": (
        "the last index is never the answer that decides: for the name and the argument it "
        "holds the newline or NUL that ends the line (trailing blanks are trimmed, so a "
        "non-blank comes before it); in a full buffer a lone non-blank at byte 255 has no "
        "terminator after it, ENOEXEC either way (pinned against execve by the 255 stratum)"
    ),
    "prediction:ExecModel._interpreter#3: if self.many_files: negated": (
        "a memo for scans of many files: the answer is the same with or without it "
        "(tests/test_one_model.py checks that scan's memo key gives predict's verdicts)"
    ),
    "prediction:predict#13: root != '/' and inside.startswith('/') and (inside == exe...: "
    "And -> Or": (
        "only root '/' reaches the changed branch, where the file at the path and the exec "
        "path looked up from '/' are the same file"
    ),
    # _unescape_hex runs on fields the scan phase (scanarg) let through, where
    # every \x is followed by two hex digits: its one-digit and end-of-field
    # cases are the kernel's (string_unescape) but never reached from a line.
    "entry:_unescape_hex#45: 1 -> 0 (line 718)": "two hex digits always follow \\x",
    "entry:_unescape_hex#47: 1 -> 2 (line 718)": "two hex digits always follow \\x",
    "entry:_unescape_hex#52: 16 -> 17 (line 722)": "int(c, 17) == int(c, 16) for a hex digit",
    "entry:_unescape_hex#25: i + 1 < n -> i + 1 <= n": (
        "\\x last in a field cannot come through scanarg (two hex digits must follow)"
    ),
    "entry:_unescape_hex#36: i + 1: Add -> Sub": "as _unescape_hex#25",
    "entry:_unescape_hex#29: i < n and raw[i] in _HEX: And -> Or": "two hex digits follow \\x",
    "entry:_unescape_hex#32: 1 -> 2 (line 716)": (
        "a backslash second to last is kept either way: with the byte after it when that is "
        "not x (the same bytes), and \\x with one digit cannot come through scanarg"
    ),
    "entry:_unescape_hex#37: 16 -> 17 (line 719)": "int(c, 17) == int(c, 16) for a hex digit",
    "entry:_unescape_hex#39: i < n -> i <= n": "two hex digits follow \\x",
    "entry:_unescape_hex#44: 1 -> 2 (line 718)": (
        "the first and second digit after \\x are both hex digits: testing either is the same"
    ),
    "entry:_offset_line#8: int(digits) > INT_MAX -> int(digits) >= INT_MAX": (
        "an offset above 255 is refused afterwards by the window rule (MalformedStatus "
        "either way); the int limits only keep int() away from long texts"
    ),
    "entry:_offset_line#10: 0 < len(digits) <= _INT_DIGITS -> 0 < len(digits) < _INT_DIGITS": (
        "as _offset_line#8: ten digits are over 255"
    ),
    "entry:_parse_status#8: cut >= 0 -> cut > 0": (
        "a cut at 0 is an empty interpreter, which no kernel writes; a hand-made file with "
        "one is MalformedStatus either way (only the wording differs)"
    ),
    "entry:_parse_status#10: 0 -> 1 (line 785)": "as _parse_status#8",
    "entry:_parse_status#23: 1 -> 2 (line 793)": (
        "the byte after a found '\\nflags: ' is 'f': the next one cannot start there"
    ),
    "entry:_parse_status#27: 1 -> 2 (line 773)": "the first line is the same however many splits",
    "install:_roll_back#10: break -> continue (line 1123)": (
        "with no write left, another turn reads again and finds none again"
    ),
    "install:_roll_back#12: break -> continue (line 1138)": (
        "after a way back whose writes all succeeded, another turn finds nothing to write"
    ),
    "install:_plan_target#9: True -> False (line 280)": (
        "the default of this_machine: the one caller passes it"
    ),
    "rootfs:walk#1: True -> False (line 60)": (
        "the default of follow: every caller in the library passes it"
    ),
    "rootfs:resolve#3: False -> True (line 120)": (
        "whether a symlink is a directory is never asked: walk() follows every symlink that "
        "is not the last component, and asks is_dir only of those"
    ),
    "entry:masked_key#2: len(window) < size -> len(window) <= size": (
        "a full window is padded with zero bytes: nothing changes"
    ),
    # _RegisterParser: the buffer is padded with 8 delimiters as in
    # create_entry(), so a field always finds its delimiter, and the parser
    # reads at most six padding bytes (one per field); the guards that say
    # "missing its delimiter" and the padding's exact length are never decisive.
    "entry:_RegisterParser.__init__#4: 0 -> 1 (line 509)": (
        "the delimiter of an empty line is never used: the length rule refuses it first"
    ),
    "entry:_RegisterParser.__init__#8: 8 -> 9 (line 511)": "at most six padding bytes are read",
    "entry:_RegisterParser.__init__#9: 8 -> 7 (line 511)": "at most six padding bytes are read",
    "entry:_RegisterParser.field#7: 0 -> 1 (line 521)": (
        "with a NUL delimiter the NUL found is the delimiter itself (nul == end): the "
        "check never fires, so running it for delimiter 0 changes nothing"
    ),
    "entry:_RegisterParser.field#8: 0 -> -1 (line 521)": "as field#7",
    "entry:_RegisterParser.field#16: 1 -> 2 (line 525)": "end is never -1 (the padding)",
    "entry:_RegisterParser.field#17: 1 -> 0 (line 525)": "end is never -1 or 0 (the padding)",
    "entry:_RegisterParser.field#19: nul < end -> nul <= end": (
        "nul == end only for a NUL delimiter, where the check is not made"
    ),
    "entry:_RegisterParser.field#22: 1 -> 2 (line 523)": "end is never -1 (the padding)",
    "entry:_RegisterParser.field#23: 1 -> 0 (line 523)": "end is never -1 or 0 (the padding)",
    "entry:_RegisterParser.parse#33: 11 -> 10 (line 556)": (
        "no well-formed line is shorter than 11 bytes (':n:E::x::/:'): a 10-byte line is "
        "refused by another rule with the same EINVAL (the line-length stratum has them)"
    ),
    "entry:_RegisterParser.parse_offset#14: len(text) - len(text.lstrip(b'0123456789')): "
    "Sub -> Add": "digits == len(text) exactly when nothing follows the digits, either way",
    "entry:_RegisterParser.parse_offset#19: 0 -> 1 (line 660)": (
        "parse_offset is called only for a non-empty offset field"
    ),
    "entry:_RegisterParser.parse_offset#20: 0 -> -1 (line 660)": "as parse_offset#19",
    "entry:_RegisterParser.scanarg#12: s < len(buf) -> s <= len(buf)": (
        "the buffer ends in padding delimiters, so a backslash is never its last byte"
    ),
    "entry:_RegisterParser.scanarg#29: s >= len(buf) -> s > len(buf)": (
        "the hex digits after \\x are read at most two bytes into the padding, which has eight"
    ),
    "entry:_RegisterParser.scanarg#5: s >= len(buf) -> s > len(buf)": (
        "a scan always stops at a padding delimiter: one \\x escape can swallow two "
        "padding bytes (a hex-digit delimiter), leaving six"
    ),
}

_COMPARE_SWAP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
#: Calls whose arguments are messages, not rules.
_MESSAGE_CALLS = frozenset(
    {"InvalidEntry", "MalformedStatus", "Finding", "InstallError", "KernelError", "fail"}
)


class Mutant:
    def __init__(self, module: str, function: str, index: int, what: str, start: int, end: int,
                 text: str) -> None:  # fmt: skip
        self.module = module
        self.function = function
        self.what = what
        self.start, self.end, self.text = start, end, text
        self.id = f"{module}:{function}#{index}: {what}"


def _offsets(source: bytes) -> list[int]:
    """Byte offset of the start of each line (1-based: index 0 unused)."""
    starts = [0, 0]
    for i, b in enumerate(source):
        if b == 0x0A:
            starts.append(i + 1)
    return starts


def _span(node: ast.AST, lines: list[int]) -> tuple[int, int]:
    start = lines[node.lineno] + node.col_offset  # type: ignore[attr-defined]
    end = lines[node.end_lineno] + node.end_col_offset  # type: ignore[attr-defined]
    return start, end


def _functions(tree: ast.Module, wanted: tuple[str, ...]) -> Iterator[tuple[str, ast.AST]]:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in wanted:
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                name = f"{node.name}.{item.name}"
                if node.name in wanted or name in wanted:
                    yield name, item


def _skipped(node: ast.AST) -> set[int]:
    """ids of nodes inside messages: f-strings, docstrings, error and finding arguments."""
    out: set[int] = set()
    for sub in ast.walk(node):
        message = isinstance(sub, ast.JoinedStr)
        if isinstance(sub, ast.Call):
            func = sub.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            message = name in _MESSAGE_CALLS
        if message:
            out.update(id(n) for n in ast.walk(sub))
    return out


def mutants_of(module: str) -> list[Mutant]:
    path = REPO / "binfmt" / f"{module}.py"
    source = path.read_bytes()
    lines = _offsets(source)
    tree = ast.parse(source)
    found: list[Mutant] = []
    for name, func in _functions(tree, RULES[module]):
        skip = _skipped(func)
        index = 0

        def add(what: str, node: ast.AST, replacement: ast.AST, name: str = name) -> None:
            nonlocal index
            index += 1
            start, end = _span(node, lines)
            found.append(Mutant(module, name, index, what, start, end, ast.unparse(replacement)))

        for node in ast.walk(func):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Compare):
                for i, op in enumerate(node.ops):
                    swap = _COMPARE_SWAP.get(type(op))
                    if swap is None:
                        continue
                    ops = list(node.ops)
                    ops[i] = swap()
                    swapped = ast.Compare(node.left, ops, node.comparators)
                    add(f"{ast.unparse(node)} -> {ast.unparse(swapped)}", node, swapped)
            elif isinstance(node, ast.BoolOp):
                other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
                new = ast.BoolOp(other, node.values)
                add(
                    f"{_short(node)}: {type(node.op).__name__} -> {type(other).__name__}", node, new
                )
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                add(f"{_short(node)}: drop not", node, node.operand)
            elif isinstance(node, ast.If):
                test = node.test
                add(f"if {_short(test)}: negated", test, ast.UnaryOp(ast.Not(), test))
            elif isinstance(node, ast.Constant) and type(node.value) is int:
                for delta in (1, -1):
                    new_c = ast.Constant(node.value + delta)
                    add(f"{node.value} -> {node.value + delta} (line {node.lineno})", node, new_c)
            elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
                add(f"{node.value} -> {not node.value} (line {node.lineno})", node,
                    ast.Constant(not node.value))  # fmt: skip
            elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
                other_op = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
                flipped = ast.BinOp(node.left, other_op, node.right)
                add(f"{_short(node)}: {type(node.op).__name__} -> {type(other_op).__name__}",
                    node, flipped)  # fmt: skip
            elif isinstance(node, ast.Break):
                add(f"break -> continue (line {node.lineno})", node, ast.Continue())
    return found


def _short(node: ast.AST) -> str:
    text = ast.unparse(node).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _copy(base: Path) -> Path:
    work = Path(tempfile.mkdtemp(prefix="binfmt-mutants-", dir=base))
    archive = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    for rel in archive.stdout.decode().split("\0"):
        if not rel:
            continue
        src, dst = REPO / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.exists():
            shutil.copy2(src, dst)
    cache = REPO / "tests" / ".cache"
    if cache.exists():
        os.symlink(cache, work / "tests" / ".cache")
    check = subprocess.run(
        [sys.executable, "-c", "import binfmt; print(binfmt.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.strip().startswith(str(work)), check.stdout  # the copy is what runs
    return work


def run_one(work: Path, mutant: Mutant, timeout: float) -> tuple[str, float]:
    """'killed', 'timeout' or 'survived', and the seconds it took."""
    path = work / "binfmt" / f"{mutant.module}.py"
    original = (REPO / "binfmt" / f"{mutant.module}.py").read_bytes()
    path.write_bytes(original[: mutant.start] + mutant.text.encode() + original[mutant.end :])
    started = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header"]
    cmd += ["-o", "addopts=", *TESTS[mutant.module]]
    env = dict(os.environ, BINFMT_REQUIRE_ALL="1", PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, timeout=timeout, env=env)
        outcome = "survived" if proc.returncode == 0 else "killed"
    except subprocess.TimeoutExpired:
        outcome = "timeout"
    finally:
        path.write_bytes(original)
    return outcome, time.monotonic() - started


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", choices=sorted(RULES))
    parser.add_argument("--only", action="append", help="run only the mutants with these ids")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    modules = args.module or sorted(RULES)
    mutants = [m for module in modules for m in mutants_of(module)]
    if args.only:
        mutants = [m for m in mutants if m.id in args.only]
    if args.list:
        for m in mutants:
            print(m.id)
        print(f"{len(mutants)} mutants")
        return 0
    base = Path(tempfile.mkdtemp(prefix="binfmt-mutation-"))
    copies = [_copy(base) for _ in range(args.jobs)]
    free = list(copies)
    results: dict[str, str] = {}
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        pending: dict[concurrent.futures.Future[tuple[str, float]], tuple[Mutant, Path]] = {}
        queue = list(mutants)
        while queue or pending:
            while queue and free:
                mutant = queue.pop(0)
                work = free.pop()
                pending[pool.submit(run_one, work, mutant, args.timeout)] = (mutant, work)
            done, _ = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
            for future in done:
                mutant, work = pending.pop(future)
                free.append(work)
                outcome, seconds = future.result()
                results[mutant.id] = outcome
                mark = {"killed": ".", "timeout": "T", "survived": "S"}[outcome]
                print(f"{mark} {seconds:6.1f}s {mutant.id}", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    survivors = [m for m in mutants if results[m.id] == "survived"]
    unexplained = [m for m in survivors if m.id not in EXPLAINED]
    minutes = (time.monotonic() - started) / 60
    killed = len(mutants) - len(survivors)
    print(f"\n{len(mutants)} mutants, {killed} killed, {len(survivors)} survived")
    print(f"({len(unexplained)} unexplained) in {minutes:.0f} min")
    for m in survivors:
        print(f"  survivor {m.id}" + (f"  [{EXPLAINED[m.id]}]" if m.id in EXPLAINED else ""))
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
