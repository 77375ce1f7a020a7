"""Every error of the library: a BinfmtError, the natural builtin, one line, and it pickles."""

from __future__ import annotations

import errno
import inspect
import pickle
from typing import cast

import pytest

from binfmt import errors

# One instance of each error class, built as the library builds them.
SAMPLES: list[errors.BinfmtError] = [
    errors.InvalidValue("jobs", 0, "must be at least 1"),
    errors.ArchiveError(
        "image.tar", "truncated in member 'usr/bin/ls': the stream ends at byte 10240"
    ),
    errors.InvalidEntry("name", "a/b", "must not contain '/'", errno.EINVAL),
    errors.MalformedStatus("/x/e", "line 2 is missing"),
    errors.UnknownTarget("unknown target 'x'"),
    errors.NoSuchEntry("qemu-nope"),
    errors.InstallError("rolled back"),
    errors.InstallError(
        "not as it was", applied=False, restored=False, differences=("'a' is gone",)
    ),
    errors.LockTimeout("/proc/sys/fs/binfmt_misc", 30.0, 4242, "flock"),
    errors.SandboxUnavailable("no user namespaces"),
    errors.NotMounted("/proc/sys/fs/binfmt_misc"),
    errors.PermissionDenied("/proc/sys/fs/binfmt_misc/register", "write to"),
    errors.KernelError(errno.EEXIST, "/x/register", "cannot register 'a'", "a"),
    errors.ElfError("bad", "/x"),
    errors.NotElf("not an ELF file (empty)", "/x"),
    errors.InvalidElf("PT_INTERP is 1 bytes", None),
    errors.NotRegularFile("/dev/null", "character device"),
    errors.ConfigError("/etc/binfmt.d/a.conf", 3, "invalid name"),
    errors.UnsafeFileName("../x", "must be a plain file name"),
    errors.WriteError(errno.ENOSPC, "/etc/binfmt.d/a.conf", "cannot write /etc/binfmt.d/a.conf"),
]


def test_every_error_class_has_a_sample() -> None:
    """The samples cover every exception class errors.py defines."""
    defined = {
        obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and not name.startswith("_")
    }
    assert defined - {type(e) for e in SAMPLES} == {errors.BinfmtError}


@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: type(e).__name__)
def test_pickles_with_its_message_and_fields(error: errors.BinfmtError) -> None:
    """pickle round trip: same type, same one-line message, same attributes."""
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert "\n" not in str(error)
    assert vars(again) == vars(error)
    if isinstance(error, OSError):
        before, after = cast(OSError, error), cast(OSError, again)
        assert (after.errno, after.filename) == (before.errno, before.filename)


def test_natural_builtins() -> None:
    """Each is also the builtin a caller would catch."""
    assert isinstance(errors.InvalidValue("a", 1, "b"), ValueError)
    assert isinstance(errors.NotMounted("/x"), FileNotFoundError)
    assert isinstance(errors.PermissionDenied("/x", "read"), PermissionError)
    assert isinstance(errors.NoSuchEntry("x"), LookupError)
    assert isinstance(errors.InstallError("x"), RuntimeError)
