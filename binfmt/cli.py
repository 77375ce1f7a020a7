"""``python -m binfmt`` / ``binfmt``: the command line.

Argument parsing and calls into the library, nothing more. Every command
prints text for people by default and a documented JSON document with
``--json``; everything printed, stdout and stderr, goes through
:mod:`binfmt.output`, so untrusted names are shown escaped. Exit status: 0
success, 1 the command ran but found a failure (not mounted, a binary that
would not run …), 2 usage errors. Errors are one line on stderr,
``binfmt: error: …``, never a traceback.

Only the parser of the command being run is built (:func:`command_parser`;
start-up matters on nodes where a DaemonSet runs ``status`` in a loop);
:func:`build_parser` builds them all, for ``--help`` and the documentation
tests.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any, Callable, NoReturn, Optional

from .errors import BinfmtError, NotMounted
from .output import printable, terminal_text

__all__ = ["OPTION_FLAGS", "build_parser", "command_parser", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]

#: How the options that findings name (:attr:`binfmt.findings.Finding.options`) are spelled here.
OPTION_FLAGS = {
    "replace": "--replace",
    "refresh": "--refresh",
    "force": "--force",
    "persistent": "--persistent",
    "credential": "--credential",
    "qemu_path": "--qemu-path",
    "procfs": "--procfs",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args_list = _join_dash_values(sys.argv[1:] if argv is None else list(argv))
    command = _command_of(args_list)
    if command is not None and args_list[0] == command:
        # The usual case: only this command's parser is built.
        parser = command_parser(command)
        args = parser.parse_args(args_list[1:])
    else:
        parser = build_parser()
        args = parser.parse_args(args_list)
    handler: Optional[Handler] = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        _write(sys.stderr, "binfmt: error: a command is required\n")
        return EXIT_USAGE
    try:
        return handler(args)
    except BrokenPipeError:
        # The reader went away (``binfmt status | head``): not an error to report.
        _silence_stdout()
        return EXIT_FAILURE
    except (BinfmtError, OSError) as exc:
        # OSError: anything the OS refused that the library did not translate.
        return fail(exc)
    except KeyboardInterrupt:
        return 130


# -- output -------------------------------------------------------------------------


def _write(stream: IO[str], text: str) -> None:
    stream.write(terminal_text(text))


def _write_file_content(content: str) -> None:
    """A file's exact bytes for a pipe or redirection; escaped, like any report, for a terminal."""
    if sys.stdout.isatty():
        _write(sys.stdout, content)
        return
    from .text import encode

    sys.stdout.flush()
    sys.stdout.buffer.write(encode(content))
    sys.stdout.buffer.flush()


def _warn(message: str) -> None:
    _write(sys.stderr, f"binfmt: warning: {printable(message)}\n")


def _emit(args: argparse.Namespace, document: Any, text: str) -> None:
    """``--json`` prints the document, otherwise the text."""
    from .output import json_text

    _write(sys.stdout, json_text(document) if args.json else text)


def fail(exc: BaseException, status: int = EXIT_FAILURE) -> int:
    """Print ``exc`` as the one-line error and return ``status``."""
    message = str(exc)
    if isinstance(exc, NotMounted):
        message += f" (or pass {OPTION_FLAGS['procfs']} DIR)"
    _write(sys.stderr, f"binfmt: error: {printable(message)}\n")
    return status


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# -- parsing --------------------------------------------------------------------------

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


def _command_of(argv: Sequence[str]) -> Optional[str]:
    """The command a command line runs, when it names one this program has."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in _COMMANDS else None
        if arg in ("-h", "--help", "--version"):
            return None
    return None


def not_a_directory(path: Optional[str], option: str) -> Optional[int]:
    """The usage error for a directory option that is not one, or ``None`` if it is.

    Checked after parsing, not by an argparse type, so that parsing a command
    line stays independent of the machine it is parsed on.
    """
    import os

    if path is None or os.path.isdir(path):
        return None
    return fail(ValueError(f"invalid {option} {path!r}: not a directory"), EXIT_USAGE)


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


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, measuring the terminal without importing shutil.

    argparse makes a formatter for every option it adds; the stock one imports
    ``shutil`` (and with it the compression modules) to ask the width: a few
    milliseconds of every start, for help text that is rarely printed.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_width())


@functools.cache
def _terminal_width() -> int:
    import os

    try:
        width = os.get_terminal_size().columns
    except OSError:
        width = int(os.environ.get("COLUMNS", "80") or 80)
    return max(width, 40) - 2


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as the one line every other error is."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        where = "" if self.prog == "binfmt" else f"{self.prog}: "
        self.exit(
            EXIT_USAGE,
            terminal_text(f"binfmt: error: {where}{printable(message)} (see {self.prog} --help)\n"),
        )


# Makes the parser of one command: (name, help=…, description=…) → parser.
_NewParser = Callable[..., argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    """The whole argument parser: ``binfmt [--version] COMMAND …`` with every command."""
    parser = _Parser(
        prog="binfmt",
        description="Inspect, predict and manage Linux binfmt_misc (QEMU user-mode emulation).",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for add in _COMMANDS.values():
        add(commands.add_parser)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one command alone (``binfmt NAME …``): what a start needs, and no more."""
    made: list[argparse.ArgumentParser] = []

    def make(command: str, *, help: str, description: str) -> argparse.ArgumentParser:
        made.append(_Parser(prog=f"binfmt {command}", description=description))
        return made[-1]

    with _english_section_titles():
        _COMMANDS[name](make)
    return made[0]


@contextlib.contextmanager
def _english_section_titles() -> Iterator[None]:
    """While a parser is built, argparse's own labels stay English, like every binfmt text.

    argparse asks gettext for its section titles ("options", "positional
    arguments") and the help line of ``-h`` while it *builds* a parser, and
    gettext's first lookup imports :mod:`locale` and normalises the locale: a
    sixth of what ``binfmt status`` costs beyond its imports
    (``docs/performance.rst``), for titles shown only with ``--help``, under
    help texts that are English anyway. Messages argparse makes while parsing
    (usage errors) are still looked up as usual.
    """
    translate = argparse._  # type: ignore[attr-defined]
    argparse._ = str  # type: ignore[attr-defined]
    try:
        yield
    finally:
        argparse._ = translate  # type: ignore[attr-defined]


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: must be at least 1")
    return value


def _not_mounted_warning(state: Any, what: str) -> None:
    if not state.mounted:
        _warn(f"binfmt_misc is not mounted at {state.path}: {what} as if no entry were registered")


# -- the node a prediction is for (check, scan, doctor, install) ----------------------


def _node_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "another node",
        "predict for a node this command does not run on; nothing of this machine is used "
        "(its binfmt_misc, kernel, CPU). A status --json document taken on the node "
        "(--state) is enough: it carries the node's host and kernel; --host and --kernel "
        "override them.",
    )
    g.add_argument(
        "--host",
        dest="node_host",
        metavar="PLATFORM",
        help="the node's platform: linux/arm64, linux/amd64, linux/arm/v7 … (or a QEMU target)",
    )
    g.add_argument(
        "--kernel",
        dest="node_kernel",
        metavar="RELEASE",
        help="the node's kernel: 'uname -r', optionally followed by 'uname -v' (where Debian "
        'and Ubuntu keep the patch level): --kernel "$(uname -rv)" (default: the state '
        "document's, else the newest rules)",
    )
    g.add_argument(
        "--state",
        dest="node_state",
        metavar="FILE",
        help="the node's binfmt_misc state: 'binfmt status --json' taken there, or the "
        "document of 'binfmt install --dry-run --json --host …' (- reads standard input; "
        "with --host and no --state: a node with no entries)",
    )
    g.add_argument(
        "--aarch32",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --host linux/arm64: the node runs 32-bit arm programs natively "
        "(default: unknown, so they count as foreign; Graviton 2/3 and Ampere Altra can, "
        "Graviton 4, AmpereOne and Apple silicon cannot)",
    )
    g.add_argument(
        "--ia32",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --host linux/amd64: the node's kernel runs i386 programs (default: yes)",
    )


class _Node:
    """The node a command predicts for: its state, host, and whether it is this machine."""

    def __init__(self, state: Any, host: Any, this_machine: bool, source: str) -> None:
        self.state = state
        self.host = host
        self.this_machine = this_machine
        #: Where the state came from, for a warning.
        self.source = source


def _node_profile(args: argparse.Namespace, *, read_state: bool = True) -> Any:
    """The :class:`_Node` of the command line, or an ``int`` exit status for a usage error."""
    import attrs

    from .host import Host
    from .procfs import DEFAULT_PATH, BinfmtMisc, State

    given = args.node_host or args.node_kernel or args.node_state
    if not given:
        if args.aarch32 is not None or args.ia32 is not None:
            return fail(ValueError("--aarch32 and --ia32 describe the --host platform"), EXIT_USAGE)
        state = BinfmtMisc(args.procfs).state() if read_state else None
        return _Node(state, None, True, args.procfs)
    if args.procfs != DEFAULT_PATH:
        return fail(
            ValueError(
                "--procfs is this machine's: with --state, --host or --kernel "
                "the state comes from --state"
            ),
            EXIT_USAGE,
        )
    document: Any = None
    if args.node_state:
        import json

        try:
            if args.node_state == "-":
                document = json.load(sys.stdin)
            else:
                with open(args.node_state, encoding="utf-8") as f:
                    document = json.load(f)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else f"not JSON ({exc})"
            return fail(ValueError(f"invalid --state {args.node_state!r}: {reason}"), EXIT_USAGE)
        try:
            state = State.from_document(document, source=f"--state {args.node_state}")
        except ValueError as exc:
            return fail(exc, EXIT_USAGE)
        source = args.node_state
    else:
        state = State("(another node)", True, True, ())
        source = "none"
    host = None
    release = version = ""
    if args.node_kernel:
        from .kernel import parse_release

        release, _, version = args.node_kernel.strip().partition(" ")
        try:
            parse_release(release)
        except ValueError:
            return fail(
                ValueError(
                    f"invalid --kernel {args.node_kernel!r}: expected "
                    "'uname -r' (MAJOR.MINOR…), optionally then 'uname -v'"
                ),
                EXIT_USAGE,
            )
    try:
        if args.node_host:
            if (
                isinstance(document, dict)
                and isinstance(document.get("host"), dict)
                and not args.node_kernel
            ):
                release = str(document["host"].get("kernel", ""))
                version = str(document["host"].get("version", ""))
            host = Host.for_platform(
                args.node_host,
                release=release,
                version=version,
                aarch32=args.aarch32,
                ia32=True if args.ia32 is None else args.ia32,
            )
        elif isinstance(document, dict) and isinstance(document.get("host"), dict):
            if args.aarch32 is not None or args.ia32 is not None:
                return fail(
                    ValueError(
                        "--aarch32 and --ia32 describe the --host platform: give --host too"
                    ),
                    EXIT_USAGE,
                )
            host = Host.from_document(document["host"])
            if args.node_kernel:
                host = attrs.evolve(host, release=release, version=version)
        else:
            return fail(
                ValueError(
                    "name the node's platform with --host (the --state document has no host)"
                ),
                EXIT_USAGE,
            )
    except BinfmtError as exc:
        return fail(exc, EXIT_USAGE)
    return _Node(state, host, False, source)


# -- status -----------------------------------------------------------------


def _add_status(commands: _NewParser) -> None:
    p = commands(
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
        from .output import json_text

        text = json_text(status_document(state, host))
    elif form == "nfd":
        text = nfd_features(state, host, expiry=args.nfd_expiry)
    else:
        text = status_text(state, host)
    if args.output:
        import os

        from .files import write_files

        directory, name = os.path.split(os.path.abspath(args.output))
        write_files(directory, {name: text})
    else:
        _write(sys.stdout, text)
    misc.require_mounted()  # raises NotMounted, whose message says how to mount
    return EXIT_OK


# -- check ------------------------------------------------------------------


def _add_check(commands: _NewParser) -> None:
    p = commands(
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
    _node_options(p)
    p.set_defaults(handler=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from .host import Host
    from .prediction import predict
    from .report import verdict_text

    error = not_a_directory(args.rootfs, "--rootfs")
    if error is not None:
        return error
    node = _node_profile(args)
    if isinstance(node, int):
        return node
    _not_mounted_warning(node.state, "predicting")
    if not node.this_machine and args.rootfs == "/":
        _warn(
            "for another node, interpreters and loaders are looked up in this machine's /: "
            "give the image's root with --rootfs"
        )
    host = node.host or Host.detect()
    verdicts = [
        predict(
            path, state=node.state, host=host, rootfs=args.rootfs, this_machine=node.this_machine
        )
        for path in args.paths
    ]
    text = "".join(verdict_text(v, OPTION_FLAGS) for v in verdicts)
    _emit(args, [v.to_dict(OPTION_FLAGS) for v in verdicts], text)
    return EXIT_OK if all(v.runs for v in verdicts) else EXIT_FAILURE


# -- install / uninstall / load -------------------------------------------------------


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


def _add_install(commands: _NewParser) -> None:
    p = commands(
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
        help="also register targets the host runs natively (and entries that capture them), "
        "and replace entries a failure could not put back (F entries whose interpreter "
        "file was deleted or replaced)",
    )
    _change_options(p)
    _node_options(p)
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

    if args.node_host or args.node_state or args.node_kernel:
        return _install_for_node(args)
    if args.aarch32 is not None or args.ia32 is not None:
        return fail(ValueError("--aarch32 and --ia32 describe the --host platform"), EXIT_USAGE)
    misc = BinfmtMisc(args.procfs)
    misc.require_mounted()
    host = Host.detect()
    options = _install_options_from(args)
    return _change(args, misc, lambda state: plan(args.targets, options, state=state, host=host))


def _install_for_node(args: argparse.Namespace) -> int:
    """``install --dry-run --host …``: the plan for another node, and the state it makes."""
    from .install import Outcome, plan, planned_state
    from .report import outcome_text, status_document, status_text

    if not args.dry_run:
        return fail(
            ValueError(
                "a plan for another node (--host, --state, --kernel) cannot be "
                "applied here: add --dry-run"
            ),
            EXIT_USAGE,
        )
    node = _node_profile(args)
    if isinstance(node, int):
        return node
    the_plan = plan(
        args.targets,
        _install_options_from(args),
        state=node.state,
        host=node.host,
        this_machine=False,
    )
    outcome = Outcome(the_plan, dry_run=True)
    after = planned_state(the_plan, node.state)
    if args.json:
        # The plan's document and, in the same object, the state it makes in the
        # status document's keys: --state reads it as it is.
        document = outcome.to_dict(OPTION_FLAGS)
        document.update(status_document(after, node.host))
        document["procfs"] = the_plan.procfs
        _emit(args, document, "")
    elif not (args.quiet and not the_plan.changes and the_plan.ok):
        _write(sys.stdout, outcome_text(outcome, OPTION_FLAGS))
        _write(sys.stdout, "the node's state after the plan:\n" + status_text(after, node.host))
    error = outcome.error(OPTION_FLAGS)
    if error is not None:
        _write(sys.stderr, f"binfmt: error: {printable(error)}\n")
        return EXIT_FAILURE
    return EXIT_OK


def _add_uninstall(commands: _NewParser) -> None:
    p = commands(
        "uninstall",
        help="remove named entries, or QEMU's entries for targets",
        description="Remove entries: a NAME removes that entry, whoever made it; a TARGET "
        "(arm64, linux/arm/v7 …) removes only QEMU's entries for it; --all-qemu every QEMU "
        "entry. Other registrants (WSLInterop, Rosetta, FEX, language runtimes) are never "
        "touched unless named, and the global status is never written.",
    )
    p.add_argument("names", nargs="*", metavar="NAME|TARGET")
    p.add_argument("--all-qemu", action="store_true", help="remove every QEMU entry")
    p.add_argument(
        "--force",
        action="store_true",
        help="remove even when a failure could not put every entry back "
        "(F entries whose interpreter file was deleted or replaced)",
    )
    _change_options(p)
    p.set_defaults(handler=_run_uninstall)


def _run_uninstall(args: argparse.Namespace) -> int:
    from .install import plan_uninstall
    from .procfs import BinfmtMisc

    if not args.names and not args.all_qemu:
        return fail(ValueError("name entries or targets to remove, or pass --all-qemu"), EXIT_USAGE)
    misc = BinfmtMisc(args.procfs)
    misc.require_mounted()
    return _change(
        args,
        misc,
        lambda state: plan_uninstall(
            args.names, all_qemu=args.all_qemu, state=state, force=args.force
        ),
    )


def _add_load(commands: _NewParser) -> None:
    p = commands(
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
        help="register even entries that capture this host's own binaries, and replace "
        "entries a failure could not put back",
    )
    _change_options(p)
    p.set_defaults(handler=_run_load)


def _run_load(args: argparse.Namespace) -> int:
    from .errors import InvalidValue
    from .host import Host
    from .install import plan_entries
    from .persist import load_entries
    from .procfs import BinfmtMisc

    try:
        entries = load_entries(args.paths)
    except InvalidValue as exc:
        return fail(exc, EXIT_USAGE)
    misc = BinfmtMisc(args.procfs)
    misc.require_mounted()
    host = Host.detect()
    return _change(
        args,
        misc,
        lambda state: plan_entries(entries, state=state, host=host, force=args.force),
    )


def _change(args: argparse.Namespace, misc: Any, make_plan: Callable[[Any], Any]) -> int:
    """Plan and apply (:func:`binfmt.install.carry_out`), then report. Every changing command."""
    from .install import carry_out
    from .report import outcome_text

    outcome = carry_out(misc, make_plan, dry_run=args.dry_run)
    if args.json:
        _emit(args, outcome.to_dict(OPTION_FLAGS), "")
    elif not (args.quiet and not outcome.plan.changes and outcome.plan.ok):
        _write(sys.stdout, outcome_text(outcome, OPTION_FLAGS))
    error = outcome.error(OPTION_FLAGS)
    if error is not None:
        _write(sys.stderr, f"binfmt: error: {printable(error)}\n")
        return EXIT_FAILURE
    return EXIT_OK


# -- verify -------------------------------------------------------------------------


def _add_verify(commands: _NewParser) -> None:
    p = commands(
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
    from .report import verify_text
    from .verify import verify

    error = not_a_directory(args.rootfs, "--rootfs")
    if error is not None:
        return error
    if not _same_instance(args.procfs, DEFAULT_PATH):
        _warn(
            "the probes run through this process's binfmt_misc; "
            f"{args.procfs} is only used to explain the results"
        )
    state = BinfmtMisc(args.procfs).state()
    report = verify(args.targets or None, state=state, host=Host.detect(), rootfs=args.rootfs)
    _emit(args, report.to_dict(OPTION_FLAGS), verify_text(report, OPTION_FLAGS))
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


def _add_scan(commands: _NewParser) -> None:
    p = commands(
        "scan",
        help="classify every program in a container root: native, emulated, script, fails",
        description="Walk ROOTFS (an extracted image, or any tree) and classify every file "
        "with an exec bit (with --all, every ELF file too): native, emulated (by which "
        "entry), script (and whether its interpreter runs), would fail (and why), other. "
        "Symlinks are never followed. Exit 0 if nothing would fail.",
    )
    p.add_argument("rootfs", metavar="ROOTFS", nargs="?", help="the tree to scan (or --tar)")
    p.add_argument(
        "--tar",
        action="append",
        metavar="FILE",
        help="scan the root filesystem in a tar archive instead, without extracting it "
        "(docker export, crane export, an OCI layer; gzip, xz, bzip2, and zstd where Python "
        "reads it; - reads standard input). Repeat for an image's layers, lowest first: "
        "later layers replace, and their whiteouts delete, what earlier ones hold",
    )
    p.add_argument("--all", dest="all_files", action="store_true", help="also every ELF file")
    p.add_argument(
        "--jobs",
        type=_positive_int,
        metavar="N",
        help="processes sharing the walk of ROOTFS (default: one per CPU)",
    )
    p.add_argument(
        "--max-listed",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="list at most N failing files (all are counted; default 1000)",
    )
    _procfs_option(p)
    _json_option(p)
    _node_options(p)
    p.set_defaults(handler=_run_scan)


def _run_scan(args: argparse.Namespace) -> int:
    from .host import Host
    from .report import scan_text
    from .scan import default_jobs, scan, scan_archive

    if (args.rootfs is None) == (args.tar is None):
        return fail(ValueError("give ROOTFS or --tar FILE (one of them)"), EXIT_USAGE)
    if args.tar and args.tar.count("-") > 1:
        return fail(ValueError("--tar -: standard input can be read once"), EXIT_USAGE)
    error = not_a_directory(args.rootfs, "ROOTFS")
    if error is not None:
        return error
    node = _node_profile(args)
    if isinstance(node, int):
        return node
    _not_mounted_warning(node.state, "classifying")
    progress = sys.stderr if sys.stderr.isatty() and not args.json else None
    common: dict[str, Any] = {
        "state": node.state,
        "host": node.host or Host.detect(),
        "all_files": args.all_files,
        "max_listed": args.max_listed,
        "progress": progress,
        "this_machine": node.this_machine,
    }
    if args.tar:
        report = scan_archive(args.tar, **common)
    else:
        report = scan(args.rootfs, jobs=args.jobs or default_jobs(), **common)
    _emit(args, report.to_dict(), scan_text(report))
    sys.stdout.flush()
    for warning in report.warnings:
        _warn(warning)
    if report.warnings_total > len(report.warnings):
        _warn(f"… and {report.warnings_total - len(report.warnings)} more members left out")
    return EXIT_OK if report.ok else EXIT_FAILURE


# -- export ---------------------------------------------------------------------------


def _add_export(commands: _NewParser) -> None:
    p = commands(
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

    from .files import write_files
    from .host import Host
    from .install import plan
    from .persist import current_entries, export_files, persisted_below
    from .procfs import BinfmtMisc

    if not args.targets and not args.current:
        return fail(ValueError("name targets (or 'all'), or pass --current"), EXIT_USAGE)
    misc = BinfmtMisc(args.procfs)
    state = misc.state()
    skipped: dict[str, str] = {}
    if args.current:
        misc.require_mounted()
        entries = current_entries(state, args.targets)
        if args.dir and not args.targets and args.format == "systemd":
            # Export what was registered, not what vendors persist already.
            skipped = persisted_below(entries, args.dir)
            entries = [e for e in entries if e.name not in skipped]
        disabled = [e.name for e in entries if not e.enabled]
        if disabled:
            _warn(f"exported as enabled (files cannot say disabled): {', '.join(disabled)}")
    else:
        the_plan = plan(args.targets, _install_options_from(args), state=state, host=Host.detect())
        errors = [f for f in the_plan.findings if f.severity == "error"]
        if errors:
            return fail(ValueError(errors[0].message))
        entries = [s.entry for s in the_plan.steps if s.action != "skip"]
    files = export_files(entries, args.format, package=args.package)
    written: list[str] = []
    if args.dir and not args.dry_run:
        written = write_files(args.dir, files)
    if args.json:
        document = {
            "format": args.format,
            "dir": args.dir,
            "dry_run": args.dry_run,
            "files": [{"name": n, "content": c} for n, c in files.items()],
            "written": written,
            "skipped": [{"name": n, "source": src} for n, src in skipped.items()],
        }
        _emit(args, document, "")
    elif not args.dir or args.dry_run:
        for name, content in files.items():
            if len(files) > 1 or args.dry_run:
                target = os.path.join(args.dir, name) if args.dir else name
                _write(sys.stdout, f"# ==> {printable(target)} <==\n")
            _write_file_content(content)
    else:
        _write(sys.stdout, "".join(f"wrote {printable(path)}\n" for path in written))
    for name, source in skipped.items():
        _write(
            sys.stdout if not args.json else sys.stderr,
            f"skipped {printable(name)}: {printable(source)} registers it already\n",
        )
    return EXIT_OK


# -- doctor -------------------------------------------------------------------------


def _add_doctor(commands: _NewParser) -> None:
    p = commands(
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
        "--host-root",
        "--root",
        dest="host_root",
        metavar="DIR",
        default="/",
        help="where the host's files are seen (e.g. /proc/1/root from a pod with hostPID): "
        "interpreters, binfmt.d files, /proc, /sys and /boot are read under DIR, also to "
        "tell what the host runs natively; probes run only when this is / "
        "(--root is the older spelling)",
    )
    _procfs_option(p)
    _json_option(p)
    _node_options(p)
    p.set_defaults(handler=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose
    from .host import Host
    from .report import doctor_text

    error = not_a_directory(args.host_root, "--host-root")
    if error is not None:
        return error
    node = _node_profile(args)
    if isinstance(node, int):
        return node
    if not node.this_machine and args.host_root != "/":
        return fail(
            ValueError(
                "--host-root is this machine's view of its host: not with "
                "--state, --host or --kernel"
            ),
            EXIT_USAGE,
        )
    report = diagnose(
        node.state,
        node.host or Host.detect(args.host_root),
        host_root=args.host_root,
        platforms=args.platform,
        probe=not args.no_probe and node.this_machine,
        this_machine=node.this_machine,
    )
    _emit(args, report.to_dict(OPTION_FLAGS), doctor_text(report, OPTION_FLAGS))
    return report.exit_status


# -- ps and metrics (issue 14) --------------------------------------------------------


def _ps_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--proc",
        metavar="DIR",
        default="/proc",
        help="the process file system to read (default: /proc; from a pod: hostPID: true)",
    )
    p.add_argument(
        "--host-root",
        dest="host_root",
        metavar="DIR",
        default="/",
        help="where the host's files are seen (e.g. /proc/1/root from a pod with hostPID): "
        "the entries' interpreter files and the kubelet's /var/log/pods and "
        "/var/log/containers are read under DIR",
    )
    _procfs_option(p)
    _json_option(p)


def _ps_report(args: argparse.Namespace) -> Any:
    from .emulated import processes
    from .procfs import BinfmtMisc

    state = BinfmtMisc(args.procfs).state()
    _not_mounted_warning(state, "matching")
    return state, processes(state, proc=args.proc, host_root=args.host_root)


def _add_ps(commands: _NewParser) -> None:
    p = commands(
        "ps",
        help="list the processes that run emulated, with their pod and their cost",
        description="List every process whose executable is a binfmt_misc entry's interpreter "
        "(matched by the file itself, device and inode, then by path): the emulated program "
        "and its arguments, the entry, the program's platform, CPU seconds, memory, start "
        "time, and the container and pod it runs in (from /proc/PID/cgroup and the "
        "kubelet's log layout), then totals by platform and by pod. Processes that still "
        "run a deleted or replaced interpreter are marked stale. Exit 0.",
    )
    _ps_options(p)
    p.set_defaults(handler=_run_ps)


def _run_ps(args: argparse.Namespace) -> int:
    from .report import ps_text

    error = not_a_directory(args.proc, "--proc") or not_a_directory(args.host_root, "--host-root")
    if error is not None:
        return error
    _, report = _ps_report(args)
    _emit(args, report.to_dict(), ps_text(report, OPTION_FLAGS))
    return EXIT_OK


def _add_metrics(commands: _NewParser) -> None:
    p = commands(
        "metrics",
        help="the node's emulation facts as Prometheus metrics (node-exporter textfile)",
        description="Print (or with --output write atomically) the node's emulation facts in "
        "the Prometheus text exposition format: binfmt_misc's mount and switch, every entry "
        "(enabled, platform, flags, interpreter present), the platforms the node runs "
        "natively and emulated, with --verify the probe result per target, the emulated "
        "processes with their CPU seconds and memory by platform and pod, and the processes "
        "that run a stale interpreter. For node-exporter's textfile collector, write a "
        "*.prom file into its --collector.textfile.directory.",
    )
    p.add_argument(
        "--output",
        metavar="FILE",
        help="write to FILE atomically instead of printing "
        "(e.g. /var/lib/node_exporter/textfile_collector/binfmt.prom)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="also run verify's probes (through this process's binfmt_misc) and export "
        "their results",
    )
    _ps_options(p)
    p.set_defaults(handler=_run_metrics)


def _run_metrics(args: argparse.Namespace) -> int:
    from .host import Host
    from .metrics import collect, document, exposition, write

    error = not_a_directory(args.proc, "--proc") or not_a_directory(args.host_root, "--host-root")
    if error is not None:
        return error
    state, report = _ps_report(args)
    host = Host.detect(args.host_root)
    checked = None
    if args.verify:
        from .verify import verify

        checked = verify(state=state, host=host)
    families = collect(state, host, report=report, verify=checked, host_root=args.host_root)
    if args.json:
        from .output import json_text

        text = json_text(document(families))
    else:
        text = exposition(families)
    if args.output:
        write(args.output, text)
    else:
        _write(sys.stdout, text)
    return EXIT_OK


# Parser builders by command name, in the order --help lists them.
_COMMANDS: dict[str, Callable[[Any], None]] = {
    "status": _add_status,
    "check": _add_check,
    "install": _add_install,
    "uninstall": _add_uninstall,
    "export": _add_export,
    "load": _add_load,
    "verify": _add_verify,
    "scan": _add_scan,
    "doctor": _add_doctor,
    "ps": _add_ps,
    "metrics": _add_metrics,
}
