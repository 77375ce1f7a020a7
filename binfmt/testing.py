"""Test helpers for code that uses binfmt_misc, and the pytest plugin.

- :func:`make_fake_procfs` builds a directory laid out like
  ``/proc/sys/fs/binfmt_misc`` from entries or register lines, with every
  file rendered exactly as the kernel renders it. :class:`~binfmt.BinfmtMisc`
  treats it as a simulated kernel (see :mod:`binfmt.procfs`).
- The pytest plugin (registered as the ``pytest11`` entry point
  ``binfmt.testing``) provides two fixtures:

  ``fake_binfmt_misc``
      a factory: ``fake_binfmt_misc(entries=(), enabled=True) -> BinfmtMisc``
      over a fresh fake tree in ``tmp_path``.
  ``binfmt_sandbox``
      a :class:`~binfmt.sandbox.Sandbox` (a private real instance, Linux
      6.7+), emptied before and after each test; skipped with the reason
      where the machine cannot make one, or failed instead when the
      environment sets ``BINFMT_REQUIRE_ALL=1`` (for CI that must run it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable, NoReturn, Optional, Union

import pytest

from .entry import Entry
from .errors import SandboxUnavailable
from .kernel import KernelRules
from .procfs import BinfmtMisc
from .sandbox import Sandbox

__all__ = [
    "binfmt_sandbox",
    "fake_binfmt_misc",
    "make_fake_procfs",
    "require_or_skip",
]

FakeFactory = Callable[..., BinfmtMisc]


def make_fake_procfs(
    path: Union[str, os.PathLike[str]],
    entries: Iterable[Union[Entry, str, bytes]] = (),
    *,
    enabled: bool = True,
    kernel: Optional[KernelRules] = None,
) -> BinfmtMisc:
    """Create a fake binfmt_misc tree at ``path`` and register ``entries`` in order.

    Entries are registered oldest first, as a boot script would, so the last
    one given is the first in lookup order. Register lines are parsed with
    ``kernel``'s rules (default: the running kernel's) and refused exactly
    as the kernel would refuse them. Returns the :class:`BinfmtMisc`.
    """
    root = os.fspath(path)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "register"), "wb"):
        pass
    with open(os.path.join(root, "status"), "wb") as f:
        f.write(b"enabled\n")
    misc = BinfmtMisc(root, kernel=kernel)
    for entry in entries:
        misc.register(entry)
        if isinstance(entry, Entry) and not entry.enabled:
            misc.disable(entry.name)
    if not enabled:
        misc.set_enabled(False)
    return misc


def require_or_skip(reason: str) -> NoReturn:
    """``pytest.skip(reason)``, or ``pytest.fail`` when ``BINFMT_REQUIRE_ALL=1``."""
    if os.environ.get("BINFMT_REQUIRE_ALL") == "1":
        pytest.fail(f"required test layer unavailable (BINFMT_REQUIRE_ALL=1): {reason}")
    pytest.skip(reason)


@pytest.fixture
def fake_binfmt_misc(tmp_path: Path) -> FakeFactory:
    """Factory for fake binfmt_misc trees under ``tmp_path``."""
    counter = iter(range(1_000_000))

    def make(
        entries: Iterable[Union[Entry, str, bytes]] = (),
        *,
        enabled: bool = True,
        kernel: Optional[KernelRules] = None,
    ) -> BinfmtMisc:
        return make_fake_procfs(
            tmp_path / f"binfmt_misc-{next(counter)}", entries, enabled=enabled, kernel=kernel
        )

    return make


@pytest.fixture(scope="session")
def _binfmt_session_sandbox() -> Iterator[Sandbox]:
    box = Sandbox()
    try:
        box.start()
    except SandboxUnavailable as exc:
        require_or_skip(f"no private binfmt_misc instance: {exc}")
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def binfmt_sandbox(_binfmt_session_sandbox: Sandbox) -> Iterator[Sandbox]:
    """A private binfmt_misc instance, empty and enabled at the start of each test."""
    _binfmt_session_sandbox.reset()
    yield _binfmt_session_sandbox
    _binfmt_session_sandbox.reset()
