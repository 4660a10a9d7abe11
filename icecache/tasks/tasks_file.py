"""User task files: JSONL, one sample per line (see docs/running.md for the schema)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from icecache.core.errors import ConfigError
from icecache.tasks.sample import TaskSample

REQUIRED = ("id", "context", "question", "answers")
OPTIONAL = ("answer_prefix", "max_new_tokens", "task")
#: an answer longer than this is not a long-context answer (and would outgrow any model's positions)
MAX_NEW_TOKENS = 4096


def load_tasks_file(path: str | os.PathLike[str]) -> list[TaskSample]:
    """Read every sample, or raise :class:`ConfigError` naming the file and line of the first problem.

    Each non-blank line is a JSON object with ``id`` (string), ``context`` (string), ``question``
    (string), ``answers`` (non-empty list of strings, all must appear in the output); optionally
    ``answer_prefix`` (string), ``max_new_tokens`` (int in ``[1, 4096]``, default 32) and ``task`` (a
    group name for the results, default ``"file"``). Ids must be unique. Blank lines are skipped; the
    file must be UTF-8.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"tasks file {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"tasks file {str(path)!r} is not a file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read tasks file {str(path)!r}: {exc.strerror or exc}") from None
    samples: list[TaskSample] = []
    seen: dict[str, int] = {}
    for lineno, data in enumerate(raw.splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:
            line = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start} of the line is "
                              f"{data[exc.start]:#04x})") from None
        if not line.strip():
            continue
        obj = _parse(line, where)
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


def _parse(line: str, where: str) -> dict[str, Any]:
    """One line's object with every field of the right type, or :class:`ConfigError` naming it."""
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
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {list(REQUIRED + OPTIONAL)}")
    for key in ("id", "context", "question", "answer_prefix", "task"):
        if key in obj and not isinstance(obj[key], str):
            raise ConfigError(f"{where}: field {key!r} must be a string, got {obj[key]!r}")
    for key in ("id", "context"):  # NOTE: an empty id would label results with nothing
        if not obj[key].strip():
            raise ConfigError(f"{where}: field {key!r} is empty")
    answers = obj["answers"]
    # NOTE: checked here, not converted: a dict or a string would become a list of its keys or letters
    if not (isinstance(answers, list) and answers and all(isinstance(a, str) and a.strip() for a in answers)):
        raise ConfigError(f"{where}: field 'answers' must be a non-empty list of non-empty strings, "
                          f"got {answers!r}")
    n = obj.get("max_new_tokens", 32)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NEW_TOKENS:
        raise ConfigError(f"{where}: field 'max_new_tokens' must be an integer in [1, {MAX_NEW_TOKENS}], "
                          f"got {n!r}")
    return obj
