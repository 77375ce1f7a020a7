"""predict() against execve in a private binfmt_misc instance.

Hypothesis draws a set of entries (overlapping magics, masks, offsets,
extensions, flags, disabled entries, missing and script interpreters), the
global switch, and a file (random bytes, a prefix of some entry's magic, a
``#!`` script); the sandbox registers the entries and executes the file. The
errno the kernel answers, or the interpreter that ran and the argv it got,
must equal the prediction.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

import attrs
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from binfmt import Entry, EntryType, Host
from binfmt.prediction import Verdict, predict
from binfmt.sandbox import Sandbox

pytestmark = pytest.mark.kernel

EXAMPLES = int(os.environ.get("BINFMT_PREDICT_EXAMPLES", "300"))
SH_TAGS = ("i1", "i2", "i3")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Interpreters the entries point at: tagged shell scripts, echo, and broken ones."""
    d = tmp_path_factory.mktemp("predict")
    for tag in SH_TAGS:
        script = d / tag
        script.write_text(f'#!/bin/sh\necho "TAG {tag}"\nfor a in "$@"; do echo "ARG $a"; done\n')
        script.chmod(0o755)
    (d / "noexec").write_text("#!/bin/sh\necho never\n")
    (d / "noexec").chmod(0o644)
    (d / "dir").mkdir()
    return d


def interpreter_for(workdir: Path, kind: str) -> str:
    if kind in SH_TAGS:
        return str(workdir / kind)
    return {
        "echo": "/bin/echo",
        "missing": str(workdir / "missing"),
        "noexec": str(workdir / "noexec"),
        "dir": str(workdir / "dir"),
    }[kind]


@attrs.frozen
class Spec:
    """One entry of a scenario, before its interpreter path is known."""

    name: str
    kind: str
    flags: str
    enabled: bool
    ext: Optional[str] = None
    offset: int = 0
    magic: bytes = b""
    mask: Optional[bytes] = None

    def entry(self, workdir: Path) -> Entry:
        interp = interpreter_for(workdir, self.kind)
        if self.ext is not None:
            return Entry(
                self.name, interp, type=EntryType.EXTENSION, extension=self.ext, flags=self.flags
            )
        return Entry(
            self.name,
            interp,
            offset=self.offset,
            magic=self.magic,
            mask=self.mask,
            flags=self.flags,
        )


@attrs.frozen
class Scenario:
    specs: tuple[Spec, ...]
    content: bytes
    name: str
    enabled: bool


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    specs = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from([*SH_TAGS, *SH_TAGS, "echo", "missing", "noexec", "dir"]))
        flags = draw(st.sampled_from(["", "", "P", "O", "C", "F", "PF", "OC"]))
        if "F" in flags and kind in ("missing", "noexec", "dir"):
            flags = flags.replace("F", "")  # F needs an openable interpreter to register
        enabled = draw(st.integers(0, 5)) > 0
        if draw(st.integers(0, 4)) == 0:
            ext = draw(st.sampled_from(["zzx", "b", "x.y"]))
            specs.append(Spec(f"e{i}", kind, flags, enabled, ext=ext))
            continue
        size = draw(st.integers(1, 4))
        specs.append(
            Spec(
                f"e{i}",
                kind,
                flags,
                enabled,
                offset=draw(st.integers(0, 6)),
                magic=draw(st.binary(min_size=size, max_size=size)),
                mask=draw(st.one_of(st.none(), st.binary(min_size=size, max_size=size))),
            )
        )
    # The file: often built from an entry's magic so that something matches.
    content = draw(st.binary(max_size=16))
    source = draw(st.sampled_from(["random", "entry", "entry", "script"]))
    if source == "entry":
        spec = draw(st.sampled_from(specs))
        if spec.ext is None:
            content = content[: spec.offset].ljust(spec.offset, b"\0") + spec.magic
            content += draw(st.binary(max_size=4))
    elif source == "script":
        content = b"#!" + draw(st.sampled_from([b"SH:i1", b"SH:i2 arg", b"/nonexistent"])) + b"\n"
    return Scenario(
        specs=tuple(specs),
        content=content,
        name=draw(st.sampled_from(["f", "f.zzx", "f.b", "g.x.y", "h.y"])),
        enabled=draw(st.integers(0, 6)) > 0,
    )


def _run(box: Sandbox, path: str) -> tuple[Optional[str], Optional[list[str]]]:
    result = box.run(["ARGV0", "a1"], executable=path, timeout=20)
    if result.timed_out:
        return "TIMEOUT", None
    if result.errno is not None:
        return result.errno, None
    return None, result.stdout.decode(errors="replace").splitlines()


def _expected_output(verdict: Verdict) -> list[str]:
    """What runs last prints: a tagged script echoes its tag and "$@", echo its arguments.

    Walk the predicted chain; the last level whose interpreter is one of ours
    is the program that produced the output (deeper levels are how the
    kernel started it, e.g. /bin/sh for a tagged script).
    """
    level: Optional[Verdict] = verdict
    last = None
    while level is not None:
        interp = level.interpreter or ""
        if interp == "/bin/echo" or os.path.basename(interp) in SH_TAGS:
            last = level
        level = level.next
    assert last is not None, verdict
    argv = list(last.argv or ())
    if last.interpreter == "/bin/echo":
        return [" ".join(argv[1:])]
    return [f"TAG {os.path.basename(last.interpreter or '')}", *(f"ARG {a}" for a in argv[1:])]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_prediction_equals_execve(
    binfmt_sandbox: Sandbox, workdir: Path, scenario: Scenario
) -> None:
    """Which interpreter runs (with which argv), or which errno execve gives, is as predicted."""
    box = binfmt_sandbox
    box.reset()
    misc = box.misc
    for spec in scenario.specs:
        misc.register(spec.entry(workdir))
        if not spec.enabled:
            misc.disable(spec.name)
    if not scenario.enabled:
        misc.set_enabled(False)
    target = workdir / "file" / scenario.name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(scenario.content.replace(b"SH:", str(workdir).encode() + b"/"))
    target.chmod(stat.S_IRWXU)
    state = misc.state()
    # An entry matching /bin/sh or the scripts would hijack the sandbox helper's own
    # execs of them too; that is predicted (ELOOP) and compared like any other case.
    verdict = predict(str(target), state=state, host=Host.detect(), argv=["ARGV0", "a1"])
    err, output = _run(box, str(target))
    assume(err != "TIMEOUT")
    event(f"errno={err}")
    event(f"handler={verdict.handler}")
    assert err == verdict.errno, (verdict, output)
    if err is None:
        assert output == _expected_output(verdict), verdict
