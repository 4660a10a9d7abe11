"""Shards: the unit of work of a sweep. One shard is what one ``icecache eval`` run does: one model,
one context and task set (or one tasks file), one seed, and every policy on the same prefills.

A shard's ``spec_hash`` covers everything that changes its results (not its name, thread count or
where its files lie), so a shard JSON whose hash matches can be kept when a sweep is resumed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from attrs import asdict, field, frozen

#: fields that do not change a shard's results, left out of its hash
UNHASHED = ("name", "model_path", "tasks_path", "threads", "decodes", "snapshot_dir")


@frozen(kw_only=True)
class Shard:
    """One cell of the grid. ``model`` / ``tasks_file`` are as the spec writes them, ``model_path`` /
    ``tasks_path`` resolved (``None``: the embedded model / generated tasks). ``policies`` are
    ``icecache eval --policy`` labels, ``options`` the ``--policy-options`` they use. ``decodes``
    counts sample x policy decodes (progress units); ``snapshot_dir`` (resolved) keeps the prefills
    (``--snapshot-dir``; not hashed: a reused prefill decodes the same)."""

    name: str
    model: str
    model_path: str | None
    context: int | None
    tasks: tuple[str, ...]
    tasks_file: str | None
    tasks_path: str | None
    tasks_sha256: str | None
    seed: int
    samples: int | None
    policies: tuple[str, ...]
    options: dict[str, dict[str, Any]] = field(hash=False)
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
    decodes: int
    snapshot_dir: str | None = None

    @property
    def group(self) -> tuple[str, int | None]:
        """Shards of one group merge into one table: same model, same context (``None``: task files)."""
        return (self.model, self.context)

    @property
    def spec_hash(self) -> str:
        spec = {k: v for k, v in asdict(self).items() if k not in UNHASHED}
        text = json.dumps(spec, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_.") or "x"


def shard_name(model: str, context: int | None, tasks: tuple[str, ...], tasks_file: str | None,
               seed: int) -> str:
    """A readable, file-safe name: ``embedded-c4096-niah_single-s0``, ``mymodel-tasks``."""
    model_tag = "embedded" if model == "embedded" else _tag(Path(model).stem)
    if tasks_file is not None:
        return f"{model_tag}-{_tag(Path(tasks_file).stem)}"
    tasks_tag = "+".join(tasks)
    if len(tasks_tag) > 40:
        tasks_tag = f"{len(tasks)}tasks-" + hashlib.sha256(tasks_tag.encode()).hexdigest()[:6]
    return f"{model_tag}-c{context}-{_tag(tasks_tag)}-s{seed}"


def unique_names(shards: list[Shard]) -> list[Shard]:
    """Shards whose names collide (two models named ``model.gguf`` in different folders) get their
    hash appended, so every shard has a file of its own."""
    from attrs import evolve

    counts: dict[str, int] = {}
    for s in shards:
        counts[s.name] = counts.get(s.name, 0) + 1
    return [evolve(s, name=f"{s.name}-{s.spec_hash[:8]}") if counts[s.name] > 1 else s for s in shards]
