"""KernelRules: the real patch level from every source, and unknown backport rules."""

from __future__ import annotations

import pytest

from binfmt.kernel import BACKPORTS, KernelRules, patch_level


@pytest.mark.parametrize(
    ("release", "version", "want"),
    [
        ("6.18.44-fc-v657", None, (6, 18, 44)),
        ("6.12.117+deb13-cloud-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.12.117-1", (6, 12, 117)),
        ("5.10.0-32-cloud-amd64", "#1 SMP Debian 5.10.223-1 (2024-08-10)", (5, 10, 223)),
        (
            "6.1.0-57-cloud-amd64",
            "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)",
            (6, 1, 192),
        ),
        (
            "5.15.0-91-generic",
            "#101-Ubuntu SMP\nUbuntu 5.15.0-91.101-generic 5.15.131\n",
            (5, 15, 131),
        ),
        ("5.10.0-32-cloud-amd64", None, None),
        ("5.14.0-362.el9.x86_64", "#1 SMP PREEMPT_DYNAMIC Fri Oct 6 2023", None),
        ("6.7", None, (6, 7, 0)),
        ("6.7.0-rc3", None, (6, 7, 0)),
        # A Debian version of another line is not this kernel's.
        ("6.1.0-57-cloud-amd64", "Debian 5.10.223-1", None),
    ],
)
def test_patch_level_sources(release: str, version: str, want: object) -> None:
    """The patch level comes from the release, Debian's uname -v, Ubuntu's signature, or nowhere."""
    assert patch_level(release, version) == want


def test_debian_release_without_version_leaves_backports_unknown() -> None:
    """A Debian 12 release alone cannot tell which stable fixes it has: those rules are None."""
    rules = KernelRules.for_release("6.1.0-57-cloud-amd64")
    assert rules.patch_known is False
    assert rules.rejects_flag_delimiter is None
    assert rules.umount_removes_entries is None
    assert set(rules.unknown()) == {
        "rejects_flag_delimiter",
        "umount_removes_entries",
        "releases_interpreter_on_remove",
        "releases_interpreter_on_failed_register",
    }
    assert "patch level" in (rules.why_unknown("rejects_flag_delimiter") or "")
    # Mainline rules do not depend on it.
    assert rules.preserve_argv0_auxv is True and rules.userns_instances is False
    assert rules.opens_interpreter_first is True


def test_measured_builds_decide_every_backport() -> None:
    """With uname -v, the measured Debian builds have every rule decided, as measured."""
    old = KernelRules.for_release("6.1.0-50-cloud-amd64", "Debian 6.1.176-1")
    new = KernelRules.for_release("6.1.0-57-cloud-amd64", "Debian 6.1.192-3")
    assert old.unknown() == () and new.unknown() == ()
    assert (old.rejects_flag_delimiter, new.rejects_flag_delimiter) == (False, True)
    assert (old.releases_interpreter_on_remove, new.releases_interpreter_on_remove) == (False, True)
    v510 = KernelRules.for_release("5.10.0-32-cloud-amd64", "Debian 5.10.223-1")
    assert v510.opens_interpreter_first is True
    assert v510.umount_removes_entries is False
    assert v510.preserve_argv0_auxv is False


def test_between_measurements_is_unknown() -> None:
    """A patch level between the last build without a fix and the first with it is unknown."""
    rules = KernelRules.for_release("6.1.180")
    assert rules.rejects_flag_delimiter is None
    assert "6.1.180" in (rules.why_unknown("rejects_flag_delimiter") or "")
    assert KernelRules.for_release("6.1.200").rejects_flag_delimiter is True


def test_mainline_and_old_lines_are_decided() -> None:
    """Mainline releases past a change have it; lines end-of-life before it never do."""
    assert KernelRules.for_release("7.3.0").unknown() == ()
    assert KernelRules.for_release("4.19.300").rejects_flag_delimiter is False
    assert all(bp.mainline > line for bp in BACKPORTS for line in bp.measured)


def test_for_release_without_version_keeps_working() -> None:
    """Existing callers: for_release(release) and for_release_or_default still answer."""
    assert KernelRules.for_release("6.18.44").rejects_flag_delimiter is True
    assert KernelRules.for_release_or_default("garbage") == KernelRules()
    with pytest.raises(ValueError):
        KernelRules.for_release("garbage")


def test_an_unknown_rule_is_not_guessed() -> None:
    """Where the flag-delimiter fix is unknown (no patch level), such a line is refused: why."""
    from binfmt import Entry, InvalidEntry

    rules = KernelRules.for_release("6.1.0-57-cloud-amd64")
    assert rules.rejects_flag_delimiter is None
    with pytest.raises(InvalidEntry, match="unknown"):
        Entry.parse("FxFMFFABFF/bin/trueF\n", rules)
    known = KernelRules.for_release("6.1.0-57-cloud-amd64", "#1 SMP Debian 6.1.192-3")
    assert known.rejects_flag_delimiter is True
    old = KernelRules.for_release("6.1.0-57-cloud-amd64", "#1 SMP Debian 6.1.176-1")
    assert Entry.parse("FxFMFFABFF/bin/trueF\n", old).name == "x"
