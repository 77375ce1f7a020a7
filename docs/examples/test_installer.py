"""Tests for a tool that registers QEMU for arm64, run against binfmt's fakes.

Run with:  python -m pytest -p binfmt.testing test_installer.py
(``-p binfmt.testing`` is only needed when binfmt is not installed).
"""

import errno

import pytest

from binfmt import BinfmtMisc, Entry, KernelError, qemu

AARCH64 = qemu.get("aarch64")
X86_64 = qemu.get("x86_64")


def install_arm64(misc: BinfmtMisc, qemu_path: str = "/usr/bin/qemu-aarch64-static") -> None:
    """The code under test: register qemu-aarch64 (F: usable in containers) unless it is there."""
    if misc.state().get("qemu-aarch64") is None:
        misc.register(AARCH64.to_entry(qemu_path, flags="F"))


def test_install_registers_aarch64(fake_binfmt_misc, tmp_path):
    """An arm64 binary goes to the new entry."""
    qemu_binary = tmp_path / "qemu-aarch64-static"  # with F, the kernel opens it now
    qemu_binary.touch(mode=0o755)
    misc = fake_binfmt_misc()
    install_arm64(misc, str(qemu_binary))
    state = misc.state()
    assert state.names == ("qemu-aarch64",)
    assert state.lookup(AARCH64.header()).interpreter == str(qemu_binary)


def test_install_is_idempotent(fake_binfmt_misc):
    """A second run finds the entry and does not hit EEXIST."""
    misc = fake_binfmt_misc([AARCH64.to_entry("/usr/bin/qemu-aarch64-static")])
    install_arm64(misc)
    assert len(misc.state()) == 1


def test_newest_entry_wins(fake_binfmt_misc):
    """Rosetta registered after qemu-x86_64 takes every x86_64 binary."""
    misc = fake_binfmt_misc([X86_64.to_entry("/usr/bin/qemu-x86_64-static")])
    rosetta = Entry(
        "rosetta", "/mnt/lima-rosetta/rosetta", magic=X86_64.magic, mask=X86_64.mask, flags="OC"
    )
    misc.register(rosetta)
    with open(f"{misc.path}/register") as f:  # the fake records the lookup order
        assert f.read() == "rosetta\nqemu-x86_64\n"
    assert misc.state().lookup(X86_64.header()).name == "rosetta"


def test_refusals_carry_the_kernels_errno(fake_binfmt_misc, tmp_path):
    """A taken name is EEXIST; an F entry with a missing interpreter is ENOENT."""
    misc = fake_binfmt_misc([":jar:E::jar::/usr/bin/jexec:"])
    with pytest.raises(KernelError) as caught:
        misc.register(":jar:E::jar::/usr/bin/jexec:")
    assert caught.value.errno == errno.EEXIST
    with pytest.raises(KernelError) as caught:
        install_arm64(misc, str(tmp_path / "not-installed"))
    assert caught.value.errno == errno.ENOENT


def test_real_kernel_runs_the_interpreter(binfmt_sandbox, tmp_path):
    """In a private instance, the kernel really runs the entry's interpreter."""
    program = tmp_path / "hello.greet"
    program.write_text("not a real program")
    program.chmod(0o755)
    binfmt_sandbox.misc.register(":greet:E::greet::/bin/echo:")
    result = binfmt_sandbox.run([str(program), "world"])
    assert result.stdout == f"{program} world\n".encode()
