"""A private, throw-away binfmt_misc instance in a new user namespace (Linux 6.7+).

Since 6.7 every user namespace may mount its own binfmt_misc; registrations
there are invisible to the host and vanish with the namespace (spec §6). A
:class:`Sandbox` starts one helper process inside ``unshare --user
--map-root-user --mount``, which mounts the instance on a temporary directory
and runs programs on request, so that their ``execve`` goes through the
private instance. This process reaches the instance's files through
``/proc/<helper>/root/…``, so :attr:`Sandbox.misc` is an ordinary
:class:`~binfmt.procfs.BinfmtMisc` and the library's real code is what gets
tested.

Nothing here ever touches the host's ``/proc/sys/fs/binfmt_misc``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO, Any, Optional

import attrs

from .errors import SandboxUnavailable
from .procfs import BinfmtMisc

__all__ = ["ExecResult", "Sandbox", "SandboxUnavailable", "sandbox_unavailable_reason"]


@attrs.frozen
class ExecResult:
    """What happened when the sandbox ran a program."""

    #: Exit status, or ``None`` when ``execve`` itself failed.
    returncode: Optional[int]
    stdout: bytes = b""
    stderr: bytes = b""
    #: The errno name of a failed ``execve`` (``"ENOEXEC"``, ``"ENOENT"`` …), else ``None``.
    errno: Optional[str] = None
    #: The program was killed after the timeout (``returncode`` is then ``None``).
    timed_out: bool = False


# Runs inside the namespace. Kept free of this package's imports: the helper
# must keep working when an entry under test hijacks every ELF binary, so it
# starts nothing before the instance is mounted except the mount itself.
_HELPER = r"""
import base64, ctypes, errno, json, os, subprocess, sys
mnt = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
if libc.mount(b"none", mnt.encode(), b"binfmt_misc", 0, None) != 0:
    e = ctypes.get_errno()
    print(json.dumps({"error": "mount binfmt_misc: " + os.strerror(e)}), flush=True)
    sys.exit(1)
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    root = req.get("root")
    cwd = req.get("cwd")
    def enter(root=root, cwd=cwd):
        if root:
            os.chroot(root)
            os.chdir(cwd or "/")
    res = {"returncode": None, "stdout": "", "stderr": "", "errno": None, "timed_out": False}
    try:
        p = subprocess.run(
            req["argv"], executable=req.get("executable"), cwd=None if root else cwd,
            env=req.get("env"), capture_output=True, timeout=req.get("timeout", 60),
            preexec_fn=enter if root else None,
        )
        res["returncode"] = p.returncode
        res["stdout"] = base64.b64encode(p.stdout).decode()
        res["stderr"] = base64.b64encode(p.stderr).decode()
    except subprocess.TimeoutExpired:
        res["timed_out"] = True
    except OSError as exc:
        res["errno"] = errno.errorcode.get(exc.errno, str(exc.errno))
    print(json.dumps(res), flush=True)
"""


def sandbox_unavailable_reason() -> Optional[str]:
    """Why a :class:`Sandbox` cannot start here, or ``None`` if it can."""
    if not sys.platform.startswith("linux"):
        return "binfmt_misc is Linux-only"
    if shutil.which("unshare") is None:
        return "the 'unshare' command (util-linux) is not installed"
    try:
        with Sandbox():
            pass
    except SandboxUnavailable as exc:
        return str(exc)
    return None


class Sandbox:
    """A private binfmt_misc instance; use as a context manager.

    >>> with Sandbox() as box:                                  # doctest: +SKIP
    ...     box.misc.register(":t:M::\\x7fELF\\x02\\x02::/bin/true:")
    ...     box.run(["./foreign-binary"]).returncode
    """

    def __init__(self) -> None:
        self._proc: Optional[subprocess.Popen[str]] = None
        self._tmp: Optional[str] = None
        self.mountpoint = ""
        self.pid = 0

    @property
    def path(self) -> str:
        """The instance's directory, as this process reaches it."""
        return f"/proc/{self.pid}/root{self.mountpoint}"

    @property
    def misc(self) -> BinfmtMisc:
        """The instance as a :class:`~binfmt.procfs.BinfmtMisc`."""
        return BinfmtMisc(self.path)

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create the namespace and mount the instance; raises :class:`SandboxUnavailable`."""
        if shutil.which("unshare") is None:
            raise SandboxUnavailable("the 'unshare' command (util-linux) is not installed")
        from .kernel import KernelRules

        rules = KernelRules.running()
        if not rules.userns_instances:
            raise SandboxUnavailable(
                f"this kernel ({os.uname().release}) has one binfmt_misc for all user "
                "namespaces: private instances came with Linux 6.7 (mounting one gives EPERM "
                "on 5.10 and 6.1, as measured)"
            )
        self._tmp = tempfile.mkdtemp(prefix="binfmt-sandbox-")
        self.mountpoint = self._tmp
        cmd = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
        cmd += [sys.executable, "-I", "-c", _HELPER, self.mountpoint]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        first = self._stdout().readline()
        try:
            hello = json.loads(first)
        except ValueError:
            err = self._proc.stderr.read() if self._proc.stderr else ""
            self.close()
            raise SandboxUnavailable(
                "cannot create a user namespace with its own binfmt_misc "
                f"(needs Linux 6.7+ and user namespaces): {(err or first).strip()}"
            ) from None
        if "ready" not in hello:
            self.close()
            raise SandboxUnavailable(
                f"cannot mount a private binfmt_misc (needs Linux 6.7+): {hello.get('error')}"
            )
        self.pid = int(hello["ready"])

    def _stdout(self) -> IO[str]:
        assert self._proc is not None and self._proc.stdout is not None
        return self._proc.stdout

    def run(
        self,
        argv: Sequence[str],
        *,
        executable: Optional[str] = None,
        cwd: Optional[str] = None,
        root: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout: float = 60,
    ) -> ExecResult:
        """Run a program inside the namespace, so its exec uses the private instance.

        ``root`` chroots there first (to test what a container sees);
        ``cwd`` is then relative to it. A failed ``execve`` is reported as
        :attr:`ExecResult.errno`, not raised.
        """
        if self._proc is None or self._proc.stdin is None:
            raise SandboxUnavailable("the sandbox is not running")
        request: dict[str, Any] = {"argv": list(argv), "timeout": timeout}
        if executable is not None:
            request["executable"] = executable
        if cwd is not None:
            request["cwd"] = cwd
        if root is not None:
            request["root"] = root
        request["env"] = dict(env) if env is not None else {"PATH": "/usr/bin:/bin"}
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            reply = json.loads(self._stdout().readline())
        except (OSError, ValueError):
            raise SandboxUnavailable(
                "the sandbox's helper process died (its namespace and instance are gone)"
            ) from None
        return ExecResult(
            returncode=reply["returncode"],
            stdout=base64.b64decode(reply["stdout"]),
            stderr=base64.b64decode(reply["stderr"]),
            errno=reply["errno"],
            timed_out=reply["timed_out"],
        )

    def reset(self) -> None:
        """Remove every entry and turn the instance back on."""
        misc = self.misc
        misc.remove_all()
        misc.set_enabled(True)

    def close(self) -> None:
        """End the namespace: the instance and its entries are gone with it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        if self._tmp:
            with contextlib.suppress(OSError):
                os.rmdir(self._tmp)
            self._tmp = None
