"""User task files: JSONL, one sample per line (see docs/running.md for the schema)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from icecache.core.errors import ConfigError
from icecache.tasks.sample import TaskSample

REQUIRED = ("id", "context", "question", "answers")
OPTIONAL = ("answer_prefix", "max_new_tokens", "task")


def load_tasks_file(path: str | os.PathLike[str]) -> list[TaskSample]:
    """Read every sample, or raise :class:`ConfigError` naming the file and line of the first problem.

    Each non-blank line is a JSON object with ``id`` (string), ``context`` (string), ``question``
    (string), ``answers`` (non-empty list of strings, all must appear in the output); optionally
    ``answer_prefix`` (string), ``max_new_tokens`` (int, default 32) and ``task`` (a group name for
    the results, default ``"file"``). Ids must be unique. Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"tasks file {str(path)!r} does not exist")
    samples: list[TaskSample] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in REQUIRED if k not in obj]
            if missing:
                raise ConfigError(f"{where}: missing field(s) {missing}; required: {list(REQUIRED)}")
            unknown = sorted(set(obj) - set(REQUIRED) - set(OPTIONAL))
            if unknown:
                allowed = list(REQUIRED + OPTIONAL)
                raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {allowed}")
            for key in ("id", "context", "question", "answer_prefix", "task"):
                if key in obj and not isinstance(obj[key], str):
                    raise ConfigError(f"{where}: field {key!r} must be a string, got {obj[key]!r}")
            if not obj["context"].strip():
                raise ConfigError(f"{where}: field 'context' is empty")
            if obj["id"] in seen:
                raise ConfigError(f"{where}: duplicate id {obj['id']!r} (first on line {seen[obj['id']]})")
            seen[obj["id"]] = lineno
            try:
                samples.append(TaskSample(
                    id=obj["id"], task=obj.get("task", "file"), context=obj["context"],
                    question=obj["question"], answers=obj["answers"],
                    answer_prefix=obj.get("answer_prefix", ""), max_new_tokens=obj.get("max_new_tokens", 32),
                ))
            except (ConfigError, TypeError) as exc:
                raise ConfigError(f"{where}: {exc}") from None
    if not samples:
        raise ConfigError(f"tasks file {str(path)!r} holds no samples (line 1: empty file)")
    return samples
