"""The `edgecut` command: one verb per job.

Each area of the package registers its own verbs (runtime: remove, models; compress: label,
distill, export; bench: bench), so adding a verb never touches this file. The modules named
here must import without torch: heavy imports happen inside the verb's handler.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .runtime.errors import EdgecutError, UsageError

COMMAND_MODULES = (
    "edgecut.runtime.commands",
    "edgecut.compress.commands",
    "edgecut.compress.compress_commands",
    "edgecut.bench.commands",
    "edgecut.runtime.video_commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecut", description="On-device background removal.")
    parser.add_argument("--version", action="version", version=f"edgecut {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .runtime.imageio import reuse_image_memory

    reuse_image_memory()
    # File names that are not UTF-8 decode to lone surrogates; a strict UTF-8 stream (stdout under
    # LANG=en_US.UTF-8, or a stderr that is not Python's own) would end a finished run in a
    # UnicodeEncodeError when it prints such a path. Every verb's output escapes them instead.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return int(args.func(args) or 0)
    except EdgecutError as e:
        print(f"edgecut {args.command}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except OSError as e:
        # A path the user gave that the system refused (a folder that cannot be made, a full
        # disk, a file that vanished): one line naming it, as for EdgecutError.
        where = f"{e.filename}: " if e.filename else ""
        print(f"edgecut {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
