"""The ``icecache`` command. Subcommands live in their own modules, imported when used."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: subcommand -> module with ``add_arguments(parser)`` and ``main(args) -> int``
COMMANDS: dict[str, str] = {
    "plugins": "icecache.cli.plugins_cmd",
    "run": "icecache.cli.run_cmd",
    "eval": "icecache.cli.eval_cmd",
    "merge": "icecache.cli.merge_cmd",
    "sweep": "icecache.sweep.cli",
}
#: ``icecache bench NAME`` -> module with ``add_arguments(parser)`` and ``main(args) -> int``
BENCHES: dict[str, str] = {
    "transfer": "icecache.bench.transfer",
    "selectors": "icecache.bench.selectors",
    "decode": "icecache.bench.decode",
    "memory": "icecache.bench.memory",
    "e2e": "icecache.bench.e2e",
    "index": "icecache.index.bench",
    "continuation": "icecache.bench.continuation",
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icecache", description="KV-cache management for long sequences.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = _load(module_name)
        if module is None:
            continue
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_main=module.main, _prog=f"icecache {name}")
    bench = sub.add_parser("bench", help="Benchmarks: print a table and write JSON.")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    for name, module_name in BENCHES.items():
        module = _load(module_name)
        if module is None:
            continue
        p = bench_sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_main=module.main, _prog=f"icecache bench {name}")
    return parser


#: output flags every command checks before it starts (``--out`` is a directory)
OUTPUT_FILES = ("json", "plot")


def check_outputs(args: argparse.Namespace) -> None:
    """Every output path a command was given is writable, before any work (nothing is created)."""
    from icecache.eval.files import check_output_dir, check_output_file

    for name in OUTPUT_FILES:
        value = getattr(args, name, None)
        if isinstance(value, (str, os.PathLike)):  # NOTE: `icecache plugins --json` is a switch
            check_output_file(value, f"--{name}")
    if getattr(args, "out", None) is not None:
        check_output_dir(args.out, "--out")


def main(argv: list[str] | None = None) -> int:
    from icecache.core.errors import IceCacheError

    args = build_parser().parse_args(argv)
    # NOTE: SIGTERM (a scheduler, `timeout`) becomes SystemExit, so locks, temp files and the disk
    # tier's files are released as on Ctrl-C; the default handler would skip every cleanup.
    previous = _exit_on_sigterm()
    try:
        check_outputs(args)
        return int(args._main(args) or 0)
    except IceCacheError as exc:
        print(f"{args._prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{args._prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        _restore(previous)


def _exit_on_sigterm():
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    return [signal.signal(signal.SIGTERM, handler)]


def _restore(previous) -> None:
    import signal

    if previous is not None:  # a list: the old handler may itself be None (set outside Python)
        signal.signal(signal.SIGTERM, previous[0] if previous[0] is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
