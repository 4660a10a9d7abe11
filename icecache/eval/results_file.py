"""The results JSON of ``icecache eval`` / ``icecache run``, kept current while the run goes on.

The file is rewritten atomically after every finished (batch, policy) decode with ``"complete":
false``, and once more with ``true`` at the end, so Ctrl-C, SIGTERM or SIGKILL lose at most the decode
in progress. ``--resume`` reads it back: results whose ``(sample id, policy)`` are in it are not
decoded again, provided ``settings`` (everything that changes what is decoded or how it is compared)
equal this run's; otherwise the first difference is named. While a process writes the file it holds
:class:`~icecache.eval.files.OutputLock`, so a second writer is refused instead of overwriting.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import define, field

from icecache.core.errors import ConfigError
from icecache.eval.files import OutputLock
from icecache.eval.runner import SampleResult


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (a tasks file is part of a run's settings)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def settings_of(args: Any, prepared: Any, *, tasks: list[str] | None, context: int | None,
                samples: int | None, tasks_file: str | None = None,
                policy_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must be equal for ``--resume`` to continue a file: everything that changes the samples,
    what is decoded, or how the results compare (``args``: the shared model arguments)."""
    return {
        "model": str(prepared.checkpoint), "device": prepared.device.type, "dtype": prepared.dtype,
        "policies": [s.label for s in prepared.specs], "policy_options": policy_options,
        "budget": args.budget, "sink": args.sink, "window": args.window,
        "device_pages": args.device_pages, "host_pages": args.host_pages, "disk": args.disk_dir is not None,
        "tiers": _listed(getattr(args, "tiers", None)), "tier_options": getattr(args, "tier_options", None),
        "eviction": getattr(args, "eviction", None), "budget_policy": getattr(args, "budget_policy", None),
        "budget_options": getattr(args, "budget_options", None),
        "batch_size": args.batch_size, "seed": args.seed, "context": context, "tasks": tasks,
        "samples": samples, "tasks_file_sha256": None if tasks_file is None else file_digest(tasks_file),
    }


def _listed(value: Any) -> list[Any] | None:
    return None if value is None else list(value)  # NOTE: JSON reads a tuple back as a list


def _results(data: dict[str, Any], path: Path) -> list[SampleResult]:
    detail = data.get("samples_detail")
    if not isinstance(detail, list):
        raise ConfigError(f"--resume: {str(path)!r} has no 'samples_detail' list")
    out = []
    for i, d in enumerate(detail):
        try:
            out.append(SampleResult(**d))
        except TypeError as exc:
            raise ConfigError(f"--resume: {str(path)!r}: samples_detail[{i}] is malformed ({exc})") from None
    return out


def read_for_resume(path: Path, command: str, settings: dict[str, Any]) -> tuple[list[SampleResult], bool]:
    """The results already in ``path`` and whether that run completed, or :class:`ConfigError` when it
    cannot be resumed here."""
    if not path.is_file():
        raise ConfigError(f"--resume: {str(path)!r} does not exist (run without --resume to start)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--resume: {str(path)!r} is not a results JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("command") != command or not isinstance(
            data.get("settings"), dict):
        raise ConfigError(f"--resume: {str(path)!r} was not written by `icecache {command}` with settings "
                          "recorded (only files written by this version can be resumed)")
    old = data["settings"]
    for key in sorted(set(old) | set(settings)):
        if old.get(key) != settings.get(key):
            raise ConfigError(
                f"--resume: {str(path)!r} was written with {key}={old.get(key)!r}, this run has "
                f"{key}={settings.get(key)!r}; resume with the same settings or write elsewhere")
    return _results(data, path), data.get("complete") is True


@define
class ResultsFile:
    """Results so far and the JSON they are written to (``path`` ``None``: kept in memory only).

    ``payload(results)`` builds the JSON body (tables, header) from all results; ``policies`` orders
    them as an uninterrupted run would (batch, then policy, then sample).
    """

    path: Path | None
    command: str
    settings: dict[str, Any]
    payload: Callable[[list[SampleResult]], dict[str, Any]]
    policies: list[str]
    results: list[SampleResult] = field(factory=list)
    was_complete: bool = field(default=False, init=False)
    _lock: OutputLock | None = field(default=None, init=False)

    def open(self, *, resume: bool) -> ResultsFile:
        """Take the lock (refused while another process writes ``path``), then read what a resumed
        run already has. Call :meth:`close` when done."""
        if self.path is None:
            if resume:
                raise ConfigError("--resume needs the results file to continue (--json PATH)")
            return self
        flag = "--out" if self.command == "run" else "--json"
        self._lock = OutputLock(self.path, flag).acquire()
        try:
            if resume:
                self.results, self.was_complete = read_for_resume(self.path, self.command, self.settings)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def done(self) -> set[tuple[str, str]]:
        return {(r.sample_id, r.policy) for r in self.results}

    def add(self, chunk: list[SampleResult]) -> None:
        """Keep ``chunk`` (replacing earlier results of the same pairs) and rewrite the file."""
        keys = {(r.sample_id, r.policy) for r in chunk}
        self.results = [r for r in self.results if (r.sample_id, r.policy) not in keys] + list(chunk)
        self.write(complete=False)

    def ordered(self) -> list[SampleResult]:
        rank = {p: i for i, p in enumerate(self.policies)}
        return sorted(self.results, key=lambda r: (r.batch, rank.get(r.policy, len(rank))))

    def write(self, *, complete: bool) -> None:
        from icecache.bench.report import write_json

        if self.path is None:
            return
        body = self.payload(self.ordered())
        write_json(self.path, {"command": self.command, **body, "settings": self.settings,
                               "complete": complete})

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
