"""List registered components and the plugin each came from."""

from __future__ import annotations

import argparse
import json

from icecache.core.plugins import build_registry, get_plugin_manager


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    pm = get_plugin_manager()
    rows = [{"kind": r.kind, "name": r.name, "source": r.source, "description": r.description}
            for r in build_registry(pm).all()]
    observers = sorted(name for name, _ in pm.list_name_plugin() if not name.startswith("builtin:"))
    if args.json:
        print(json.dumps({"components": rows, "plugins": observers}, indent=2))
        return 0
    from icecache.bench.report import format_table

    print(format_table(rows, ["kind", "name", "source", "description"]))
    return 0
