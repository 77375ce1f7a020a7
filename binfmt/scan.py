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
huge trees. Failing files are listed up to ``max_listed`` (the first in path
order, so the report is the same however the tree was walked); all are counted.

**Processes.** With ``jobs`` above 1 the tree is cut into directory shards
(its first levels, breadth first) that ``jobs`` forked processes take one at
a time; each judges its shards with its own model, and the parent adds their
counts up. The verdicts are the same as with one job. Threads were measured
and dropped: the work is Python's, so they contend for the interpreter lock
(``docs/performance.rst``).

**Archives.** :func:`scan_archive` classifies the tree of an image archive
(:mod:`binfmt.archive`) without extracting it, with the same model, reading
through an :class:`~binfmt.archive.ArchiveRoot`; its report is the one a scan
of the extracted tree gives.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import os
import pickle
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, Callable, Literal, Optional, Union, get_args

import attrs

from .errors import InvalidValue
from .host import Host
from .kernel import KernelRules
from .prediction import ExecModel, OpenedFile, Verdict
from .procfs import State
from .rootfs import ExecFile

# Files per work item when the first levels' files are shared out.
_BATCH = 64
# open_exec_file()'s flags, and O_NOFOLLOW: a symlink swapped in is not followed.
_OPEN_NOFOLLOW = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | os.O_NOFOLLOW

if TYPE_CHECKING:
    from .archive import Archive, ArchiveRoot, Node

__all__ = [
    "KINDS",
    "FileResult",
    "Kind",
    "ScanReport",
    "classify",
    "default_jobs",
    "scan",
    "scan_archive",
]

Kind = Literal["native", "emulated", "script", "fails", "other"]
#: What a file is found to be.
KINDS: tuple[Kind, ...] = get_args(Kind)

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
        platform = verdict.program
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
    #: An archive's members left out of its tree (names climbing out of the root,
    #: hard links to nothing …), up to 100, and how many there were.
    warnings: tuple[str, ...] = ()
    warnings_total: int = 0

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
            "warnings": list(self.warnings),
            "warnings_total": self.warnings_total,
        }


def default_jobs() -> int:
    """How many processes :func:`scan` uses by default: one per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


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
    kernel: Optional[KernelRules] = None,
    this_machine: bool = True,
) -> ScanReport:
    """Classify the programs under ``rootfs`` (see the module docstring).

    ``jobs`` processes share the work (1, the default, walks in this process;
    the command line's default is :func:`default_jobs`, one per CPU).
    ``progress``, when given (the CLI passes stderr if it is a terminal),
    gets a self-overwriting progress line. ``on_result`` is
    called in this process with every file's :class:`FileResult` (with more
    than one job, after each shard, the results then carrying their verdicts
    across). ``kernel`` and ``this_machine`` are :class:`~binfmt.prediction.ExecModel`'s:
    for another node, its rules and ``False``. Raises
    :class:`~binfmt.errors.InvalidValue` for a ``rootfs`` that is not a
    directory or ``jobs`` below 1.
    """
    root = os.path.abspath(rootfs)
    if not os.path.isdir(root):
        raise InvalidValue("rootfs", rootfs, "not a directory")
    if jobs < 1:
        raise InvalidValue("jobs", jobs, "must be at least 1")
    model = ExecModel(
        state, host, rootfs=root, many_files=True, kernel=kernel, this_machine=this_machine
    )
    scanner = _Scanner(root, model, all_files, max_listed, progress, on_result)
    started = time.perf_counter()
    if jobs == 1:
        scanner.walk()
    else:
        scanner.walk_forked(jobs)
    scanner.end_progress()
    return scanner.report(time.perf_counter() - started)


def scan_archive(
    archives: Union[Archive, Sequence[Union[str, IO[bytes]]]],
    *,
    state: State,
    host: Host,
    all_files: bool = False,
    max_listed: int = 1000,
    progress: Optional[IO[str]] = None,
    on_result: Optional[Callable[[FileResult], None]] = None,
    kernel: Optional[KernelRules] = None,
    this_machine: bool = True,
) -> ScanReport:
    """Classify the programs of an image archive without extracting it.

    ``archives`` is an :class:`~binfmt.archive.Archive`, or tar streams (paths,
    ``"-"`` for standard input, binary files) read with
    :func:`~binfmt.archive.read_archive`: one root filesystem (``docker
    export``), or an image's layers, lowest first. The report is the one
    :func:`scan` gives for the extracted tree (paths are the tree's), plus the
    members left out (:attr:`ScanReport.warnings`). Raises
    :class:`~binfmt.errors.ArchiveError` for an archive that cannot be read to the end.
    """
    from .archive import Archive, ArchiveRoot, read_archive

    started = time.perf_counter()
    archive = (
        archives if isinstance(archives, Archive) else read_archive(archives, all_files=all_files)
    )
    fs = ArchiveRoot(archive)
    model = ExecModel(
        state, host, rootfs=fs, many_files=True, kernel=kernel, this_machine=this_machine
    )
    scanner = _Scanner(fs.label, model, all_files, max_listed, progress, on_result)
    scanner.walk_archive(fs)
    scanner.end_progress()
    return attrs.evolve(
        scanner.report(time.perf_counter() - started),
        warnings=archive.warnings,
        warnings_total=archive.warnings_total,
    )


#: The kinds of files that are not examined, in the order reports list them.
_SKIPPED = ("symlinks", "special files", "unreadable", "vanished")


@attrs.define
class _Tally:
    """What a scan (or one shard of it) found: plain data, added up across processes."""

    counts: Counter[tuple[str, str, str]] = attrs.field(factory=Counter)
    failures: list[FileResult] = attrs.field(factory=list)
    failures_total: int = 0
    examined: int = 0
    skipped: Counter[str] = attrs.field(factory=Counter)
    unreadable: list[str] = attrs.field(factory=list)
    #: Every result, when a caller asked for them (``on_result`` with processes).
    results: list[FileResult] = attrs.field(factory=list)

    def add(self, other: _Tally, max_listed: int) -> None:
        self.counts.update(other.counts)
        self.failures.extend(other.failures)
        self.failures_total += other.failures_total
        self.examined += other.examined
        self.skipped.update(other.skipped)
        self.unreadable.extend(other.unreadable)
        self.trim(max_listed)

    def trim(self, max_listed: int, final: bool = False) -> None:
        """Keep the ``max_listed`` first failures (and unreadable paths) in path order."""
        if final or len(self.failures) > 2 * max_listed:
            self.failures.sort(key=lambda f: f.path)
            del self.failures[max_listed:]
        if final or len(self.unreadable) > 2 * max_listed:
            self.unreadable.sort()
            del self.unreadable[max_listed:]


class _Scanner:
    def __init__(
        self,
        root: str,
        model: ExecModel,
        all_files: bool,
        max_listed: int,
        progress: Optional[IO[str]],
        on_result: Optional[Callable[[FileResult], None]] = None,
    ) -> None:
        self.root = root
        self.on_result = on_result
        self.model = model
        self.buffer_size = self.model.rules.buffer_size
        self.all_files = all_files
        self.max_listed = max_listed
        self.progress = progress
        self.tally = _Tally()
        #: What to cut from a path of this machine to have it inside the root.
        self._cut = 0 if root == "/" else len(root)
        self._keep_results = False  # in a worker process, for on_result in the parent
        self._last_progress = 0.0

    # -- walking a directory --------------------------------------------------------

    def walk(self, stack: Optional[list[str]] = None) -> None:
        stack = [self.root] if stack is None else stack
        while stack:
            self._scan_directory(stack.pop(), stack.append)

    def _scan_directory(
        self,
        directory: str,
        push: Callable[[str], None],
        examine: Optional[Callable[[str], None]] = None,
    ) -> None:
        # The per-file path is written out flat: at ~120,000 files for /usr, every
        # call and context manager shows in the ratio to the bare loop.
        try:
            it = os.scandir(directory)
        except FileNotFoundError:
            self._skip("vanished")
            return
        except OSError:
            self._unreadable(directory)
            return
        all_files = self.all_files
        examine = examine or self._examine
        with it:
            try:
                for entry in it:
                    try:
                        if entry.is_symlink():
                            self._skip("symlinks")
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            push(entry.path)
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            self._skip("special files")
                            continue
                        if not all_files and not entry.stat(follow_symlinks=False).st_mode & 0o111:
                            continue
                    except FileNotFoundError:
                        self._skip("vanished")
                        continue
                    except OSError:
                        self._unreadable(entry.path)
                        continue
                    examine(entry.path)
            except OSError:
                pass  # the directory went away mid-read

    def end_progress(self) -> None:
        if self.progress is not None:
            self.progress.write("\r\033[K")
            self.progress.flush()

    def _examine(self, path: str) -> None:
        """:func:`~binfmt.rootfs.open_exec_file` with ``follow=False``, inlined."""
        try:
            fd = os.open(path, _OPEN_NOFOLLOW)
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
            mode = st.st_mode
            if not stat.S_ISREG(mode):
                self._skip("special files")
                return
            size = self.buffer_size
            head = os.read(fd, size)
            if len(head) < size and len(head) < st.st_size:
                # The rare short read before the end of the file: read on.
                while len(head) < size:
                    more = os.read(fd, size - len(head))
                    if not more:
                        break
                    head += more
            if not mode & 0o111 and not head.startswith(b"\x7fELF"):
                return  # --all: only ELF files without exec bits are judged
            inside = path[self._cut :] or "/"
            verdict = self.model.judge(
                ExecFile(path, fd, mode, head), inside, as_executable=not mode & 0o111
            )
        except OSError:
            self._unreadable(path)
            return
        finally:
            os.close(fd)
        self._count(FileResult.of(inside, verdict))
        if self.progress is not None:
            self._tick()

    def _judge(self, file: OpenedFile, inside: str) -> None:
        executable = bool(file.mode & 0o111)
        if not executable and not file.head.startswith(b"\x7fELF"):
            return  # --all: only ELF files without exec bits are judged
        verdict = self.model.judge(file, inside, as_executable=not executable)
        self._count(FileResult.of(inside, verdict))
        self._tick()

    def _inside(self, path: str) -> str:
        return path[self._cut :] or "/"

    # -- walking in processes -----------------------------------------------------------

    def walk_forked(self, jobs: int) -> None:
        """The walk, by ``jobs`` forked processes taking directory shards one at a time."""
        shards = self._shards(jobs * 16)
        if len(shards) < 2:
            for shard in shards:
                self._take(shard)  # nothing worth sharing out
            return
        # Shard numbers wait in a pipe (4-byte reads are atomic), so a process
        # that finishes early takes the next; each writes its tally to a file.
        with contextlib.ExitStack() as stack:
            outputs = [
                stack.enter_context(tempfile.TemporaryFile()) for _ in range(min(jobs, len(shards)))
            ]
            tasks_r, tasks_w = os.pipe()
            done_r, done_w = os.pipe()
            pids = []
            try:
                for output in outputs:
                    pid = os.fork()
                    if pid == 0:  # pragma: no cover - the child, measured by the parent's tests
                        os.close(tasks_w)
                        os.close(done_r)
                        self._work(shards, tasks_r, done_w, output)
                    pids.append(pid)
                os.close(tasks_r)
                os.close(done_w)
                tasks = memoryview(b"".join(i.to_bytes(4, "little") for i in range(len(shards))))
                with contextlib.suppress(BrokenPipeError):  # all workers gone: see below
                    while tasks:  # the workers read as it goes
                        tasks = tasks[os.write(tasks_w, tasks) :]
                os.close(tasks_w)
                self._follow(done_r)
            finally:
                for pid in pids:
                    os.waitpid(pid, 0)
                os.close(done_r)
            for output in outputs:
                output.seek(0)
                try:
                    outcome, value = pickle.load(output)
                except EOFError:
                    raise OSError(errnos.ECHILD, "a scanning process died") from None
                if outcome == "error":
                    raise value
                self._merge(value)

    def _shards(self, wanted: int) -> list[Union[str, list[str]]]:
        """Work for the processes: directories, breadth first from the root until there
        are ``wanted``, and the files met on the way in batches."""
        level = [self.root]
        files: list[str] = []
        while 0 < len(level) < wanted:
            below: list[str] = []
            for directory in level:
                self._scan_directory(directory, below.append, files.append)
            level = below
        batches = [files[i : i + _BATCH] for i in range(0, len(files), _BATCH)]
        return [*level, *batches]

    def _take(self, shard: Union[str, list[str]]) -> None:
        if isinstance(shard, str):
            self.walk([shard])
        else:
            for path in shard:
                self._examine(path)

    def _work(
        self, shards: list[Union[str, list[str]]], tasks: int, done: int, output: IO[bytes]
    ) -> None:
        """A worker process: take shards until none is left, write the tally, exit."""
        status = 0
        try:
            self.tally = _Tally()
            self.progress = None
            self._keep_results = self.on_result is not None
            while True:
                data = os.read(tasks, 4)
                if len(data) < 4:
                    break
                before = self.tally.examined
                self._take(shards[int.from_bytes(data, "little")])
                os.write(done, (self.tally.examined - before).to_bytes(4, "little"))
            result: tuple[str, Any] = ("ok", self.tally)
            try:
                pickle.dump(result, output)
            except Exception as exc:  # a verdict that does not pickle: say so
                output.seek(0)
                output.truncate()
                pickle.dump(("error", exc), output)
        except BaseException as exc:  # reported to the parent, whatever it is
            status = 1
            output.seek(0)
            output.truncate()
            pickle.dump(("error", exc), output)
        finally:
            output.flush()
            os._exit(status)

    def _follow(self, done: int) -> None:
        """Read the processes' progress until they have all finished."""
        total = self.tally.examined
        while True:
            data = os.read(done, 4096)
            if not data:
                return
            for i in range(0, len(data) - len(data) % 4, 4):
                total += int.from_bytes(data[i : i + 4], "little")
            if self.progress is not None:
                self._show(total)

    def _merge(self, tally: _Tally) -> None:
        if self.on_result is not None:
            for result in tally.results:
                self.on_result(result)
        tally.results = []
        self.tally.add(tally, self.max_listed)

    # -- walking an archive's tree --------------------------------------------------------

    def walk_archive(self, fs: ArchiveRoot) -> None:
        stack: list[tuple[str, Node]] = [("", fs.archive.root)]
        buffer_size = self.buffer_size
        while stack:
            prefix, directory = stack.pop()
            assert directory.children is not None
            for name, node in directory.children.items():
                path = f"{prefix}/{name}"
                mode = node.mode
                if stat.S_ISLNK(mode):
                    self._skip("symlinks")
                elif node.children is not None:
                    stack.append((path, node))
                elif not stat.S_ISREG(mode):
                    self._skip("special files")
                elif self.all_files or mode & 0o111:
                    try:
                        file = fs.file(path, node, buffer_size)
                    except OSError:
                        self._unreadable(path)
                        continue
                    self._judge(file, path)

    # -- bookkeeping -----------------------------------------------------------------

    def _count(self, result: FileResult) -> None:
        via = result.via if result.kind in ("emulated", "script") else ""
        tally = self.tally
        if self.on_result is not None:
            if self._keep_results:
                tally.results.append(result)
            else:
                self.on_result(result)
        tally.examined += 1
        tally.counts[(result.platform, result.kind, via or "")] += 1
        if result.kind == "fails":
            tally.failures_total += 1
            tally.failures.append(result)
            if len(tally.failures) > 2 * self.max_listed:
                tally.trim(self.max_listed)

    def _skip(self, what: str) -> None:
        self.tally.skipped[what] += 1

    def _unreadable(self, path: str) -> None:
        self.tally.skipped["unreadable"] += 1
        self.tally.unreadable.append(self._inside(path) if path.startswith(self.root) else path)
        if len(self.tally.unreadable) > 2 * self.max_listed:
            self.tally.trim(self.max_listed)

    def _tick(self) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last_progress >= 0.2:
            self._last_progress = now
            self._show(self.tally.examined)

    def _show(self, examined: int) -> None:
        assert self.progress is not None
        self.progress.write(f"\rscanning: {examined} files examined")
        self.progress.flush()

    def report(self, seconds: float) -> ScanReport:
        tally = self.tally
        tally.trim(self.max_listed, final=True)
        summary = sorted(tally.counts.items(), key=lambda item: (-item[1], item[0]))
        return ScanReport(
            root=self.root,
            summary=tuple(summary),
            failures=tuple(tally.failures),
            failures_total=tally.failures_total,
            examined=tally.examined,
            skipped=tuple((k, tally.skipped[k]) for k in _SKIPPED),
            unreadable=tuple(tally.unreadable),
            seconds=seconds,
        )
