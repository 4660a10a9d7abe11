"""The sweep spec: its fields, their types and defaults, and :func:`load_spec` (file -> checked spec).

Field checks here need nothing but the file; :mod:`icecache.sweep.check` then checks policies, models,
tasks and contexts against the plugin registry and each model's config, still before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import field, frozen

from icecache.sweep.source import SpecSource, read_spec

_NONE = object()  # a field left out (None is not a TOML value, but JSON has null)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _non_negative(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _string(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _task_entry(v: Any) -> bool:
    return _string(v) or (isinstance(v, list) and bool(v) and all(_string(t) for t in v))


def _options(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(o, dict) for o in v.values())


POSITIVE, NON_NEGATIVE, STRING = "a positive integer", "a non-negative integer", "a non-empty string"


@frozen
class Field:
    """One spec field: ``check(value)`` says whether a value fits, ``expects`` what fits;
    ``each``: the field is a list and ``check`` applies to every element."""

    check: Callable[[Any], bool]
    expects: str
    default: Any
    each: bool = False
    doc: str = ""


TASK_ENTRY, OPTIONS = "a task name, 'a,b', 'all' or a list of task names", "a table of option tables"
#: the spec's fields, in the order docs/running.md describes them
FIELDS: dict[str, Field] = {
    "models": Field(_string, STRING, ["embedded"], True, "embedded, or checkpoint directories / .gguf files"),
    "contexts": Field(_positive_int, POSITIVE, [4096], True, "prompt lengths in tokens (generated tasks)"),
    "tasks": Field(_task_entry, TASK_ENTRY, None, True, "task sets, a shard each"),
    "tasks_files": Field(_string, STRING, [], True, "JSONL task files, a shard each (no contexts, seeds)"),
    "seeds": Field(_non_negative, NON_NEGATIVE, [0], True, "task generation seeds"),
    "samples": Field(_positive_int, POSITIVE, 5, doc="samples per generated task"),
    "policies": Field(_string, STRING, ["full", "icecache"], True, "NAME, NAME@BUDGET, NAME:VARIANT"),
    "budgets": Field(_positive_int, POSITIVE, [256], True, "budgets of policies written without @N"),
    "policy_options": Field(_options, OPTIONS, {}, doc="policy or variant name -> selector options"),
    "batch_size": Field(_positive_int, POSITIVE, 4, doc="samples decoded together"),
    "threads": Field(_positive_int, POSITIVE, 1, doc="torch threads per shard"),
    "device": Field(_string, STRING, "auto", doc="auto, cpu, cuda, cuda:N"),
    "dtype": Field(_string, STRING, None, doc="model dtype (float32 on CPU, bfloat16 on CUDA)"),
    "page_dtype": Field(_string, STRING, None, doc="dtype pages are stored in (default: the KV dtype)"),
    "sink": Field(_non_negative, NON_NEGATIVE, None, doc="sink tokens per KV head"),
    "window": Field(_non_negative, NON_NEGATIVE, None, doc="recent-window tokens per KV head"),
    "device_pages": Field(_positive_int, POSITIVE, None, doc="device-tier capacity in pages"),
    "host_pages": Field(_positive_int, POSITIVE, None, doc="host-tier capacity in pages"),
    "disk_dir": Field(_string, STRING, None, doc="directory of the disk tier"),
    "snapshot_dir": Field(_string, STRING, None, doc="prefill snapshots reused across shards and runs"),
}


@frozen(kw_only=True)
class SweepSpec:
    """A checked spec. Lists are the grid's axes; paths are relative to the spec file's folder."""

    source: SpecSource = field(eq=False, repr=False)
    models: tuple[str, ...]
    contexts: tuple[int, ...]
    tasks: tuple[tuple[str, ...], ...]
    tasks_files: tuple[str, ...]
    seeds: tuple[int, ...]
    samples: int
    policies: tuple[str, ...]
    budgets: tuple[int, ...]
    policy_options: dict[str, dict[str, Any]] = field(hash=False)
    batch_size: int
    threads: int
    device: str
    dtype: str | None
    page_dtype: str | None
    sink: int | None
    window: int | None
    device_pages: int | None
    host_pages: int | None
    disk_dir: str | None
    snapshot_dir: str | None

    @property
    def folder(self) -> Path:
        return Path(self.source.path).resolve().parent

    def path(self, value: str) -> Path:
        """A path written in the spec, resolved against the spec file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.folder / p

    @property
    def labels(self) -> list[str]:
        """Policy labels as ``icecache eval --policy`` takes them: a policy without ``@N`` once per budget."""
        out = []
        for p in self.policies:
            if "@" in p or p.partition(":")[0] == "full":
                out.append(p)
            else:
                out += [f"{p}@{b}" for b in self.budgets]
        return out


def load_spec(path: str) -> SweepSpec:
    """Read ``path`` and check every field's type; errors name the file, the line and the field."""
    source = read_spec(path)
    data = source.data
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise source.error(f"unknown field {unknown[0]!r}; fields: {', '.join(FIELDS)}", unknown[0])
    values: dict[str, Any] = {}
    for name, f in FIELDS.items():
        value = data.get(name, _NONE)
        if value is _NONE or value is None:
            values[name] = f.default
            continue
        if f.each:
            if not isinstance(value, list):
                raise source.error(f"{name} must be a list, each entry {f.expects}; got {value!r} "
                                   f"(write [{_toml(value)}])", name)
            if not value:
                raise source.error(f"{name} is empty", name)
            for item in value:
                if not f.check(item):
                    raise source.error(f"{name}: each entry must be {f.expects}, got {item!r}", name, item)
            dupes = [v for i, v in enumerate(value) if v in value[:i]]
            if dupes:
                raise source.error(f"{name}: {dupes[0]!r} is listed twice", name, dupes[0])
        else:
            if not f.check(value):
                raise source.error(f"{name} must be {f.expects}, got {value!r}", name)
        values[name] = value
    if values["tasks"] is None:
        from icecache.tasks.registry import DEFAULT_SUITE

        # NOTE: the run suite, a shard per task, so the tasks run in parallel
        values["tasks"] = [] if "tasks_files" in data else list(DEFAULT_SUITE)
    values["tasks"] = [tuple(t) if isinstance(t, list) else (t,) for t in values["tasks"]]
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return SweepSpec(source=source, **fields)


def _toml(value: Any) -> str:
    import json

    return json.dumps(value, default=str)
