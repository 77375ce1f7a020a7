"""Undo planning on fake trees: random states and plans, a write failed at every position.

The real-kernel version is ``test_rollback.py`` (every position of real
commands under strace); here Hypothesis draws many more states — entries
that overlap or not, disabled ones, ``F`` entries whose file is fine, deleted
or replaced — and plans, and fails each write in turn in the procfs layer.
Each outcome must be exact ("as it was before" and equal), or announced
where the plan said so.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import attrs
import pytest
from hypothesis import HealthCheck, event, example, given, settings, target
from hypothesis import strategies as st

from binfmt import BinfmtMisc, Entry, EntryType, KernelRules
from binfmt.errors import InstallError, LockTimeout
from binfmt.install import Outcome, Plan, apply, carry_out, plan_entries, plan_uninstall
from binfmt.report import outcome_text
from binfmt.testing import make_fake_procfs

K = KernelRules.for_release("6.18")
#: Magics chosen so that some overlap (a prefix of another) and some do not.
MAGICS = (b"\x01A", b"\x01B", b"\x01", b"\x02A")


def _entry(i: int, kind: int, fixed: bool, enabled: bool, interp: str) -> Entry:
    if kind == len(MAGICS):
        return Entry(f"e{i}", interp, type=EntryType.EXTENSION, extension="x", enabled=enabled)
    return Entry(f"e{i}", interp, magic=MAGICS[kind], flags="F" if fixed else "", enabled=enabled)


entry_specs = st.lists(
    st.tuples(
        st.integers(0, len(MAGICS)),  # the magic, or an extension entry
        st.sampled_from([True, True, False]),  # F
        st.booleans(),  # enabled
        st.sampled_from(["ok", "deleted", "replaced"]),  # the F file afterwards
    ),
    min_size=1,
    max_size=6,
)


def _start(root: Path, specs: list[tuple[int, bool, bool, str]]) -> BinfmtMisc:
    """The start state in ``root/p``, the interpreters in ``root/files``."""
    files = root / "files"
    files.mkdir(parents=True)
    entries = []
    for i, (kind, fixed, enabled, _) in enumerate(specs):
        interp = files / f"i{i}"
        interp.write_bytes(b"#!/bin/sh\n")
        interp.chmod(0o755)
        entries.append(_entry(i, kind, fixed, enabled, str(interp)))
    misc = make_fake_procfs(root / "p", entries, kernel=K)
    time.sleep(0.005)  # a later clock tick than the registrations
    for i, (kind, fixed, _, fate) in enumerate(specs):
        path = files / f"i{i}"
        if fixed and kind != len(MAGICS) and fate == "deleted":
            path.unlink()
        elif fixed and kind != len(MAGICS) and fate == "replaced":
            path.with_name("new").write_bytes(b"#!/bin/sh\n# new\n")
            path.with_name("new").chmod(0o755)
            os.replace(path.with_name("new"), path)
    return misc


def _fail_write(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    real = BinfmtMisc._write
    calls = [0]

    def write(self: BinfmtMisc, name: str, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, name, data)

    monkeypatch.setattr(BinfmtMisc, "_write", write)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=entry_specs,
    uninstall=st.booleans(),
    picks=st.lists(st.integers(0, 5), min_size=2, max_size=4, unique=True),
    changes=st.lists(st.sampled_from(["same", "other", "off", "on"]), min_size=4, max_size=4),
    force=st.booleans(),
)
# Found by CI: a forced plan over a replaced F file. The rollback registers it
# again (its path exists), which moves it ahead of an unrelated entry; the
# proof once assumed it stayed away, so the order note was not announced.
@example(
    specs=[(1, True, False, "replaced"), (0, True, False, "deleted")],
    uninstall=False,
    picks=[0, 1],
    changes=["other", "same", "same", "same"],
    force=True,
)
def test_every_position_of_random_plans(
    monkeypatch: pytest.MonkeyPatch,
    specs: list[tuple[int, bool, bool, str]],
    uninstall: bool,
    picks: list[int],
    changes: list[str],
    force: bool,
) -> None:
    """Fail write 1, 2, … of a random plan: exact, or different only as announced."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        template = _start(root, specs)
        start = template.state()
        names = [f"e{i}" for i in picks if i < len(specs)] or ["e0"]
        if uninstall:
            the_plan = plan_uninstall(names, state=start, force=force)
        else:
            wanted = []
            for name, change in zip(names, changes):
                old = start.get(name)
                assert old is not None
                if change == "other":
                    wanted.append(attrs.evolve(old, interpreter="/bin/true", enabled=True))
                else:
                    wanted.append(attrs.evolve(old, enabled=change != "off"))
            wanted.append(Entry("fresh", "/bin/true", magic=b"\x01"))  # overlaps most
            the_plan = plan_entries(wanted, state=start, force=force)
        target(float(len(the_plan.changes)), label="changes")
        event(f"{len(the_plan.changes)} changes, cannot_restore={len(the_plan.cannot_restore)}")
        if not the_plan.ok:
            assert the_plan.cannot_restore and not force
            event("refused up front")
            return
        position = 0
        while True:
            position += 1
            case = root / f"run{position}"
            shutil.copytree(root / "p", case)  # copy2: the registration times are kept
            misc = BinfmtMisc(str(case), kernel=K)
            before = misc.state()
            replanned = attrs.evolve(the_plan, procfs=misc.path)
            with monkeypatch.context() as m:
                _fail_write(m, position)
                try:
                    apply(replanned, misc)
                except InstallError as exc:
                    failure: Optional[InstallError] = exc
                else:
                    failure = None
            if failure is None:
                break
            after = misc.state()
            assert after.entries == before.entries or not failure.restored
            if failure.restored:
                assert after.entries == before.entries and "as it was before" in str(failure)
                event("restored exactly")
                continue
            event("announced")
            allowed = set(the_plan.cannot_restore)
            warned = any(f.code == "restore-order" for f in the_plan.findings)
            assert failure.differences
            for line in failure.differences:
                if "match no common file" in line:
                    assert warned, line
                else:
                    assert set(re.findall(r"'([^']*)'", line)) & allowed, (line, allowed)
        event(f"{position - 1} positions")


# -- pieces ------------------------------------------------------------------------------


def test_disabled_entries_are_planned_as_given(fake_binfmt_misc: Any) -> None:
    """plan_entries registers then disables an entry given disabled, or disables it."""
    misc = fake_binfmt_misc([":on:M::ON::/bin/true:"])
    wanted = [
        Entry("on", "/bin/true", magic=b"ON", enabled=False),
        Entry("new", "/bin/true", magic=b"NW", enabled=False),
    ]
    the_plan = plan_entries(wanted, state=misc.state())
    assert [s.action for s in the_plan.steps] == ["disable", "register"]
    apply(the_plan, misc)
    assert [(e.name, e.enabled) for e in misc.state().entries] == [("new", False), ("on", False)]
    assert not plan_entries(wanted, state=misc.state()).changes


def test_replaced_f_file_is_refused_up_front_and_announced_with_force(tmp_path: Path) -> None:
    """An F entry whose file changed since registration: refused naming force; then announced."""
    interp = tmp_path / "qemu"
    interp.write_bytes(b"#!/bin/sh\n")
    interp.chmod(0o755)
    misc = make_fake_procfs(tmp_path / "p", [Entry("q", str(interp), magic=b"QQ", flags="F")])
    time.sleep(0.01)
    interp.with_name("new").write_bytes(b"#!/bin/sh\n# 2\n")
    interp.with_name("new").chmod(0o755)
    os.replace(interp.with_name("new"), interp)
    wanted = [Entry("q", "/bin/true", magic=b"QQ")]
    refused = plan_entries(wanted, state=misc.state())
    (finding,) = refused.findings
    assert (finding.code, finding.severity, finding.options) == (
        "cannot-restore",
        "error",
        ("force",),
    )
    assert "changed after the entry was registered" in finding.message
    outcome = carry_out(misc, lambda state: plan_entries(wanted, state=state))
    assert outcome.error({"force": "--force"}) is not None
    assert "--force goes ahead anyway" in (outcome.error({"force": "--force"}) or "")
    forced = plan_entries(wanted, state=misc.state(), force=True)
    assert forced.ok and forced.cannot_restore == ("q",)
    assert forced.to_dict()["cannot_restore"] == ["q"]
    text = outcome_text(Outcome(forced, dry_run=True))
    assert "if a step fails, these cannot be put back as they were: 'q'" in text


def test_outcome_text_and_json_say_what_was_left(
    fake_binfmt_misc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failure: 'as it was before' only when equal; else every difference, in JSON too."""
    misc = fake_binfmt_misc([":a:M::AA::/bin/true:", ":b:M::BB::/bin/true:"])
    make = lambda state: plan_uninstall(["a", "b"], state=state)  # noqa: E731
    _fail_write(monkeypatch, 2)
    outcome = carry_out(misc, make)
    assert outcome.restored is True and outcome.differences == ()
    doc = outcome.to_dict()
    assert (doc["applied"], doc["restored"], doc["differences"]) == (False, True, [])
    assert [e["name"] for e in doc["left"]] == ["b", "a"]
    assert "rolled back 1 change: binfmt_misc is as it was before" in (outcome.error() or "")
    assert "failed; binfmt_misc is as it was before" in outcome_text(outcome)
    # Every write from the 2nd on fails: the undo too.
    real = BinfmtMisc._write
    calls = [0]

    def write(self: BinfmtMisc, name: str, data: bytes) -> None:
        calls[0] += 1
        if calls[0] >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, name, data)

    monkeypatch.setattr(BinfmtMisc, "_write", write)
    outcome = carry_out(misc, make)
    assert outcome.restored is False and outcome.differences == ("'a' is gone",)
    assert "but binfmt_misc is not as it was before: 'a' is gone" in (outcome.error() or "")
    assert "undoing failed" in (outcome.error() or "")
    text = outcome_text(outcome)
    assert "failed; binfmt_misc is not as it was before:\n  'a' is gone\n" in text
    assert outcome.to_dict()["left"] == [{"name": "b", "enabled": True}]


def test_the_order_of_overlapping_entries_is_put_back(
    fake_binfmt_misc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: a failed replace of an entry a newer one shadows; the newer still wins."""
    misc = fake_binfmt_misc([":qemu:M::QQ::/bin/false:", ":box:M::QQ::/bin/true:"])
    assert misc.state().names == ("box", "qemu")
    _fail_write(monkeypatch, 2)  # the registration after the removal
    with pytest.raises(InstallError, match="as it was before") as caught:
        apply(plan_entries([Entry("qemu", "/bin/sh", magic=b"QQ")], state=misc.state()), misc)
    assert caught.value.restored is True
    assert misc.state().names == ("box", "qemu")


def test_errors_pickle() -> None:
    """InstallError keeps what the rollback found; LockTimeout the holder."""
    exc = InstallError("m", applied=True, restored=False, differences=("x",))
    back = pickle.loads(pickle.dumps(exc))
    assert (str(back), back.applied, back.restored, back.differences) == ("m", True, False, ("x",))
    lt = pickle.loads(pickle.dumps(LockTimeout("/p", 1.5, 42, "flock")))
    assert str(lt) == (
        "the writer lock of /p is held by process 42 (flock) and was not released within "
        "1.5 s: nothing was written"
    )
    assert lt.holder == 42
    assert isinstance(lt, TimeoutError)


def test_apply_refuses_a_plan_whose_undo_got_worse(tmp_path: Path) -> None:
    """A file replaced between plan and apply: apply refuses before writing."""
    interp = tmp_path / "qemu"
    interp.write_bytes(b"#!/bin/sh\n")
    interp.chmod(0o755)
    misc = make_fake_procfs(tmp_path / "p", [Entry("q", str(interp), magic=b"QQ", flags="F")])
    the_plan = plan_entries([Entry("q", "/bin/true", magic=b"QQ")], state=misc.state())
    assert the_plan.ok and not the_plan.cannot_restore
    time.sleep(0.01)
    os.unlink(interp)
    before = misc.state()
    with pytest.raises(InstallError, match="changed since the plan was made and a failure"):
        apply(the_plan, misc)
    assert misc.state() == before
    assert isinstance(the_plan, Plan)


def test_what_another_writer_did_meanwhile_is_left_and_named(
    fake_binfmt_misc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback undoes only this run's writes: another writer's are kept, and said to be."""
    misc = fake_binfmt_misc(
        [":a:M::AA::/bin/true:", ":b:M::BB::/bin/true:", ":c:M::CC::/bin/true:"]
    )
    real = BinfmtMisc._write
    calls = [0]

    def write(self: BinfmtMisc, name: str, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == 2:  # meanwhile, another writer removes c and registers x
            real(self, "c", b"-1")
            real(self, "register", b":x:M::XX::/bin/true:")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, name, data)

    monkeypatch.setattr(BinfmtMisc, "_write", write)
    with pytest.raises(InstallError) as caught:
        apply(plan_uninstall(["a", "b"], state=misc.state()), misc)
    assert misc.state().names == ("x", "b", "a")  # a is back, in its place; c stays gone
    assert caught.value.restored is False
    assert caught.value.differences == (
        "'c' is gone (not by this run)",
        "'x' is new (not by this run)",
    )


@st.composite
def magic_entries(draw: st.DrawFn) -> Entry:
    """Small magic entries (offsets 0-3, 1-3 bytes, low nibbles only): they often overlap."""
    size = draw(st.integers(1, 3))
    magic = bytes(x & 0x0F for x in draw(st.binary(min_size=size, max_size=size)))
    mask = draw(st.one_of(st.none(), st.binary(min_size=size, max_size=size)))
    return Entry("e", "/bin/true", offset=draw(st.integers(0, 3)), magic=magic, mask=mask)


@settings(max_examples=400, deadline=None)
@given(a=magic_entries(), b=magic_entries())
def test_overlap_is_exactly_some_file_matching_both(a: Entry, b: Entry) -> None:
    """_overlap(a, b) holds exactly when a file header exists that both entries match.

    Bytes at different positions are independent, so a witness is built byte
    by byte when it holds, and when it does not, one position has no byte
    value (of all 256) that satisfies both.
    """
    from binfmt.install import _overlap  # the rule under test; private on purpose

    def wants(e: Entry, pos: int) -> Optional[tuple[int, int]]:
        if not e.offset <= pos < e.offset + e.size:
            return None
        mask = e.mask[pos - e.offset] if e.mask is not None else 0xFF
        return mask, e.magic[pos - e.offset] & mask

    header = bytearray(8)
    conflict = None
    for pos in range(8):
        rules = [r for r in (wants(a, pos), wants(b, pos)) if r is not None]
        fits = [v for v in range(256) if all(v & m == want for m, want in rules)]
        if not fits:
            conflict = pos
            break
        header[pos] = fits[0]
    event("overlap" if conflict is None else "disjoint")
    assert _overlap(a, b) is (conflict is None)
    if conflict is None:
        assert a.matches(bytes(header)) and b.matches(bytes(header))
