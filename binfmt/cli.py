"""``python -m binfmt`` / ``binfmt``: the command line.

Every command prints text for people by default and a documented JSON
document with ``--json``. Exit status: 0 success, 1 the command ran but found
a failure (not mounted, a binary that would not run …), 2 usage errors.
Errors are one line on stderr, ``binfmt: error: …``, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, Optional

from .errors import BinfmtError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(_join_dash_values(sys.argv[1:] if argv is None else list(argv)))
    handler: Optional[Handler] = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        print("binfmt: error: a command is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except BrokenPipeError:
        # The reader went away (``binfmt status | head``): not an error to report.
        _silence_stdout()
        return EXIT_FAILURE
    except BinfmtError as exc:
        return fail(exc)
    except OSError as exc:
        # Anything the OS refused that the library did not translate.
        return fail(exc)
    except KeyboardInterrupt:
        return 130


# Options whose values start with '-' (``--qemu-suffix -static``, as QEMU's
# script spells it); argparse would take the value for an option.
_DASH_VALUE_OPTIONS = ("--qemu-suffix",)


def _join_dash_values(argv: list[str]) -> list[str]:
    """``--qemu-suffix -static`` → ``--qemu-suffix=-static``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _DASH_VALUE_OPTIONS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def not_a_directory(path: Optional[str], option: str) -> Optional[int]:
    """The usage error for a directory option that is not one, or ``None`` if it is.

    Checked after parsing, not by an argparse type, so that parsing a command
    line stays independent of the machine it is parsed on.
    """
    import os

    if path is None or os.path.isdir(path):
        return None
    return fail(ValueError(f"invalid {option} {path!r}: not a directory"), EXIT_USAGE)


def fail(exc: BaseException, status: int = EXIT_FAILURE) -> int:
    """Print ``exc`` as the one-line error and return ``status``."""
    message = str(exc).replace("\n", " ")
    print(f"binfmt: error: {message}", file=sys.stderr)
    return status


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def emit_report(args: argparse.Namespace, document: Any, text: str) -> None:
    """``--json`` prints the document, otherwise the text."""
    if args.json:
        emit_json(document)
    else:
        sys.stdout.write(text)


def emit_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def printable(text: str) -> str:
    """Show control characters and undecodable bytes escaped, so one entry stays one line."""
    if text.isprintable():
        return text
    return (
        text.encode("utf-8", "surrogateescape")
        .decode("ascii", "backslashreplace")
        .translate(_CONTROL)
    )


_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {0x7F: "\\x7f"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("binfmt")
    except PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version`` without reading package metadata at start-up."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"binfmt {_version()}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as the one line every other error is."""

    def error(self, message: str) -> NoReturn:
        where = "" if self.prog == "binfmt" else f"{self.prog}: "
        self.exit(EXIT_USAGE, f"binfmt: error: {where}{message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="binfmt",
        description="Inspect, predict and manage Linux binfmt_misc (QEMU user-mode emulation).",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    _add_status(commands)
    _add_check(commands)
    _add_install(commands)
    _add_uninstall(commands)
    _add_export(commands)
    _add_load(commands)
    _add_verify(commands)
    _add_scan(commands)
    _add_doctor(commands)
    return parser


def _procfs_option(parser: argparse.ArgumentParser) -> None:
    from .procfs import DEFAULT_PATH

    parser.add_argument(
        "--procfs",
        metavar="DIR",
        default=DEFAULT_PATH,
        help=f"the binfmt_misc directory (default: {DEFAULT_PATH})",
    )


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON document")


# -- status -----------------------------------------------------------------


def _add_status(commands: Any) -> None:
    p = commands.add_parser(
        "status",
        help="show binfmt_misc's state: mount, switch, entries in lookup order",
        description="Show binfmt_misc's state: whether it is mounted and enabled, the host, "
        "and every entry in the kernel's lookup order (newest first, the first match wins).",
    )
    _procfs_option(p)
    _json_option(p)
    p.add_argument(
        "--format",
        choices=("text", "json", "nfd"),
        help="text (default), json (same as --json), or nfd: a node-feature-discovery "
        "feature file with one binfmt.<platform>=true line per platform the node can run",
    )
    p.add_argument(
        "--nfd-expiry",
        type=_positive_int,
        metavar="SECONDS",
        help="with --format nfd: the labels expire after SECONDS unless the file is "
        "rewritten (NFD's '# +expiry-time' directive), so they vanish with the writer",
    )
    p.add_argument(
        "--output",
        metavar="FILE",
        help="write to FILE atomically instead of printing (e.g. "
        "/etc/kubernetes/node-feature-discovery/features.d/binfmt)",
    )
    p.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from .host import Host
    from .procfs import BinfmtMisc
    from .report import nfd_features, status_document, status_text

    misc = BinfmtMisc(args.procfs)
    state = misc.state()
    host = Host.detect()
    form = "json" if args.json else (args.format or "text")
    if form == "json":
        text = json.dumps(status_document(state, host), indent=2, ensure_ascii=False) + "\n"
    elif form == "nfd":
        text = nfd_features(state, host, expiry=args.nfd_expiry)
    else:
        text = status_text(state, host)
    if args.output:
        import os

        from .persist import write_files

        directory, name = os.path.split(os.path.abspath(args.output))
        write_files(directory, {name: text})
    else:
        sys.stdout.write(text)
    if not state.mounted:
        misc.require_mounted()  # raises NotMounted, whose message says how to mount
    return EXIT_OK


# -- check ------------------------------------------------------------------


def _add_check(commands: Any) -> None:
    p = commands.add_parser(
        "check",
        help="predict what the kernel does when each file is executed",
        description="Predict, for each file, which handler the kernel picks (binfmt_misc entry, "
        "#! script, native ELF), the interpreter and argv, and whether the exec works — with "
        "the reasons when it does not. Exit 0 if every file would run, 1 if any would fail.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files to check")
    p.add_argument(
        "--rootfs",
        metavar="DIR",
        default="/",
        help="the root the exec happens in (a container's extracted root); interpreters and "
        "loaders are looked up there (default: /)",
    )
    _procfs_option(p)
    _json_option(p)
    p.set_defaults(handler=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from .host import Host
    from .prediction import predict
    from .procfs import BinfmtMisc

    error = not_a_directory(args.rootfs, "--rootfs")
    if error is not None:
        return error
    state = BinfmtMisc(args.procfs).state()
    if not state.mounted:
        print(
            f"binfmt: warning: binfmt_misc is not mounted at {args.procfs}: "
            "predicting as if no entry were registered",
            file=sys.stderr,
        )
    host = Host.detect()
    verdicts = [predict(path, state=state, host=host, rootfs=args.rootfs) for path in args.paths]
    if args.json:
        emit_json([v.to_dict() for v in verdicts])
    else:
        from .report import verdict_text

        for verdict in verdicts:
            sys.stdout.write(verdict_text(verdict))
    return EXIT_OK if all(v.runs for v in verdicts) else EXIT_FAILURE


# -- install / uninstall ------------------------------------------------------------


def _change_options(p: argparse.ArgumentParser, quiet: bool = True) -> None:
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and the exact register lines; write nothing",
    )
    if quiet:
        p.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            help="print the plan only when something changes (errors are always printed)",
        )
    _procfs_option(p)
    _json_option(p)


def _install_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--qemu-path",
        metavar="DIR",
        help="directory of the QEMU binaries (default: found in /usr/bin, /usr/local/bin, PATH)",
    )
    p.add_argument(
        "--qemu-suffix",
        metavar="SUFFIX",
        help="appended to qemu-TARGET, e.g. -static (default: -static if present, else none)",
    )
    p.add_argument(
        "--persistent",
        action="store_true",
        help="flag F: the kernel opens QEMU now, so containers need not contain it",
    )
    p.add_argument(
        "--credential",
        action="store_true",
        help="flags OC: setuid binaries keep their privileges (security risk: see the docs)",
    )
    p.add_argument(
        "--preserve-argv0",
        action="store_true",
        help="flag P: pass argv[0] on (QEMU must support it, e.g. Debian's wrappers)",
    )


def _add_install(commands: Any) -> None:
    p = commands.add_parser(
        "install",
        help="register QEMU for foreign architectures",
        description="Register QEMU user-mode emulation for the given targets (QEMU names, "
        "aliases such as arm64 or armhf, OCI platforms such as linux/arm/v7, or 'all'). "
        "Targets the host runs natively are skipped. All or nothing: if one registration "
        "fails, the others made by this run are removed again.",
    )
    p.add_argument("targets", nargs="+", metavar="TARGET", help="targets, or 'all'")
    _install_options(p)
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace an existing entry of the same name that differs",
    )
    p.add_argument(
        "--refresh",
        action="store_true",
        help="re-register identical entries too: after a QEMU upgrade, F entries keep "
        "running the old file until registered again",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="also register targets the host runs natively (and entries that capture them)",
    )
    _change_options(p)
    p.set_defaults(handler=_run_install)


def _install_options_from(args: argparse.Namespace) -> Any:
    from .install import InstallOptions

    return InstallOptions(
        qemu_path=args.qemu_path,
        qemu_suffix=args.qemu_suffix,
        persistent=args.persistent,
        credential=args.credential,
        preserve_argv0=args.preserve_argv0,
        replace=getattr(args, "replace", False),
        refresh=getattr(args, "refresh", False),
        force=getattr(args, "force", False),
    )


def _run_install(args: argparse.Namespace) -> int:
    from .host import Host
    from .install import plan
    from .procfs import BinfmtMisc

    misc = BinfmtMisc(args.procfs)
    misc.require_mounted()
    host = Host.detect()
    options = _install_options_from(args)
    return _carry_out(lambda state: plan(args.targets, options, state=state, host=host), misc, args)


def _add_uninstall(commands: Any) -> None:
    p = commands.add_parser(
        "uninstall",
        help="remove named entries, or QEMU's entries for targets",
        description="Remove entries: a NAME removes that entry, whoever made it; a TARGET "
        "(arm64, linux/arm/v7 …) removes only QEMU's entries for it; --all-qemu every QEMU "
        "entry. Other registrants (WSLInterop, Rosetta, FEX, language runtimes) are never "
        "touched unless named, and the global status is never written.",
    )
    p.add_argument("names", nargs="*", metavar="NAME|TARGET")
    p.add_argument("--all-qemu", action="store_true", help="remove every QEMU entry")
    _change_options(p)
    p.set_defaults(handler=_run_uninstall)


def _run_uninstall(args: argparse.Namespace) -> int:
    from .install import plan_uninstall
    from .procfs import BinfmtMisc

    if not args.names and not args.all_qemu:
        return fail(ValueError("name entries or targets to remove, or pass --all-qemu"), EXIT_USAGE)
    misc = BinfmtMisc(args.procfs)
    misc.require_mounted()
    return _carry_out(
        lambda state: plan_uninstall(args.names, all_qemu=args.all_qemu, state=state), misc, args
    )


def _carry_out(make_plan: Callable[[Any], Any], misc: Any, args: argparse.Namespace) -> int:
    """Plan and apply under the writer lock, then report. Shared by every changing command.

    Planning inside the lock means two runs at once cannot interleave: the
    second plans against what the first registered.
    """
    from .install import InstallError, apply, lock

    applied = False
    error: Optional[str] = None
    with lock(misc.path):
        the_plan = make_plan(misc.state())
        if not args.dry_run and the_plan.ok and the_plan.changes:
            try:
                apply(the_plan, misc, locked=True)
                applied = True
            except InstallError as exc:
                error = str(exc)
    if args.json:
        doc = the_plan.to_dict()
        doc.update(dry_run=args.dry_run, applied=applied, error=error)
        emit_json(doc)
    elif not (args.quiet and not the_plan.changes and the_plan.ok):
        from .report import plan_text

        sys.stdout.write(plan_text(the_plan, dry_run=args.dry_run, applied=applied))
    if error is None and not the_plan.ok:
        errors = [f.message for f in the_plan.findings if f.severity == "error"]
        more = len(errors) - 1
        error = errors[0] + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")
    if error is not None:
        print(f"binfmt: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


# -- verify -------------------------------------------------------------------------


def _add_verify(commands: Any) -> None:
    p = commands.add_parser(
        "verify",
        help="prove emulation works by running a tiny program per architecture",
        description="Run a tiny static 'exit 42' program for each target (default: what the "
        "host runs natively and every registered QEMU target) and report per platform: "
        "works, native, entry-missing, interpreter-missing, exec-failed, wrong-status. "
        "With --rootfs the programs run chrooted there, which proves that F entries work "
        "inside containers. Exit 0 if every target works.",
    )
    p.add_argument("targets", nargs="*", metavar="TARGET", help="targets, or 'all'")
    p.add_argument(
        "--rootfs",
        metavar="DIR",
        help="run the probes chrooted into DIR (needs root), like a container",
    )
    _procfs_option(p)
    _json_option(p)
    p.set_defaults(handler=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from .host import Host
    from .procfs import DEFAULT_PATH, BinfmtMisc
    from .verify import verify

    error = not_a_directory(args.rootfs, "--rootfs")
    if error is not None:
        return error
    if not _same_instance(args.procfs, DEFAULT_PATH):
        print(
            f"binfmt: warning: the probes run through this process's binfmt_misc; "
            f"{args.procfs} is only used to explain the results",
            file=sys.stderr,
        )
    state = BinfmtMisc(args.procfs).state()
    report = verify(args.targets or None, state=state, host=Host.detect(), rootfs=args.rootfs)
    emit_report(args, report.to_dict(), report.text())
    return EXIT_OK if report.ok else EXIT_FAILURE


def _same_instance(a: str, b: str) -> bool:
    """Whether two directories show the same binfmt_misc (same ``status`` file)."""
    import os

    try:
        sa, sb = os.stat(os.path.join(a, "status")), os.stat(os.path.join(b, "status"))
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


# -- scan ---------------------------------------------------------------------------


def _add_scan(commands: Any) -> None:
    p = commands.add_parser(
        "scan",
        help="classify every program in a container root: native, emulated, script, fails",
        description="Walk ROOTFS (an extracted image, or any tree) and classify every file "
        "with an exec bit (with --all, every ELF file too): native, emulated (by which "
        "entry), script (and whether its interpreter runs), would fail (and why), other. "
        "Symlinks are never followed. Exit 0 if nothing would fail.",
    )
    p.add_argument("rootfs", metavar="ROOTFS")
    p.add_argument("--all", dest="all_files", action="store_true", help="also every ELF file")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N", help="threads (default 1)")
    p.add_argument(
        "--max-listed",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="list at most N failing files (all are counted; default 1000)",
    )
    _procfs_option(p)
    _json_option(p)
    p.set_defaults(handler=_run_scan)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: must be at least 1")
    return value


def _run_scan(args: argparse.Namespace) -> int:
    from .host import Host
    from .procfs import BinfmtMisc
    from .scan import scan

    error = not_a_directory(args.rootfs, "ROOTFS")
    if error is not None:
        return error
    state = BinfmtMisc(args.procfs).state()
    if not state.mounted:
        print(
            f"binfmt: warning: binfmt_misc is not mounted at {args.procfs}: "
            "classifying as if no entry were registered",
            file=sys.stderr,
        )
    progress = sys.stderr if sys.stderr.isatty() and not args.json else None
    report = scan(
        args.rootfs,
        state=state,
        host=Host.detect(),
        all_files=args.all_files,
        max_listed=args.max_listed,
        jobs=args.jobs,
        progress=progress,
    )
    emit_report(args, report.to_dict(), report.text())
    return EXIT_OK if report.ok else EXIT_FAILURE


# -- export / load --------------------------------------------------------------------


def _add_export(commands: Any) -> None:
    p = commands.add_parser(
        "export",
        help="write registrations as binfmt.d, Debian format or register lines",
        description="Write the registrations that 'install TARGET…' would make (same options), "
        "or with --current the entries registered now (all, or those named), as systemd "
        "binfmt.d files "
        "(NAME.conf, overriding the vendor file of the same name), Debian binfmt-support "
        "format files, or plain register lines. Without --dir, print them. Files are written "
        "atomically and never through a symlink.",
    )
    p.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET|NAME",
        help="targets or 'all'; with --current, entry names (default: all entries)",
    )
    p.add_argument("--current", action="store_true", help="export the current entries instead")
    p.add_argument(
        "--format",
        choices=("systemd", "debian", "register"),
        default="systemd",
        help="file format (default: systemd)",
    )
    p.add_argument("--dir", metavar="DIR", help="write one file per entry into DIR")
    p.add_argument("--package", default="binfmt", help="package name in Debian format files")
    _install_options(p)
    _change_options(p, quiet=False)
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import os

    from . import persist
    from .host import Host
    from .install import plan
    from .procfs import BinfmtMisc

    if not args.targets and not args.current:
        return fail(ValueError("name targets (or 'all'), or pass --current"), EXIT_USAGE)
    misc = BinfmtMisc(args.procfs)
    state = misc.state()
    if args.current:
        misc.require_mounted()
        entries = list(reversed(state.entries))  # registration order: oldest first
        if args.targets:
            unknown = [n for n in args.targets if state.get(n) is None]
            if unknown:
                return fail(ValueError(f"no entry named {unknown[0]!r} is registered"))
            entries = [e for e in entries if e.name in args.targets]
        disabled = [e.name for e in entries if not e.enabled]
        if disabled:
            print(
                f"binfmt: warning: exported as enabled (files cannot say disabled): "
                f"{', '.join(disabled)}",
                file=sys.stderr,
            )
    else:
        the_plan = plan(args.targets, _install_options_from(args), state=state, host=Host.detect())
        errors = [f for f in the_plan.findings if f.severity == "error"]
        if errors:
            return fail(ValueError(errors[0].message))
        entries = [s.entry for s in the_plan.steps if s.action != "skip"]
    if args.format == "systemd":
        files = persist.binfmt_d_files(entries)
    elif args.format == "debian":
        files = persist.debian_files(entries, args.package)
    else:
        files = {"binfmt.register": "".join(e.to_register() + "\n" for e in entries)}
    written: list[str] = []
    if args.dir and not args.dry_run:
        written = persist.write_files(args.dir, files)
    if args.json:
        emit_json(
            {
                "format": args.format,
                "dir": args.dir,
                "dry_run": args.dry_run,
                "files": [{"name": n, "content": c} for n, c in files.items()],
                "written": written,
            }
        )
    elif not args.dir or args.dry_run:
        for name, content in files.items():
            if len(files) > 1 or args.dry_run:
                target = os.path.join(args.dir, name) if args.dir else name
                sys.stdout.write(f"# ==> {target} <==\n")
            sys.stdout.write(content)
    else:
        for path in written:
            print(f"wrote {path}")
    return EXIT_OK


def _add_load(commands: Any) -> None:
    p = commands.add_parser(
        "load",
        help="register what binfmt.d files say, like systemd-binfmt but without wiping others",
        description="Register the entries of binfmt.d directories or files. Directories are "
        "read as systemd-binfmt reads /etc, /run, /usr/local/lib and /usr/lib/binfmt.d "
        "(give them highest precedence first: same-name override, /dev/null masks, applied "
        "in file-name order). An entry of the same name that differs is replaced; entries "
        "of other names are never touched, unlike systemd-binfmt, which first removes all.",
    )
    p.add_argument("paths", nargs="+", metavar="DIR|FILE")
    p.add_argument(
        "--force",
        action="store_true",
        help="register even entries that capture this host's own binaries",
    )
    _change_options(p)
    p.set_defaults(handler=_run_load)


def _run_load(args: argparse.Namespace) -> int:
    import os

    from . import persist
    from .host import Host
    from .install import plan_entries
    from .procfs import BinfmtMisc

    lines: list[Any] = []
    dirs = [p for p in args.paths if os.path.isdir(p)]
    for path in args.paths:
        if not os.path.exists(path):
            return fail(ValueError(f"invalid path {path!r}: no such file or directory"), EXIT_USAGE)
    if dirs:
        lines += persist.read_binfmt_d([os.path.abspath(d) for d in dirs])
    for path in args.paths:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "surrogateescape")
            lines += persist.parse_binfmt_d(text, path)
    entries = [line.entry for line in persist.effective_entries(lines)]
    misc = BinfmtMisc(args.procfs)
    misc.require_mounted()
    host = Host.detect()
    return _carry_out(
        lambda state: plan_entries(entries, state=state, host=host, force=args.force), misc, args
    )


# -- doctor -------------------------------------------------------------------------


def _add_doctor(commands: Any) -> None:
    p = commands.add_parser(
        "doctor",
        help="diagnose the node: every problem with its fix",
        description="Check binfmt_misc on this node: mount and switch, kernel, user "
        "namespace, every entry (interpreter present, executable, static, safe with C; F; "
        "native binaries captured; shadowed or duplicated), persistence across "
        "systemd-binfmt restarts, and the platforms asked for with --platform (tried with "
        "verify's probes). Exit 0 healthy, 1 warnings, 2 errors.",
    )
    p.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="P",
        help="a platform the node must run, e.g. linux/arm64 (repeatable)",
    )
    p.add_argument("--no-probe", action="store_true", help="do not run probe programs")
    p.add_argument(
        "--root",
        metavar="DIR",
        default="/",
        help="read interpreters, binfmt.d files and /proc/self under DIR (e.g. /proc/1/root "
        "from a pod with hostPID: the host's files); probes run only when this is /",
    )
    _procfs_option(p)
    _json_option(p)
    p.set_defaults(handler=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose
    from .host import Host
    from .procfs import BinfmtMisc

    error = not_a_directory(args.root, "--root")
    if error is not None:
        return error
    report = diagnose(
        BinfmtMisc(args.procfs).state(),
        Host.detect(),
        root=args.root,
        platforms=args.platform,
        probe=not args.no_probe,
    )
    emit_report(args, report.to_dict(), report.text())
    return report.exit_status
