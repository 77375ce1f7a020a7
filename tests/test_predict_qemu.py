"""predict() against real emulation: Debian's binaries run through Debian's QEMU entries.

Debian's qemu-user-static registrations (flags OPF) are registered in a
private instance; then Debian's static busybox and dynamic hello for eight
architectures are executed, on the host root and chrooted into their own
extracted trees (with and without their loader). What predict() says must be
what happens.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from binfmt import Host
from binfmt.prediction import predict
from binfmt.sandbox import Sandbox

from .debian import ARCHES, debian_qemu_lines, debian_root

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]


@pytest.fixture
def qemu_box(binfmt_sandbox: Sandbox) -> Sandbox:
    for line in debian_qemu_lines():
        binfmt_sandbox.misc.register(line)
    return binfmt_sandbox


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_static_busybox_runs_as_predicted(qemu_box: Sandbox, arch: str) -> None:
    """Static busybox runs through the predicted entry (or natively: i386 on x86_64)."""
    busybox = debian_root(arch) / "bin" / "busybox"
    host = Host.detect()
    verdict = predict(
        str(busybox), state=qemu_box.misc.state(), host=host, argv=["echo", "hello from", arch]
    )
    target = ARCHES[arch][0]
    if host.runs_natively(target):
        assert (verdict.handler, verdict.entry) == ("native", None)
    else:
        assert (verdict.handler, verdict.entry) == ("binfmt_misc", f"qemu-{target}")
        # Debian's entries have P: busybox still sees its argv[0] and picks the applet.
        assert verdict.argv is not None and verdict.argv[2:] == ("echo", "hello from", arch)
    assert verdict.runs
    result = qemu_box.run(["echo", "hello from", arch], executable=str(busybox))
    assert (result.errno, result.returncode) == (None, 0)
    assert result.stdout == f"hello from {arch}\n".encode()


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_dynamic_hello_in_its_own_root_runs(qemu_box: Sandbox, arch: str) -> None:
    """Dynamic hello chrooted into its Debian tree finds its loader there and runs."""
    root = debian_root(arch)
    verdict = predict(
        str(root / "usr/bin/hello"),
        state=qemu_box.misc.state(),
        host=Host.detect(),
        rootfs=str(root),
    )
    assert verdict.exec_path == "/usr/bin/hello"
    assert verdict.runs, verdict.findings
    result = qemu_box.run(["/usr/bin/hello"], root=str(root))
    assert (result.errno, result.returncode, result.stdout) == (None, 0, b"Hello, world!\n")


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_dynamic_hello_without_its_loader_fails_as_predicted(
    qemu_box: Sandbox, arch: str, tmp_path: Path
) -> None:
    """In a root without the loader: native → ENOENT from execve; emulated → QEMU exits non-zero."""
    bare = tmp_path / "root"
    (bare / "usr/bin").mkdir(parents=True)
    shutil.copy2(debian_root(arch) / "usr/bin/hello", bare / "usr/bin/hello")
    host = Host.detect()
    verdict = predict(
        str(bare / "usr/bin/hello"), state=qemu_box.misc.state(), host=host, rootfs=str(bare)
    )
    assert not verdict.runs
    assert [f.code for f in verdict.findings if f.severity == "error"] == ["loader-missing"]
    assert ARCHES[arch][1] in verdict.findings[-1].message
    result = qemu_box.run(["/usr/bin/hello"], root=str(bare))
    if host.runs_natively(ARCHES[arch][0]):
        assert verdict.errno == result.errno == "ENOENT"
    else:
        assert verdict.errno is None and result.errno is None  # execve succeeded: QEMU ran
        assert result.returncode != 0
        assert ARCHES[arch][1].encode() in result.stderr


def test_dynamic_hello_on_the_host_root(qemu_box: Sandbox) -> None:
    """arm64 hello exec'd on this x86_64 host root: QEMU starts, the arm64 loader is missing."""
    hello = debian_root("arm64") / "usr/bin/hello"
    verdict = predict(str(hello), state=qemu_box.misc.state(), host=Host.detect())
    result = qemu_box.run([str(hello)])
    loader_missing = not Path("/lib/ld-linux-aarch64.so.1").exists()
    assert verdict.runs is (not loader_missing)
    assert (result.returncode == 0) is verdict.runs
