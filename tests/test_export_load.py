"""export and load: persistence round trips, safe writes, systemd-binfmt without the flush."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from binfmt import BinfmtMisc, Entry, qemu
from binfmt.cli import main
from binfmt.persist import binfmt_d_files, parse_binfmt_d, parse_debian_format, write_files
from binfmt.sandbox import Sandbox
from binfmt.testing import require_or_skip

MIXED = Path(__file__).parent / "data" / "procfs" / "mixed-registrants"


def test_export_install_plan_as_binfmt_d(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export TARGETS writes one NAME.conf per entry install would register, parseable back."""
    out = tmp_path / "etc"
    out.mkdir()
    assert (
        main(
            [
                "export",
                "--procfs",
                str(MIXED),
                "--qemu-path",
                "/usr/bin",
                "--qemu-suffix",
                "-static",
                "--persistent",
                "--dir",
                str(out),
                "arm64",
                "linux/s390x",
            ]
        )
        == 0
    )
    assert sorted(os.listdir(out)) == ["qemu-aarch64.conf", "qemu-s390x.conf"]
    (line,) = parse_binfmt_d((out / "qemu-s390x.conf").read_text(), "x")
    assert line.entry == qemu.get("s390x").to_entry("/usr/bin/qemu-s390x-static", "F")
    assert oct((out / "qemu-s390x.conf").stat().st_mode & 0o777) == "0o644"
    assert capsys.readouterr().out.count("wrote ") == 2


def test_export_current_debian_format(capsys: pytest.CaptureFixture[str]) -> None:
    """export --current --format debian NAME prints a format file that parses to the entry."""
    assert (
        main(["export", "--current", "--procfs", str(MIXED), "--format", "debian", "rosetta"]) == 0
    )
    text = capsys.readouterr().out
    fmt = parse_debian_format("rosetta", text)
    rosetta = BinfmtMisc(str(MIXED)).read_entry("rosetta")
    assert fmt.to_entry() == rosetta


def test_export_json_and_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run with --dir writes nothing; --json lists the files and their contents."""
    assert (
        main(
            [
                "export",
                "--current",
                "--json",
                "--dry-run",
                "--procfs",
                str(MIXED),
                "--dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["written"] == [] and os.listdir(tmp_path) == []
    assert {f["name"] for f in doc["files"]} >= {"WSLInterop.conf", "with space.conf"}


def test_export_never_writes_through_a_symlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A /dev/null mask (a symlink) at the target name is refused and left as it is."""
    (tmp_path / "rosetta.conf").symlink_to("/dev/null")
    assert (
        main(["export", "--current", "--procfs", str(MIXED), "--dir", str(tmp_path), "rosetta"])
        == 1
    )
    assert "rosetta.conf" in capsys.readouterr().err
    assert os.readlink(tmp_path / "rosetta.conf") == "/dev/null"
    assert (
        main(["export", "--current", "--procfs", str(MIXED), "--dir", str(tmp_path / "missing")])
        == 1
    )


def test_export_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """export needs targets or --current; an unknown entry name is one error line."""
    assert main(["export", "--procfs", str(MIXED)]) == 2
    assert main(["export", "--current", "--procfs", str(MIXED), "nope"]) == 1
    assert "no entry named 'nope'" in capsys.readouterr().err


def test_load_into_a_fake_tree(
    tmp_path: Path, fake_binfmt_misc: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """load registers binfmt.d lines, replaces a same-name entry, and leaves others alone."""
    etc, usr = tmp_path / "etc", tmp_path / "usr"
    etc.mkdir()
    usr.mkdir()
    (usr / "a.conf").write_text(":a:M::AA::/bin/true:\n# comment\n:b:M::BB::/bin/true:\n")
    (usr / "masked.conf").write_text(":m:M::MM::/bin/true:\n")
    (etc / "masked.conf").symlink_to("/dev/null")
    (etc / "a.conf").write_text(":a:M::AA::/bin/false:\n")  # overrides usr/a.conf whole
    misc = fake_binfmt_misc([":other:M::ZZ::/bin/true:", ":a:M::OLD::/bin/true:"])
    assert main(["load", "--procfs", misc.path, str(etc), str(usr)]) == 0
    state = misc.state()
    assert set(state.names) == {"a", "other"}
    a = state.get("a")
    assert a is not None and (a.magic, a.interpreter) == (b"AA", "/bin/false")
    out = capsys.readouterr().out
    assert "replace" in out
    assert main(["load", "--procfs", misc.path, str(etc), str(usr)]) == 0
    assert "nothing to change" in capsys.readouterr().out


def test_load_errors(
    tmp_path: Path, fake_binfmt_misc: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad line names its file and line; a missing path is a usage error."""
    conf = tmp_path / "bad.conf"
    conf.write_text(":ok:M::AB::/bin/true:\n:bad:M:x:AB::/bin/true:\n")
    misc = fake_binfmt_misc()
    assert main(["load", "--procfs", misc.path, str(conf)]) == 1
    assert f"{conf}:2: " in capsys.readouterr().err
    assert misc.state().names == ()
    assert main(["load", "--procfs", misc.path, str(tmp_path / "none")]) == 2


@pytest.mark.kernel
def test_export_then_load_in_a_real_instance(binfmt_sandbox: Sandbox, tmp_path: Path) -> None:
    """Entries exported from one instance load into a fresh one identically, in order."""
    misc = binfmt_sandbox.misc
    for line in (":one:M::\\x01::/bin/true:F", ":two:E::zz::/bin/true:P", ":three:M:4:AB::x:"):
        misc.register(line)
    before = misc.state().entries
    etc = tmp_path / "binfmt.d"
    etc.mkdir()
    assert main(["export", "--current", "--procfs", misc.path, "--dir", str(etc)]) == 0
    binfmt_sandbox.reset()
    misc.register(":keep:M::KK::/bin/true:")
    assert main(["load", "--procfs", misc.path, str(etc)]) == 0
    after = misc.state()
    assert after.get("keep") is not None
    assert {e.name: e for e in after.entries if e.name != "keep"} == {e.name: e for e in before}
    assert isinstance(after.get("one"), Entry)


def test_load_refuses_an_entry_that_captures_native_binaries(
    tmp_path: Path, fake_binfmt_misc: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A binfmt.d line matching the host's own programs is refused unless --force."""
    from binfmt import Host

    native = Host.detect().primary
    if native is None:
        require_or_skip("no QEMU target for this machine")
    conf = tmp_path / "evil.conf"
    conf.write_text(qemu.get(native).to_entry("/bin/true", name="evil").to_register() + "\n")
    misc = fake_binfmt_misc()
    assert main(["load", "--procfs", misc.path, str(conf)]) == 1
    assert "--force registers it anyway" in capsys.readouterr().err
    assert misc.state().names == ()
    assert main(["load", "--force", "--procfs", misc.path, str(conf)]) == 0
    assert misc.state().names == ("evil",)


def test_persisted_below_leaves_vendor_entries_to_the_vendor(tmp_path: Path) -> None:
    """An entry a lower binfmt.d directory registers identically needs no copy in a higher one."""
    from binfmt.persist import persisted_below

    etc, usr = tmp_path / "etc", tmp_path / "usr"
    etc.mkdir()
    usr.mkdir()
    python = Entry("python3.11", "/usr/bin/python3.11", magic=b"\xa7\x0d\x0d\x0a")
    ours = qemu.get("aarch64").to_entry("/usr/bin/qemu-aarch64-static", "F")
    vendor_qemu = qemu.get("aarch64").to_entry("/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "POCF")
    write_files(str(usr), binfmt_d_files([python, vendor_qemu]))
    dirs = [str(etc), str(usr)]
    assert persisted_below([python, ours], str(etc), dirs) == {
        "python3.11": str(usr / "python3.11.conf")
    }
    assert persisted_below([python, ours], str(tmp_path / "elsewhere"), dirs) == {}
    write_files(str(etc), binfmt_d_files([python]))  # a file of its own: keep it up to date
    assert persisted_below([python, ours], str(etc), dirs) == {}
