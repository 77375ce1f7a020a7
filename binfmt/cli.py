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
from typing import Any, Callable, Optional

from .errors import BinfmtError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Optional[Handler] = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        print("binfmt: error: a command is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except BinfmtError as exc:
        return fail(exc)
    except OSError as exc:
        # Anything the OS refused that the library did not translate.
        return fail(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE


def fail(exc: BaseException, status: int = EXIT_FAILURE) -> int:
    """Print ``exc`` as the one-line error and return ``status``."""
    message = str(exc).replace("\n", " ")
    print(f"binfmt: error: {message}", file=sys.stderr)
    return status


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


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binfmt",
        description="Inspect, predict and manage Linux binfmt_misc (QEMU user-mode emulation).",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_status(commands)
    _add_check(commands)
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
    p.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from .host import Host
    from .procfs import BinfmtMisc
    from .report import status_document, status_text

    misc = BinfmtMisc(args.procfs)
    state = misc.state()
    host = Host.detect()
    if args.json:
        emit_json(status_document(state, host))
    else:
        sys.stdout.write(status_text(state, host))
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
    import os

    from .host import Host
    from .predict import predict
    from .procfs import BinfmtMisc

    if not os.path.isdir(args.rootfs):
        return fail(ValueError(f"invalid --rootfs {args.rootfs!r}: not a directory"), EXIT_USAGE)
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
