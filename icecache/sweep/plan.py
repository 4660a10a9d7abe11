"""Check a spec against the plugin registry, the task suite and every model's config, then expand the
grid into shards. Everything here runs before any weights load or any file is written.

Policy and budget checks reuse :func:`icecache.eval.session.prepare` (what ``icecache eval`` checks),
one policy at a time so an error points at that policy's line.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from icecache.core.errors import ConfigError, IceCacheError
from icecache.sweep.shards import Shard, file_sha256, shard_name, unique_names
from icecache.sweep.spec import SweepSpec


def model_args(spec: SweepSpec, model_path: str | None, device: str) -> argparse.Namespace:
    """The ``icecache eval`` arguments :func:`~icecache.eval.session.prepare` reads."""
    return argparse.Namespace(
        model=model_path, device=device, dtype=spec.dtype, batch_size=spec.batch_size, threads=spec.threads,
        sink=spec.sink, window=spec.window, device_pages=spec.device_pages, host_pages=spec.host_pages,
        disk_dir=None if spec.disk_dir is None else str(spec.path(spec.disk_dir)),
        page_dtype=spec.page_dtype, snapshot_dir=_snapshot_dir(spec))


def _snapshot_dir(spec: SweepSpec) -> str | None:
    return None if spec.snapshot_dir is None else str(spec.path(spec.snapshot_dir))


def _policy_entries(spec: SweepSpec) -> list[tuple[str, list[str]]]:
    """``(entry as written, its labels)``: an entry without ``@N`` gives one label per budget."""
    from attrs import evolve

    return [(p, evolve(spec, policies=(p,)).labels) for p in spec.policies]


def check_policies(spec: SweepSpec) -> list[str]:
    """Every policy label, or an error at the line of the entry that is wrong."""
    from icecache.eval.policies import parse_policies

    src, options = spec.source, spec.policy_options
    for entry, labels in _policy_entries(spec):
        name = entry.partition("@")[0]
        selector, _, variant = name.partition(":")
        if variant and name not in options:
            raise src.error(f"policies: {entry!r} is a variant of {selector!r}: give its options in a "
                            f'[policy_options."{name}"] table', "policies", entry)
        try:
            parse_policies(",".join(labels), None, options={name: options[name]} if name in options else None)
        except IceCacheError as exc:
            raise src.error(f"policies: {exc}".replace("--policy-options", "policy_options"),
                            "policies", entry) from None
    labels = spec.labels
    try:
        parse_policies(",".join(labels), None, options=options)
    except IceCacheError as exc:
        key = "policy_options" if "options" in str(exc) else "policies"
        raise src.error(f"{key}: {exc}".replace("--policy-options", "policy_options"), key) from None
    return labels


def check_tasks(spec: SweepSpec) -> list[tuple[str, ...]]:
    """Task sets as validated name tuples; a task in two sets would be decoded twice, so it fails."""
    from icecache.tasks import parse_task_names

    out: list[tuple[str, ...]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(spec.tasks):
        try:
            names = tuple(parse_task_names(",".join(entry)))
        except IceCacheError as exc:
            raise spec.source.error(f"tasks: {exc}", "tasks", entry[0]) from None
        for n in names:
            if n in seen:
                raise spec.source.error(f"tasks: {n!r} is in task sets {seen[n] + 1} and {i + 1}",
                                        "tasks", entry[0])
            seen[n] = i
        out.append(names)
    return out


def check_tasks_files(spec: SweepSpec) -> dict[str, int]:
    """Sample count of each tasks file; their sample ids must be distinct (they merge into one table)."""
    from icecache.tasks import load_tasks_file

    counts: dict[str, int] = {}
    owner: dict[str, str] = {}
    for written in spec.tasks_files:
        try:
            samples = load_tasks_file(spec.path(written))
        except IceCacheError as exc:
            raise spec.source.error(f"tasks_files: {exc}", "tasks_files", written) from None
        for s in samples:
            if s.id in owner:
                raise spec.source.error(f"tasks_files: sample id {s.id!r} is in both {owner[s.id]!r} and "
                                        f"{written!r}", "tasks_files", written)
            owner[s.id] = written
        counts[written] = len(samples)
    return counts


#: ``icecache eval`` flags in the messages of its checks -> the spec field that sets them
FLAGS = {"--policy-options": "policy_options", "--page-dtype": "page_dtype",
         "--device-pages": "device_pages", "--host-pages": "host_pages", "--disk-dir": "disk_dir",
         "--snapshot-dir": "snapshot_dir",
         "--batch-size": "batch_size", "--threads": "threads", "--context": "contexts", "--budget": "budgets",
         "--dtype": "dtype", "--device": "device", "--sink": "sink", "--window": "window", "--seed": "seeds"}


def _field_error(spec: SweepSpec, exc: Exception, label: str, context: int | None, model: str
                 ) -> ConfigError:
    """An eval check's error, its flags written as spec words (``--device-pages`` -> ``device_pages``),
    at the line of the field it names, else of the policy ``label`` comes from."""
    text = str(exc)
    flag = re.search(r"--[a-z][a-z-]*", text)
    key = FLAGS.get(flag.group(0)) if flag else None
    text = re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), text)
    if len(spec.models) > 1:
        text += f" (model {model!r})"
    if flag is None or key is None:
        entry = next(p for p in spec.policies if label == p or label.startswith(p + "@"))
        return spec.source.error(f"policies: {label}: {text}", "policies", entry)
    word = flag.group(0)[2:].replace("-", "_")
    return spec.source.error(text if text.startswith(word) else f"{key}: {text}", key,
                             context if key == "contexts" else None)


def check_model(spec: SweepSpec, model: str, labels: list[str], device: str) -> str | None:
    """The model's resolved path (``None``: embedded), checked with what ``icecache eval`` checks: the
    path and config, the device and dtypes, each policy's budget and options against the model's
    geometry, the longest context against its positions and the tier capacities at that context."""
    from icecache.eval.session import prepare
    from icecache.integrations.hf.loader import resolve_checkpoint

    path = None if model == "embedded" else str(spec.path(model))
    try:
        resolve_checkpoint(path)
    except IceCacheError as exc:
        raise spec.source.error(f"models: {exc}", "models", model) from None
    args = model_args(spec, path, device)
    context = max(spec.contexts) if spec.tasks else None
    for label in labels:
        name = label.partition("@")[0]
        options = {name: spec.policy_options[name]} if name in spec.policy_options else None
        try:
            prepare(args, label, None, context, options=options)
        except IceCacheError as exc:
            raise _field_error(spec, exc, label, context, model) from None
    return path


def plan(spec: SweepSpec, *, check_device: bool = True) -> list[Shard]:
    """Check ``spec`` and expand its grid: models x contexts x task sets x seeds, plus models x task
    files; the longest shards first within a model (a pool then ends with short ones).
    ``check_device=False`` (Ray: the driver may have no GPU) checks on the CPU instead."""
    if not spec.tasks and not spec.tasks_files:
        raise spec.source.error("no tasks: give tasks or tasks_files", "tasks")
    labels = check_policies(spec)
    task_sets = check_tasks(spec)
    file_counts = check_tasks_files(spec)
    device = spec.device if check_device else "cpu"
    paths = {m: check_model(spec, m, labels, device) for m in spec.models}
    common: dict[str, Any] = dict(
        policies=tuple(labels), batch_size=spec.batch_size, threads=spec.threads, device=spec.device,
        dtype=spec.dtype, page_dtype=spec.page_dtype, sink=spec.sink, window=spec.window,
        device_pages=spec.device_pages, host_pages=spec.host_pages,
        disk_dir=None if spec.disk_dir is None else str(spec.path(spec.disk_dir)),
        snapshot_dir=_snapshot_dir(spec))
    used = {p.partition("@")[0] for p in labels} | {p.partition("@")[0].partition(":")[0] for p in labels}
    common["options"] = {k: v for k, v in spec.policy_options.items() if k in used}
    shards: list[Shard] = []
    for model in spec.models:
        cell: list[Shard] = []
        for context in spec.contexts:
            for tasks in task_sets:
                for seed in spec.seeds:
                    cell.append(Shard(
                        name=shard_name(model, context, tasks, None, seed), model=model,
                        model_path=paths[model], context=context, tasks=tasks, tasks_file=None,
                        tasks_path=None, tasks_sha256=None, seed=seed, samples=spec.samples,
                        decodes=len(tasks) * spec.samples * len(labels), **common))
        for written, count in file_counts.items():
            path = spec.path(written)
            cell.append(Shard(
                name=shard_name(model, None, (), written, 0), model=model, model_path=paths[model],
                context=None, tasks=(), tasks_file=written, tasks_path=str(path),
                tasks_sha256=file_sha256(path), seed=0, samples=None, decodes=count * len(labels), **common))
        # NOTE: a file shard's cost is unknown before tokenizing; generated ones scale with context x samples
        shards += sorted(cell, key=lambda s: -(s.context or 0) * s.decodes)
    if not shards:
        raise ConfigError(f"{spec.source.path}: the grid is empty")
    return unique_names(shards)
