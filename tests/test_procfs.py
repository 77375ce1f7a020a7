"""Reading and writing binfmt_misc trees: kernel-produced fixtures, fakes and the real thing."""

from __future__ import annotations

import builtins
import errno
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binfmt import BinfmtMisc, Entry, KernelError, MalformedStatus, NotMounted, PermissionDenied
from binfmt.sandbox import Sandbox
from binfmt.testing import make_fake_procfs

TREES = Path(__file__).parent / "data" / "procfs"


def test_kernel_order_is_newest_first() -> None:
    """The 'order' tree (registered b, a, c, 10, 2) reads back newest first, as listed."""
    state = BinfmtMisc(str(TREES / "order")).state()
    assert state.names == ("2", "10", "c", "a", "b")


def test_spec_examples_tree() -> None:
    """The spec-examples tree: globally disabled, five entries with the recorded details."""
    state = BinfmtMisc(str(TREES / "spec-examples")).state()
    assert state.mounted and state.enabled is False
    assert state.names == ("m3", "e2", "e1", "m2", "m1")
    m2 = state.get("m2")
    assert m2 is not None
    assert (m2.offset, m2.magic, m2.mask, m2.flags.letters) == (3, b"\xff\xfe", b"\x0f\xf0", "POC")
    assert state.lookup(b"\xff") is None  # binfmt_misc is off: nothing is used


def test_mixed_registrants_tree() -> None:
    """Disabled entries are read as disabled and skipped by lookup."""
    state = BinfmtMisc(str(TREES / "mixed-registrants")).state()
    jar = state.get("jar")
    assert jar is not None and not jar.enabled
    assert state.lookup(b"", "/x/app.jar") is None
    assert state.get("with space") is not None
    assert state.lookup(b"MZ\x90\x00") == state.get("WSLInterop")


@pytest.mark.parametrize("tree", sorted(p.name for p in TREES.iterdir() if p.is_dir()))
def test_every_fixture_file_renders_back_byte_for_byte(tree: str) -> None:
    """Every kernel-written entry file parses and renders back to the same bytes."""
    misc = BinfmtMisc(str(TREES / tree))
    for name in misc.names():
        raw = (TREES / tree / name).read_bytes()
        assert misc.read_entry(name).to_status().encode("utf-8", "surrogateescape") == raw


def test_not_mounted_is_reported_not_raised_by_state(tmp_path: Path) -> None:
    """An empty directory reads as not mounted; require_mounted() says how to mount."""
    misc = BinfmtMisc(str(tmp_path))
    assert misc.state().mounted is False
    with pytest.raises(NotMounted, match="mount -t binfmt_misc binfmt_misc"):
        misc.require_mounted()
    with pytest.raises(NotMounted):
        misc.register(":x:M::AB::/i:")


def test_entry_that_vanishes_mid_read_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name listed but gone when read (removed concurrently) is left out, not an error."""
    misc = make_fake_procfs(tmp_path, [":a:M::AB::/i:", ":b:M::CD::/i:"])
    real = BinfmtMisc._lookup_order
    monkeypatch.setattr(BinfmtMisc, "_lookup_order", lambda self: ["ghost", *real(self)])
    assert misc.state().names == ("b", "a")


def test_unreadable_entry_is_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry file that cannot be read is reported in State.unreadable."""
    misc = make_fake_procfs(tmp_path, [":a:M::AB::/i:", ":b:M::CD::/i:"])
    _deny_open(monkeypatch, str(tmp_path / "a"))
    state = misc.state()
    assert state.names == ("b",)
    assert state.unreadable == ("a",)
    assert state.unreadable_reason("a") == "permission denied"


def test_unlistable_directory_is_permission_denied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory that cannot be listed raises PermissionDenied with the fix."""
    misc = make_fake_procfs(tmp_path)

    def deny(path: Any) -> list[str]:
        raise PermissionError(errno.EACCES, "denied", path)

    monkeypatch.setattr(os, "listdir", deny)
    with pytest.raises(PermissionDenied, match="run as root"):
        misc.state()


def test_malformed_entry_file_names_the_file(tmp_path: Path) -> None:
    """Reading a corrupt entry file raises MalformedStatus naming its path."""
    misc = make_fake_procfs(tmp_path, [":a:M::AB::/i:"])
    (tmp_path / "a").write_text("enabled\nnonsense\n")
    with pytest.raises(MalformedStatus, match=str(tmp_path / "a")):
        misc.read_entry("a")


def test_a_name_listed_twice_in_the_order_file_is_one_entry(tmp_path: Path) -> None:
    """A fake tree's register file that repeats a name still gives each entry once (fuzzer)."""
    misc = make_fake_procfs(tmp_path, [":a:M::AB::/i:", ":b:M::CD::/i:"])
    (tmp_path / "register").write_text("b\na\nb\na\n")
    assert misc.state().names == ("b", "a")


def test_one_bad_entry_file_never_hides_the_others(tmp_path: Path) -> None:
    """A corrupt entry file, a huge offset and a directory are each reported; the rest is read."""
    misc = make_fake_procfs(
        tmp_path, [":a:M::AB::/i:", ":b:M::CD::/i:", ":c:E::x::/i:", ":d:M::EF::/i:"]
    )
    (tmp_path / "a").write_text("enabled\nnonsense\n")
    (tmp_path / "c").write_text(
        "enabled\ninterpreter /i\nflags: \noffset " + "9" * 5000 + "\nmagic 41\n"
    )
    (tmp_path / "x").mkdir()
    state = misc.state()
    assert state.names == ("d", "b")
    assert set(state.unreadable) == {"a", "c", "x"}
    assert state.unreadable_reason("a") == "line 2 'nonsense' should start with 'interpreter '"
    assert "is not a decimal int" in (state.unreadable_reason("c") or "")
    assert len(state.unreadable_reason("c") or "") < 200
    assert state.unreadable_reason("x") == "Is a directory"
    assert state.unreadable_reason("d") is None


def _deny_open(monkeypatch: pytest.MonkeyPatch, denied: str) -> None:
    real_open: Callable[..., Any] = builtins.open

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(file) == denied:
            raise PermissionError(errno.EACCES, "denied", file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)


def test_fake_tree_copy_of_kernel_tree_reads_the_same(tmp_path: Path) -> None:
    """A copy of a kernel tree is a fake tree: reading it gives the same state."""
    shutil.copytree(TREES / "mixed-registrants", tmp_path / "t")
    copy = BinfmtMisc(str(tmp_path / "t")).state()
    original = BinfmtMisc(str(TREES / "mixed-registrants")).state()
    assert copy.entries == original.entries


# -- the fake kernel against the real one -----------------------------------------------

LINES = [
    ":a:M::AB::/bin/true:",
    ":b:M:2:\\x7f:\\xf0:/bin/true:P",
    ":a:E::exe::/bin/true:",
    ":c:E::jar::/usr/bin/jexec:OC",
    ":d:M::AB::/bin/true:F",
    ":e:M::AB::/nonexistent:F",
    ":f:M::A::/etc/passwd:F",
    ":g:M::\\xZZ::/bin/true:",
]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.sampled_from(LINES)),
        st.tuples(st.sampled_from(["enable", "disable", "remove"]), st.sampled_from("abcdz")),
        st.tuples(st.just("set_enabled"), st.booleans()),
        st.tuples(st.just("remove_all"), st.none()),
        st.tuples(st.just("raw"), st.sampled_from(["a", "status"]).map(lambda n: n)),
    ),
    max_size=12,
)


def _apply(misc: BinfmtMisc, op: str, arg: Any) -> object:
    try:
        if op == "raw":  # a command the kernel refuses
            misc._command(arg, b"2", "poke")
        elif op == "remove_all":
            misc.remove_all()
        else:
            getattr(misc, op)(arg)
    except KernelError as exc:
        return exc.errno_name
    return None


def _snapshot(misc: BinfmtMisc) -> tuple[object, ...]:
    state = misc.state()
    return state.enabled, tuple((e.name, e.to_status()) for e in state.entries)


@pytest.mark.kernel
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_fake_tree_behaves_like_the_kernel(
    binfmt_sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory, ops: list[Any]
) -> None:
    """Any sequence of writes gives the same errors and the same tree on a fake as in the kernel."""
    binfmt_sandbox.reset()
    real = binfmt_sandbox.misc
    fake = make_fake_procfs(tmp_path_factory.mktemp("fake"))
    for op, arg in ops:
        assert _apply(fake, op, arg) == _apply(real, op, arg), (op, arg)
        assert _snapshot(fake) == _snapshot(real), (op, arg)


@pytest.mark.kernel
def test_kernel_errors_explain_themselves(binfmt_sandbox: Sandbox) -> None:
    """Register refusals carry the errno and a message naming the entry and the cause."""
    misc = binfmt_sandbox.misc
    misc.register(Entry("dup", "/bin/true", magic=b"AB"))
    with pytest.raises(KernelError, match="'dup': an entry with that name already exists") as info:
        misc.register(Entry("dup", "/bin/true", magic=b"CD"))
    assert info.value.errno == errno.EEXIST
    with pytest.raises(KernelError, match="F flag opens the interpreter '/nope'") as info:
        misc.register(Entry("f", "/nope", magic=b"AB", flags="F"))
    assert info.value.errno == errno.ENOENT
    with pytest.raises(KernelError, match=r"refused the line \(invalid offset '0x1'") as info:
        misc.register(":o:M:0x1:AB::/i:")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(KernelError, match="no such entry"):
        misc.disable("missing")


def test_fake_tree_follows_the_kernels_errno_rules(tmp_path: Path) -> None:
    """A fake with pre-4.8 rules answers EINVAL where newer kernels say EEXIST or ENOENT."""
    from binfmt import KernelRules

    old = make_fake_procfs(
        tmp_path / "old", [":a:M::AB::/bin/true:"], kernel=KernelRules.for_release("4.4")
    )
    new = make_fake_procfs(
        tmp_path / "new", [":a:M::AB::/bin/true:"], kernel=KernelRules.for_release("6.18")
    )
    for misc, err in ((old, "EINVAL"), (new, "EEXIST")):
        with pytest.raises(KernelError) as info:
            misc.register(":a:M::CD::/bin/true:")
        assert info.value.errno_name == err
    # 5.12+: a duplicate name whose F interpreter is missing reports the open error first.
    with pytest.raises(KernelError) as info:
        new.register(":a:M::CD::/nonexistent:F")
    assert info.value.errno_name == "ENOENT"
    mid = make_fake_procfs(
        tmp_path / "mid", [":a:M::AB::/bin/true:"], kernel=KernelRules.for_release("5.4")
    )
    with pytest.raises(KernelError) as info:
        mid.register(":a:M::CD::/nonexistent:F")
    assert info.value.errno_name == "EEXIST"
    # The same order for a name longer than NAME_MAX (the dcache lookup refuses it).
    long = ":" + "x" * 300 + ":M::CD::/nonexistent:F"
    for misc, err in ((new, "ENOENT"), (mid, "ENAMETOOLONG")):
        with pytest.raises(KernelError) as info:
            misc.register(long)
        assert info.value.errno_name == err
    with pytest.raises(KernelError) as info:
        new.register(long.replace("/nonexistent", "/bin/true"))
    assert info.value.errno_name == "ENAMETOOLONG"
