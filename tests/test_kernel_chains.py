"""Rewrite chains of depth 3 to 7: predict() against execve, in a private instance.

A chain is a file that the kernel rewrites to an interpreter, which it
rewrites again, and so on, until a native program runs (or the exec fails).
Each level is a ``#!`` script, a file matched by a magic entry, or a file
matched by an extension entry; entries carry ``P``, ``O``, ``C`` and ``F``
at random. Interpreters are named by absolute or relative paths, or through
symlinks with absolute or relative targets. The program at the end prints
its argv (:mod:`tests.argv_reporter`): a static one, or a dynamic one whose
loader is found through a symlink. Half the chains run inside a root
(``--rootfs``, the sandbox chroots there), started through a symlink.

Strata, each chain getting one fault (or none):

* ``none``; ``missing`` (a level names a file that is not there);
  ``nonexec`` (a level's file has no exec bit); ``noexec`` (a level's file
  is on a ``noexec`` tmpfs, mounted in the sandbox's mount namespace);
  ``dir`` (a level names a directory); ``disabled`` (a level's entry is
  disabled); ``global-off`` (binfmt_misc is off); ``loader-missing`` (the
  dynamic program's loader symlink dangles); ``F-deleted`` (the last entry's
  ``F`` interpreter is deleted after registration: the kernel runs the file it
  opened).

The prediction is asked through ``/proc/<helper>/root``, the sandbox's view
of the files, so that it sees the ``noexec`` mount the exec sees. The errno,
or the argv the final program received, must be the prediction's. The rewrite
limit (5 run, the 6th gives ``ELOOP``) and the deleted ``F`` interpreter are
also pinned by their own tests.
"""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import attrs
import pytest

from binfmt import Entry, EntryType, Host
from binfmt.prediction import Verdict, predict
from binfmt.sandbox import Sandbox
from binfmt.testing import require_or_skip

from .argv_reporter import argv_of, dynamic, reporter, runs_here

pytestmark = pytest.mark.kernel

SEED = int(os.environ.get("BINFMT_CHAIN_SEED", "10"))
REPEATS = int(os.environ.get("BINFMT_CHAIN_REPEATS", "3"))
FAULTS = (
    "none",
    "none",
    "missing",
    "nonexec",
    "noexec",
    "dir",
    "disabled",
    "global-off",
    "loader-missing",
    "F-deleted",
)
ARGV = ["ARGV0", "a1"]


@attrs.define
class World:
    """Where things are: the sandbox, its view of the files, the two bases."""

    box: Sandbox
    work: Path  # the host base (also what the helper sees)
    root: Path  # the root of --rootfs chains
    view: str  # /proc/<helper>/root

    def base(self, in_root: bool) -> str:
        """The base directory as the exec'ing process names it."""
        return "" if in_root else str(self.work)

    def host(self, in_root: bool, inside: str) -> str:
        """The file the exec'ing process calls ``inside``, as this process reaches it."""
        return self.view + (str(self.root) if in_root else "") + inside

    def registering(self, in_root: bool, inside: str) -> str:
        """The same file as this process (which registers F entries) names it."""
        return (str(self.root) if in_root else "") + inside


def _mount_noexec(box: Sandbox, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = box.run(["mount", "-t", "tmpfs", "-o", "noexec,size=8m", "tmpfs", str(path)])
    if result.returncode != 0:
        require_or_skip(f"cannot mount a noexec tmpfs in the sandbox: {result.stderr!r}")


@pytest.fixture(scope="module")
def world(
    _binfmt_session_sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """Reporter, loader and noexec mounts on the host side and inside a root."""
    if not runs_here():
        require_or_skip("the argv reporter is an x86-64 Linux program")
    box = _binfmt_session_sandbox
    box.reset()
    work = tmp_path_factory.mktemp("chains")
    root = work / "root"
    for base in (work, root):
        (base / "prog").mkdir(parents=True)
        (base / "lib").mkdir()
        (base / "prog/reporter").write_bytes(reporter())
        (base / "lib/ld.so").write_bytes(reporter(pie=True))
        (base / "prog/reporter").chmod(0o755)
        (base / "lib/ld.so").chmod(0o755)
        _mount_noexec(box, base / "nx")
    yield World(box, work, root, f"/proc/{box.pid}/root")
    for base in (work, root):
        box.run(["umount", str(base / "nx")])


# -- a chain ------------------------------------------------------------------------------


@attrs.define
class Level:
    kind: str  # "script", "magic", "ext"
    flags: str = ""
    enabled: bool = True
    mode: int = 0o755
    noexec: bool = False
    ref: str = "abs"  # how the level before names this one: abs, rel, link-abs, link-rel
    magic: bytes = b""
    offset: int = 0
    mask: Optional[bytes] = None


@attrs.define
class Chain:
    number: int
    in_root: bool
    fault: str
    levels: list[Level]
    final: str  # "static", "dynamic"
    loader_link: str  # "rel", "abs", "dangling"
    exec_link: str  # in a root: "rel" or "abs" symlink at /sN/bin/app; else "none"
    fault_at: int
    binfmt_on: bool = True
    f_deleted: bool = False


def chains() -> Iterator[Chain]:
    """Every chain, deterministically from SEED: depths 3-7 x host/root x faults."""
    rng = random.Random(SEED)
    number = 0
    for _ in range(REPEATS):
        for depth in range(3, 8):
            for in_root in (False, True):
                for fault in FAULTS:
                    number += 1
                    yield _chain(rng, number, depth, in_root, fault)


def _chain(rng: random.Random, number: int, depth: int, in_root: bool, fault: str) -> Chain:
    levels = []
    for k in range(depth):
        kind = rng.choice(["script", "script", "magic", "magic", "ext"])
        level = Level(kind, ref=rng.choice(["abs", "rel", "link-abs", "link-rel"]))
        if kind != "script":
            letters = [f for f in "POCF" if rng.random() < (0.4 if f in "PF" else 0.12)]
            level.flags = "".join(letters)
        if kind == "magic":
            level.offset = rng.choice([0, 0, 1, 7, 200])
            level.magic = b"\x01BFM" + bytes([number % 256, k])
            if rng.random() < 0.3:  # first byte always compared: no ELF or script matches
                level.mask = b"\xff" + bytes(rng.randrange(256) for _ in level.magic[1:])
        levels.append(level)
    chain = Chain(
        number,
        in_root,
        fault,
        levels,
        final=rng.choice(["static", "dynamic"]),
        loader_link=rng.choice(["rel", "abs"]),
        exec_link=rng.choice(["rel", "abs"]) if in_root else "none",
        fault_at=rng.randrange(depth),
    )
    target = levels[chain.fault_at]
    if fault == "nonexec":
        target.mode = 0o644
    elif fault == "noexec":
        target.noexec = True
    elif fault == "disabled":
        if target.kind == "script":
            target.kind = "ext"
        target.enabled = False
    elif fault == "global-off":
        chain.binfmt_on = False
        if all(level.kind == "script" for level in levels):
            target.kind = "magic"
            target.magic = b"\x01BFM" + bytes([number % 256, chain.fault_at])
    elif fault == "loader-missing":
        chain.final, chain.loader_link = "dynamic", "dangling"
    elif fault == "F-deleted":
        last = levels[-1]
        if last.kind == "script":
            last.kind = "magic"
            last.magic = b"\x01BFM" + bytes([number % 256, depth - 1])
        last.flags = "F" + ("P" if rng.random() < 0.5 else "")
        chain.final, chain.f_deleted = "static", True
    # F opens the interpreter at registration, from this process: it must be
    # there and executable, and not behind the sandbox's noexec mount.
    for k, level in enumerate(levels[:-1]):
        nxt = levels[k + 1]
        bad = nxt.mode != 0o755 or nxt.noexec
        bad = bad or (k == chain.fault_at and fault in ("missing", "dir"))
        if "F" in level.flags and bad:
            level.flags = level.flags.replace("F", "")
    if fault in ("missing", "dir") and chain.fault_at == depth - 1:
        levels[-1].flags = levels[-1].flags.replace("F", "")
    return chain


@attrs.frozen
class Built:
    exec_inside: str  # the path execve gets
    exec_host: str  # the same file for predict()
    cwd: str
    entries: tuple[Entry, ...]
    disabled: tuple[str, ...]
    delete_after: Optional[str]


def build(world: World, chain: Chain) -> Built:
    """Write the chain's files (through the sandbox's view) and make its entries."""
    R = chain.in_root
    base = world.base(R)
    sdir = f"{base}/s{chain.number}"
    nxdir = f"{base}/nx/s{chain.number}"

    def host(inside: str) -> str:
        return world.host(R, inside)

    for d in (sdir, nxdir, f"{sdir}/bin", f"{sdir}/dir"):
        os.makedirs(host(d), exist_ok=True)

    def file_of(k: int) -> str:
        level = chain.levels[k]
        name = f"f{k}.e{k}" if level.kind == "ext" else f"f{k}"
        return f"{nxdir if level.noexec else sdir}/{name}"

    # The final program.
    if chain.final == "static":
        final = f"{base}/prog/reporter"
    else:
        final = f"{sdir}/app"
        loader = f"{sdir}/l64/ld.so"
        with open(host(final), "wb") as f:
            f.write(dynamic(loader))
        os.chmod(host(final), 0o755)
        link = {"rel": "../lib", "abs": f"{base}/lib", "dangling": f"{base}/nolib"}
        os.symlink(link[chain.loader_link], host(f"{sdir}/l64"))
    delete_after = None
    if chain.f_deleted:
        final = f"{sdir}/fdel"
        shutil.copyfile(world.host(R, f"{base}/prog/reporter"), host(final))
        os.chmod(host(final), 0o755)
        delete_after = host(final)

    def reference(k: int, target: str) -> str:
        """How level k names ``target`` (the next level's file, or the final program)."""
        level = chain.levels[k]
        fixed = "F" in level.flags
        if k == chain.fault_at and chain.fault == "missing":
            return f"{sdir}/not-there"
        if k == chain.fault_at and chain.fault == "dir":
            return f"{sdir}/dir"
        style = level.ref
        nxt = chain.levels[k + 1] if k + 1 < len(chain.levels) else None
        suffix = f".e{k + 1}" if nxt is not None and nxt.kind == "ext" else ""
        if fixed and (style == "rel" or (R and style == "link-abs")):
            # F opens the interpreter now, from this process: a relative path
            # would be looked up from its cwd, an absolute link target outside the root.
            style = "abs"
        if style == "abs" or (chain.f_deleted and k == len(chain.levels) - 1):
            return target
        if style == "rel":
            return os.path.relpath(target, sdir)
        link = f"{sdir}/l{k}{suffix}"
        if style == "link-abs":
            os.symlink(target, host(link))
        else:
            os.symlink(os.path.relpath(target, sdir), host(link))
        return link

    entries = []
    disabled = []
    for k, level in enumerate(chain.levels):
        target = file_of(k + 1) if k + 1 < len(chain.levels) else final
        ref = reference(k, target)
        if level.kind != "script" and "F" in level.flags and R and ref.startswith("/"):
            ref = world.registering(R, ref)  # F: a path of the registering process
        name = f"c{chain.number}-{k}"
        if level.kind == "script":
            content = b"#!" + ref.encode() + b"\n"
        elif level.kind == "magic":
            content = bytes(level.offset) + level.magic + b"\n"
            entries.append(
                Entry(
                    name,
                    ref,
                    offset=level.offset,
                    magic=level.magic,
                    mask=level.mask,
                    flags=level.flags,
                )
            )
        else:
            content = b"extension level\n"
            entries.append(
                Entry(name, ref, type=EntryType.EXTENSION, extension=f"e{k}", flags=level.flags)
            )
        if level.kind != "script" and not level.enabled:
            disabled.append(name)
        path = host(file_of(k))
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, level.mode)
    first = file_of(0)
    if R:
        app = f"{sdir}/bin/app" + (".e0" if chain.levels[0].kind == "ext" else "")
        target = first if chain.exec_link == "abs" else os.path.relpath(first, f"{sdir}/bin")
        os.symlink(target, host(app))
        first = app
    return Built(first, host(first), sdir, tuple(entries), tuple(disabled), delete_after)


def final_argv(verdict: Verdict) -> Optional[tuple[str, ...]]:
    while verdict.next is not None:
        verdict = verdict.next
    return verdict.argv


def depth_of(verdict: Verdict) -> int:
    return 0 if verdict.next is None else 1 + depth_of(verdict.next)


def run_chain(world: World, chain: Chain) -> tuple[tuple[object, ...], tuple[object, ...], Verdict]:
    """Set the chain up, exec it, predict it: (kernel, prediction, verdict)."""
    box = world.box
    box.reset()
    built = build(world, chain)
    misc = box.misc
    # Entries registered in a random order: the newest wins where two match.
    order = list(built.entries)
    random.Random(chain.number).shuffle(order)
    for entry in order:
        misc.register(entry)
    for name in built.disabled:
        misc.disable(name)
    if not chain.binfmt_on:
        misc.set_enabled(False)
    if built.delete_after:
        os.unlink(built.delete_after)
    state = misc.state()
    root = str(world.root) if chain.in_root else None
    result = box.run(ARGV, executable=built.exec_inside, cwd=built.cwd, root=root, timeout=20)
    assert not result.timed_out, chain
    verdict = predict(
        built.exec_host,
        state=state,
        host=Host.detect(),
        rootfs=world.view + (root or ""),
        argv=ARGV,
        cwd=built.cwd,
    )
    got = (result.errno, None if result.errno else tuple(argv_of(result.stdout)))
    want = (verdict.errno, None if verdict.errno else final_argv(verdict))
    return got, want, verdict


@pytest.mark.timeout(600)
def test_rewrite_chains_agree_with_execve(world: World) -> None:
    """Depth 3-7, every fault, host and root: the errno or final argv is the prediction's."""
    strata: Counter[str] = Counter()
    outcomes: Counter[tuple[str, str]] = Counter()
    features: Counter[str] = Counter()
    failures = []
    try:
        for chain in chains():
            got, want, verdict = run_chain(world, chain)
            if got != want:
                failures.append((chain, got, want))
            outcome = str(got[0] or "runs")
            strata[chain.fault] += 1
            outcomes[(chain.fault, outcome)] += 1
            depth = len(chain.levels)
            features[f"depth {depth} {'runs' if got[0] is None else got[0]}"] += 1
            features["in a root" if chain.in_root else "on the host"] += 1
            for level in chain.levels:
                features[f"level {level.kind}"] += 1
                features[f"reference {level.ref}"] += 1
                for letter in level.flags:
                    features[f"flag {letter}"] += 1
            if chain.in_root:
                features[f"exec path symlink {chain.exec_link}"] += 1
            if chain.final == "dynamic":
                features[f"loader symlink {chain.loader_link}"] += 1
            for code in {f.code for f in verdict.findings}:
                features[f"finding {code}"] += 1
            features[f"rewrites predicted {depth_of(verdict)}"] += 1
    finally:
        world.box.reset()
    total = sum(strata.values())
    print(f"\nchains: {total}, per fault and kernel outcome:")
    for (fault, outcome), n in sorted(outcomes.items()):
        print(f"  {fault:15} {outcome:8} {n:4}")
    print("features:")
    for feature, n in sorted(features.items()):
        print(f"  {feature:40} {n:4}")
    assert not failures, failures[:3]
    # Each fault does what it is there for, at least sometimes.
    for fault, outcome in (
        ("none", "runs"),
        ("missing", "ENOENT"),
        ("nonexec", "EACCES"),
        ("noexec", "EACCES"),
        ("dir", "EACCES"),
        ("disabled", "ENOEXEC"),
        ("global-off", "ENOEXEC"),
        ("loader-missing", "ENOENT"),
        ("F-deleted", "runs"),
    ):
        assert outcomes[(fault, outcome)] >= 1, (fault, outcome, outcomes)
    for needed in (
        "depth 3 runs",
        "depth 5 runs",
        "depth 6 ELOOP",
        "depth 7 ELOOP",
        "finding open-binary-rewrite",
        "finding interpreter-gone",
        "loader symlink rel",
        "loader symlink abs",
        "exec path symlink rel",
        "exec path symlink abs",
    ):
        assert features[needed] >= 1, (needed, features)


# -- pinned rules -------------------------------------------------------------------------


@pytest.mark.parametrize("kinds", ["script", "magic", "ext", "mixed"])
def test_the_rewrite_limit(world: World, kinds: str) -> None:
    """Five rewrites run, the sixth gives ELOOP, in the kernel and in the prediction."""
    results = {}
    rng = random.Random(kinds)
    for depth in range(1, 8):
        levels = []
        for k in range(depth):
            kind = rng.choice(["script", "magic", "ext"]) if kinds == "mixed" else kinds
            magic = b"\x01BFL" + bytes([depth, k])
            levels.append(Level(kind, magic=magic if kind == "magic" else b""))
        number = 9000 + 10 * depth + ["script", "magic", "ext", "mixed"].index(kinds)
        chain = Chain(number, False, "none", levels, "static", "abs", "none", 0)
        got, want, _ = run_chain(world, chain)
        assert got == want, (depth, got, want)
        results[depth] = got[0] or "runs"
    world.box.reset()
    assert results == {
        1: "runs",
        2: "runs",
        3: "runs",
        4: "runs",
        5: "runs",
        6: "ELOOP",
        7: "ELOOP",
    }


@pytest.mark.parametrize("flags", ["F", "PF", "OF"])
def test_a_deleted_f_interpreter_still_runs(world: World, flags: str) -> None:
    """The kernel runs the F interpreter it opened at registration, though the file is gone."""
    box = world.box
    box.reset()
    d = world.work / f"fdel-{flags}"
    d.mkdir()
    interp = d / "interp"
    shutil.copyfile(world.work / "prog/reporter", interp)
    interp.chmod(0o755)
    target = d / "file"
    target.write_bytes(b"\x01BFDEL\n")
    target.chmod(0o755)
    box.misc.register(Entry("fdel", str(interp), magic=b"\x01BFDEL", flags=flags))
    interp.unlink()
    try:
        result = box.run(ARGV, executable=str(target))
        state = box.misc.state()
    finally:
        box.reset()
    verdict = predict(str(target), state=state, host=Host.detect(), argv=ARGV)
    keep = ["ARGV0"] if "P" in flags else []
    assert argv_of(result.stdout) == [str(interp), str(target), *keep, "a1"]
    assert verdict.errno is None and verdict.runs
    assert verdict.argv == tuple(argv_of(result.stdout))
    assert [f.code for f in verdict.findings] == ["interpreter-gone"]


@pytest.mark.parametrize("where", ["path", "interpreter"])
def test_the_symlink_limit(world: World, where: str) -> None:
    """40 symlinks in one lookup are followed, the 41st gives ELOOP (MAXSYMLINKS)."""
    box = world.box
    box.reset()
    d = world.work / f"links-{where}"
    d.mkdir()
    results = {}
    for count in (39, 40, 41):
        chain = d / str(count)
        chain.mkdir()
        target = world.work / "prog/reporter"
        for k in range(count, 0, -1):  # l1 -> l2 -> ... -> l<count> -> the reporter
            os.symlink(str(target), chain / f"l{k}")
            target = chain / f"l{k}"
        start = chain / "l1"
        if where == "interpreter":
            script = chain / "script"
            script.write_bytes(b"#!" + str(start).encode() + b"\n")
            script.chmod(0o755)
            start = script
        result = box.run(ARGV, executable=str(start))
        verdict = predict(str(start), state=box.misc.state(), host=Host.detect(), argv=ARGV)
        got = result.errno or "runs"
        assert got == (verdict.errno or "runs"), (count, result, verdict)
        results[count] = got
    assert results == {39: "runs", 40: "runs", 41: "ELOOP"}


def test_exec_bits(world: World) -> None:
    """Any one exec bit lets root exec a file, no exec bit refuses it (EACCES)."""
    box = world.box
    box.reset()
    d = world.work / "modes"
    d.mkdir()
    results = {}
    for mode in (0o100, 0o010, 0o001, 0o002, 0o004, 0o200, 0o000, 0o7666, 0o777):
        path = d / f"m{mode:o}"
        path.write_bytes(reporter())
        path.chmod(mode)
        result = box.run(ARGV, executable=str(path))
        verdict = predict(str(path), state=box.misc.state(), host=Host.detect(), argv=ARGV)
        assert (result.errno or "runs") == (verdict.errno or "runs"), (oct(mode), result, verdict)
        results[mode] = result.errno or "runs"
    runs = {mode for mode, got in results.items() if got == "runs"}
    assert runs == {0o100, 0o010, 0o001, 0o777}, results
