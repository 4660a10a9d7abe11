"""The ``icecache`` command. Subcommands live in their own modules, imported when used."""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> module with ``add_arguments(parser)`` and ``main(args) -> int``
COMMANDS: dict[str, str] = {
    "plugins": "icecache.cli.plugins_cmd",
    "run": "icecache.cli.run_cmd",
    "eval": "icecache.cli.eval_cmd",
    "merge": "icecache.cli.merge_cmd",
}
#: ``icecache bench NAME`` -> module with ``add_arguments(parser)`` and ``main(args) -> int``
BENCHES: dict[str, str] = {
    "transfer": "icecache.bench.transfer",
    "selectors": "icecache.bench.selectors",
    "decode": "icecache.bench.decode",
    "memory": "icecache.bench.memory",
    "index": "icecache.index.bench",
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
        p.set_defaults(_main=module.main)
    bench = sub.add_parser("bench", help="Benchmarks: print a table and write JSON.")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    for name, module_name in BENCHES.items():
        module = _load(module_name)
        if module is None:
            continue
        p = bench_sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
