"""Survey a container root: which programs run natively, emulated, as scripts, or not at all.

:func:`scan` walks a tree (an extracted image, or any directory) and
classifies every regular file with an exec bit — every ELF file too with
``all_files`` (those without an exec bit are judged as if they had one: what
their platform would need) — the way :func:`binfmt.prediction.predict` would, but built for
hundreds of thousands of files:

- one ``open``/``read(256)``/``close`` per file, and a struct decode of the
  ELF header (no pyelftools on this path);
- binfmt_misc lookups through a compiled :class:`~binfmt.matcher.Matcher`
  (one dict probe per distinct mask, not one test per entry);
- ``PT_INTERP`` read with two ``pread`` calls, and each loader, interpreter
  and entry judged once and cached.

It is safe on hostile trees: symlinks are never followed (a link is counted,
not entered or read), files are opened with ``O_NOFOLLOW|O_NONBLOCK`` so a
FIFO or device swapped in cannot block, at most 256 bytes (and the program
headers of dynamic ELF files) are read, unreadable and vanishing files are
counted, and directories are read as streams, so memory stays bounded on
huge trees. Failing files are listed up to ``max_listed``; all are counted.
"""

from __future__ import annotations

import errno as errnos
import os
import queue
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any, Callable, Optional

import attrs

from . import qemu
from .elf import ElfHeader, NotElf, program_interpreter
from .entry import Entry
from .errors import BinfmtError
from .host import Host
from .matcher import Matcher
from .prediction import Verdict, _Loop, _parse_shebang, _Predictor
from .procfs import State
from .rootfs import resolve

__all__ = ["KINDS", "FileResult", "ScanReport", "scan"]

#: What a file is found to be.
KINDS = ("native", "emulated", "script", "fails", "other")

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


@attrs.frozen
class FileResult:
    """One file's classification."""

    #: The path inside the scanned root (``/usr/bin/ls``).
    path: str
    #: One of :data:`KINDS`.
    kind: str
    #: OCI platform, or the QEMU target / machine name when there is none;
    #: ``"script"`` for scripts, ``"-"`` for other files.
    platform: str = "-"
    #: The binfmt_misc entry (emulated), script interpreter, or loader involved.
    via: Optional[str] = None
    #: For failures: a stable code (``no-handler``, ``loader-missing`` …) and why.
    reason: Optional[str] = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "platform": self.platform,
            "via": self.via,
            "reason": self.reason,
            "message": self.message,
        }


@attrs.frozen
class ScanReport:
    """The outcome of a scan: counts by platform and kind, and the failing files."""

    root: str
    #: ((platform, kind, via), count), most frequent first.
    summary: tuple[tuple[tuple[str, str, str], int], ...]
    failures: tuple[FileResult, ...]
    failures_total: int
    examined: int
    #: Things not classified: symlinks, special files, unreadable, vanished.
    skipped: tuple[tuple[str, int], ...]
    unreadable: tuple[str, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.failures_total == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "examined": self.examined,
            "summary": [
                {"platform": p, "kind": k, "via": v or None, "count": n}
                for (p, k, v), n in self.summary
            ],
            "failures": [f.to_dict() for f in self.failures],
            "failures_total": self.failures_total,
            "skipped": dict(self.skipped),
            "unreadable": list(self.unreadable),
            "seconds": round(self.seconds, 3),
        }

    def text(self) -> str:
        lines = [f"{self.root}: {self.examined} files examined in {self.seconds:.2f}s"]
        rows = [("PLATFORM", "KIND", "VIA", "FILES")]
        rows += [(p, k, v or "-", str(n)) for (p, k, v), n in self.summary]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            lines.append("  " + "  ".join(row[i].ljust(widths[i]) for i in range(4)).rstrip())
        skipped = ", ".join(f"{n} {what}" for what, n in self.skipped if n)
        if skipped:
            lines.append(f"not examined: {skipped}")
        if self.failures_total:
            lines.append(f"{self.failures_total} would fail:")
            for f in self.failures:
                via = f" via {f.via}" if f.via else ""
                lines.append(f"  {f.path}: {f.platform}{via}: {f.reason}: {f.message}")
            if self.failures_total > len(self.failures):
                lines.append(f"  … and {self.failures_total - len(self.failures)} more")
        else:
            lines.append("nothing would fail")
        return "\n".join(lines) + "\n"


def scan(
    rootfs: str,
    *,
    state: State,
    host: Host,
    all_files: bool = False,
    max_listed: int = 1000,
    jobs: int = 1,
    progress: Optional[IO[str]] = None,
    on_result: Optional[Callable[[FileResult], None]] = None,
) -> ScanReport:
    """Classify the programs under ``rootfs`` (see the module docstring).

    ``jobs`` > 1 reads directories in that many threads: it helps when the
    tree is not in the page cache (the reads then wait on the disk); on a
    cached tree Python's GIL makes it no faster (see ``docs/performance.rst``).
    ``progress``, when given (the CLI passes stderr if it is a terminal),
    gets a self-overwriting progress line. ``on_result`` is called with every
    file's :class:`FileResult` as it is classified (from the scanning thread).
    """
    root = os.path.abspath(rootfs)
    if not os.path.isdir(root):
        raise NotADirectoryError(errnos.ENOTDIR, f"{rootfs} is not a directory", rootfs)
    if jobs < 1:
        raise ValueError(f"invalid jobs {jobs}: must be at least 1")
    scanner = _Scanner(root, state, host, all_files, max_listed, progress, on_result)
    started = time.perf_counter()
    if jobs == 1:
        scanner.walk()
    else:
        scanner.walk_threaded(jobs)
    scanner.end_progress()
    return scanner.report(time.perf_counter() - started)


class _Scanner:
    def __init__(
        self,
        root: str,
        state: State,
        host: Host,
        all_files: bool,
        max_listed: int,
        progress: Optional[IO[str]],
        on_result: Optional[Callable[[FileResult], None]] = None,
    ) -> None:
        self.root = root
        self.on_result = on_result
        self.host = host
        self.rules = host.kernel
        self.state = state
        self.matcher = Matcher(state)
        self.predictor = _Predictor(state, host, root, "/", self.rules)
        self.all_files = all_files
        self.max_listed = max_listed
        self.progress = progress
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.failures: list[FileResult] = []
        self.failures_total = 0
        self.examined = 0
        self.skipped: Counter[str] = Counter()
        self.unreadable: list[str] = []
        self._targets: dict[bytes, Optional[qemu.Signature]] = {}
        self._loaders: dict[str, Optional[str]] = {}
        self._entries: dict[str, tuple[Optional[str], str]] = {}
        self._interpreters: dict[str, FileResult] = {}
        self._last_progress = 0.0
        self.lock = threading.Lock()

    # -- walking ------------------------------------------------------------------

    def walk(self) -> None:
        stack = [self.root]
        while stack:
            self._scan_directory(stack.pop(), stack.append)

    def walk_threaded(self, jobs: int) -> None:
        """The same walk, with ``jobs`` threads taking directories from a queue."""
        pending: queue.Queue[str] = queue.Queue()
        pending.put(self.root)

        def worker() -> None:
            while True:
                directory = pending.get()
                try:
                    self._scan_directory(directory, pending.put)
                finally:
                    pending.task_done()

        for _ in range(jobs):
            threading.Thread(target=worker, daemon=True).start()
        pending.join()

    def _scan_directory(self, directory: str, push: Callable[[str], None]) -> None:
        try:
            it = os.scandir(directory)
        except FileNotFoundError:
            self._skip("vanished")
            return
        except OSError:
            self._unreadable(directory)
            return
        with it:
            for entry in self._entries_of(it):
                self._visit(entry, push)

    def end_progress(self) -> None:
        if self.progress is not None:
            self.progress.write("\r\033[K")
            self.progress.flush()

    @staticmethod
    def _entries_of(it: Iterator[os.DirEntry[str]]) -> Iterator[os.DirEntry[str]]:
        while True:
            try:
                entry = next(it)
            except StopIteration:
                return
            except OSError:
                return  # the directory went away mid-read
            yield entry

    def _visit(self, entry: os.DirEntry[str], push: Callable[[str], None]) -> None:
        try:
            if entry.is_symlink():
                self._skip("symlinks")
                return
            if entry.is_dir(follow_symlinks=False):
                push(entry.path)
                return
            if not entry.is_file(follow_symlinks=False):
                self._skip("special files")
                return
            if not self.all_files and not entry.stat(follow_symlinks=False).st_mode & 0o111:
                return
        except FileNotFoundError:
            self._skip("vanished")
            return
        except OSError:
            self._unreadable(entry.path)
            return
        self._examine(entry.path)

    def _examine(self, path: str) -> None:
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            self._skip("vanished")
            return
        except OSError as exc:
            if exc.errno == errnos.ELOOP:  # became a symlink since it was listed
                self._skip("symlinks")
            else:
                self._unreadable(path)
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._skip("special files")
                return
            head = os.read(fd, self.rules.buffer_size)
            if self.all_files and not st.st_mode & 0o111 and not head.startswith(b"\x7fELF"):
                return
            result = self.classify(self._inside(path), head, fd, st.st_mode, 0)
        except OSError:
            self._unreadable(path)
            return
        finally:
            os.close(fd)
        self._count(result)
        self._tick()

    def _inside(self, path: str) -> str:
        rel = path[len(self.root) :]
        return rel if rel.startswith("/") else "/" + rel

    # -- classifying ----------------------------------------------------------------

    def classify(self, path: str, head: bytes, fd: int, mode: int, depth: int) -> FileResult:
        header: Optional[ElfHeader] = None
        sig: Optional[qemu.Signature] = None
        platform = "-"
        if head.startswith(b"\x7fELF"):
            try:
                header = ElfHeader.decode(head)
            except NotElf:
                header = None
            else:
                sig = self._target(head)
                platform = _platform_name(sig, header)
        entry = self.matcher.lookup(head, path)
        if entry is not None:
            return self._emulated(path, entry, header, sig, platform, fd)
        if head.startswith(b"#!"):
            return self._script(path, head, depth)
        if header is None or not header.is_executable_type:
            return FileResult(path, "other", platform)
        if sig is None or not self.host.runs_natively(sig.name):
            return FileResult(
                path,
                "fails",
                platform,
                reason="no-handler",
                message=f"{platform} binary: not native here and no binfmt_misc entry matches",
            )
        code, problem = self._loader_problem(fd, header)
        if code is not None:
            return FileResult(path, "fails", platform, reason=code, message=problem)
        return FileResult(path, "native", platform)

    def _emulated(
        self,
        path: str,
        entry: Entry,
        header: Optional[ElfHeader],
        sig: Optional[qemu.Signature],
        platform: str,
        fd: int,
    ) -> FileResult:
        err, message = self._entry_verdict(entry)
        if err is not None:
            return FileResult(path, "fails", platform, entry.name, err, message)
        if header is not None and sig is not None:
            # The emulator loads the binary's own PT_INTERP from the same root; a
            # header it cannot read is the emulator's problem, not a sure failure.
            code, problem = self._loader_problem(fd, header)
            if code == "loader-missing":
                return FileResult(path, "fails", platform, entry.name, code, problem)
        return FileResult(path, "emulated", platform, entry.name)

    def _script(self, path: str, head: bytes, depth: int) -> FileResult:
        parsed = _parse_shebang(head, self.rules.buffer_size)
        if parsed is None:
            return FileResult(
                path,
                "fails",
                "script",
                reason="bad-shebang",
                message="the #! line names no interpreter",
            )
        interp = parsed[0]
        inner = self._interpreter(interp, depth + 1)
        if inner.kind == "fails":
            return FileResult(
                path,
                "fails",
                "script",
                interp,
                inner.reason,
                f"interpreter {interp}: {inner.message}",
            )
        if inner.kind == "other":
            return FileResult(
                path,
                "fails",
                "script",
                interp,
                "script-interpreter-not-executable",
                f"interpreter {interp} is not an executable format",
            )
        return FileResult(path, "script", "script", interp)

    def _interpreter(self, interp: str, depth: int) -> FileResult:
        cached = self._interpreters.get(interp)
        if cached is not None:
            return cached
        result = self._judge_interpreter(interp, depth)
        self._interpreters[interp] = result
        return result

    def _judge_interpreter(self, interp: str, depth: int) -> FileResult:
        if depth > self.rules.max_rewrites:
            return FileResult(interp, "fails", reason="too-deep", message="too many rewrites")
        try:
            host_path = resolve(self.root, interp)
            fd = os.open(host_path, _OPEN_FLAGS & ~os.O_NOFOLLOW)
        except OSError as exc:
            return FileResult(
                interp,
                "fails",
                reason="script-interpreter-missing",
                message=f"not found in the root ({exc.strerror})",
            )
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
                return FileResult(
                    interp, "fails", reason="not-executable", message="not an executable file"
                )
            head = os.read(fd, self.rules.buffer_size)
            return self.classify(interp, head, fd, st.st_mode, depth)
        finally:
            os.close(fd)

    def _entry_verdict(self, entry: Entry) -> tuple[Optional[str], str]:
        """Whether an entry's interpreter starts in this root: judged once per entry."""
        cached = self._entries.get(entry.name)
        if cached is None:
            probe = Verdict(path="", exec_path="/", handler="none", argv=("/",))
            verdict = self.predictor.via_binfmt_misc(probe, b"", [entry], _Loop())
            errors = [
                f for f in verdict.findings if f.severity == "error" and f.code != "hijacks-native"
            ]
            if verdict.errno is None:
                cached = (None, "")
            else:
                code = errors[-1].code if errors else verdict.errno
                message = errors[-1].message if errors else f"exec fails with {verdict.errno}"
                cached = (code, message)
            self._entries[entry.name] = cached
        return cached

    def _loader_problem(self, fd: int, header: ElfHeader) -> tuple[Optional[str], str]:
        """(code, message) if the binary's dynamic loader is unusable, else (None, "")."""
        try:
            loader = program_interpreter(fd, header)
        except (BinfmtError, OSError) as exc:
            return "invalid-elf", f"unreadable program headers: {exc}"
        if loader is None:
            return None, ""
        if loader not in self._loaders:
            try:
                resolve(self.root, loader)
                self._loaders[loader] = None
            except OSError as exc:
                self._loaders[loader] = f"its loader {loader} is not in the root ({exc.strerror})"
        problem = self._loaders[loader]
        return ("loader-missing", problem) if problem is not None else (None, "")

    def _target(self, head: bytes) -> Optional[qemu.Signature]:
        # The signature depends on e_ident, e_type, e_machine and (MIPS) e_flags.
        key = head[4:20] + head[36:40]
        if key not in self._targets:
            self._targets[key] = qemu.match_header(head)
        return self._targets[key]

    # -- bookkeeping -----------------------------------------------------------------

    # Counters are shared by the threads of walk_threaded(); updates take the lock.

    def _count(self, result: FileResult) -> None:
        via = result.via if result.kind in ("emulated", "script") else ""
        if self.on_result is not None:
            self.on_result(result)
        with self.lock:
            self.examined += 1
            self.counts[(result.platform, result.kind, via or "")] += 1
            if result.kind == "fails":
                self.failures_total += 1
                if len(self.failures) < self.max_listed:
                    self.failures.append(result)

    def _skip(self, what: str) -> None:
        with self.lock:
            self.skipped[what] += 1

    def _unreadable(self, path: str) -> None:
        with self.lock:
            self.skipped["unreadable"] += 1
            if len(self.unreadable) < self.max_listed:
                self.unreadable.append(self._inside(path))

    def _tick(self) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last_progress >= 0.2:
            self._last_progress = now
            self.progress.write(f"\rscanning: {self.examined} files examined")
            self.progress.flush()

    def report(self, seconds: float) -> ScanReport:
        order = ("symlinks", "special files", "unreadable", "vanished")
        return ScanReport(
            root=self.root,
            summary=tuple(self.counts.most_common()),
            failures=tuple(self.failures),
            failures_total=self.failures_total,
            examined=self.examined,
            skipped=tuple((k, self.skipped[k]) for k in order),
            unreadable=tuple(self.unreadable),
            seconds=seconds,
        )


def _platform_name(sig: Optional[qemu.Signature], header: ElfHeader) -> str:
    if sig is None:
        return header.machine_name
    return sig.platforms[0] if sig.platforms else sig.name
