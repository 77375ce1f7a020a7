"""Survey a container root: which programs run natively, emulated, as scripts, or not at all.

:func:`scan` walks a tree (an extracted image, or any directory) and
classifies every regular file with an exec bit — every ELF file too with
``all_files`` (those without an exec bit are judged as if they had one: what
their platform would need). Every decision is :class:`~binfmt.prediction.ExecModel`'s,
the model behind :func:`~binfmt.predict`, so a file's verdict in a scan is the
verdict ``predict`` gives it; the scan adds what a whole tree needs:

- one ``open``/``read(256)``/``close`` per file, and a struct decode of the
  ELF header (no pyelftools on this path);
- binfmt_misc lookups through a compiled :class:`~binfmt.matcher.Matcher`
  (one dict probe per distinct mask, not one test per entry);
- ``PT_INTERP`` read with two ``pread`` calls, and each loader and each
  interpreter (with its place in the rewrite chain) judged once and reused.

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
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any, Callable, Literal, Optional

import attrs

from .errors import InvalidValue
from .host import Host
from .prediction import ExecModel, Verdict
from .procfs import State
from .rootfs import open_exec_file

__all__ = ["KINDS", "FileResult", "Kind", "ScanReport", "classify", "scan"]

Kind = Literal["native", "emulated", "script", "fails", "other"]
#: What a file is found to be.
KINDS: tuple[Kind, ...] = ("native", "emulated", "script", "fails", "other")

_RUNS_AS: dict[str, Kind] = {"native": "native", "binfmt_misc": "emulated", "script": "script"}
# Refusals that say "this is not a program at all", not "this program fails".
_NOT_PROGRAMS = ("unknown-format", "not-executable-elf")


def classify(verdict: Verdict) -> Kind:
    """What a scan calls a file, from its verdict."""
    if verdict.runs:
        return _RUNS_AS[verdict.handler]
    problem = verdict.problem
    if verdict.handler == "none" and problem is not None and problem.code in _NOT_PROGRAMS:
        return "other"
    return "fails"


@attrs.frozen
class FileResult:
    """One file's classification."""

    #: The path inside the scanned root (``/usr/bin/ls``).
    path: str
    #: One of :data:`KINDS`.
    kind: Kind
    #: OCI platform, or the QEMU target / machine name when there is none;
    #: ``"script"`` for scripts, ``"-"`` for other files.
    platform: str = "-"
    #: The binfmt_misc entry (emulated) or script interpreter involved.
    via: Optional[str] = None
    #: For failures: the code of the finding that decides it
    #: (:data:`binfmt.findings.CODES`: ``no-handler``, ``loader-missing`` …) and its message.
    reason: Optional[str] = None
    message: str = ""
    #: The verdict behind it (not part of the JSON document).
    verdict: Optional[Verdict] = attrs.field(default=None, eq=False, repr=False)

    @classmethod
    def of(cls, path: str, verdict: Verdict) -> FileResult:
        """The result for the file at ``path`` (inside the root) with this verdict."""
        if verdict.elf is not None:
            platform = verdict.platform or verdict.target or verdict.elf.machine_name
        elif verdict.handler == "script":
            platform = "script"
        else:
            platform = "-"
        via = {"binfmt_misc": verdict.entry, "script": verdict.interpreter}.get(verdict.handler)
        kind = classify(verdict)
        problem = verdict.problem if kind == "fails" else None
        return cls(
            path,
            kind,
            platform,
            via,
            problem.code if problem is not None else None,
            problem.message if problem is not None else "",
            verdict,
        )

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
    Raises :class:`~binfmt.errors.InvalidValue` for a ``rootfs`` that is not a
    directory or ``jobs`` below 1.
    """
    root = os.path.abspath(rootfs)
    if not os.path.isdir(root):
        raise InvalidValue("rootfs", rootfs, "not a directory")
    if jobs < 1:
        raise InvalidValue("jobs", jobs, "must be at least 1")
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
        self.model = ExecModel(state, host, rootfs=root, many_files=True)
        self.buffer_size = self.model.rules.buffer_size
        self.all_files = all_files
        self.max_listed = max_listed
        self.progress = progress
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.failures: list[FileResult] = []
        self.failures_total = 0
        self.examined = 0
        self.skipped: Counter[str] = Counter()
        self.unreadable: list[str] = []
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
            with open_exec_file(path, self.buffer_size, follow=False) as file:
                if not file.regular:
                    self._skip("special files")
                    return
                executable = bool(file.mode & 0o111)
                if not executable and not file.head.startswith(b"\x7fELF"):
                    return  # --all: only ELF files without exec bits are judged
                inside = self._inside(path)
                verdict = self.model.judge(file, inside, as_executable=not executable)
        except FileNotFoundError:
            self._skip("vanished")
            return
        except OSError as exc:
            if exc.errno == errnos.ELOOP:  # became a symlink since it was listed
                self._skip("symlinks")
            else:
                self._unreadable(path)
            return
        self._count(FileResult.of(inside, verdict))
        self._tick()

    def _inside(self, path: str) -> str:
        rel = path[len(self.root) :]
        return rel if rel.startswith("/") else "/" + rel

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
