"""What a backend reports while shards run: shard JSONs land here, progress and ``status.json`` follow.

Backends call :meth:`Tracker.start`, :meth:`~Tracker.advance`, :meth:`~Tracker.done` and
:meth:`~Tracker.failed` from the driver process only. The unit of progress is a sample x policy
decode, so the ETA is right even when shards differ in size; ``status.json`` (rewritten on every
state change) lets another shell, or a test, see which process runs which shard.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from attrs import define, field

from icecache.sweep.shards import Shard


def shard_path(out: Path, shard: Shard) -> Path:
    return out / "shards" / f"{shard.name}.json"


def error_path(out: Path, shard: Shard) -> Path:
    return out / "shards" / f"{shard.name}.error.txt"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


@define
class Tracker:
    """Shard states (``pending``, ``running``, ``done``, ``failed``) of one sweep run.

    ``bar``: a tqdm bar on a terminal; otherwise (or with ``bar=False``) a status line per event
    and at least every ``every`` seconds, so a log shows progress too."""

    out: Path
    shards: list[Shard]
    bar: bool = True
    every: float = 60.0
    states: dict[str, dict[str, Any]] = field(factory=dict)
    _decoded: dict[str, int] = field(factory=dict)
    _t0: float = field(factory=time.perf_counter)
    _last_line: float = 0.0
    _tqdm: Any = None

    def __attrs_post_init__(self) -> None:
        (self.out / "shards").mkdir(parents=True, exist_ok=True)
        for s in self.shards:
            self.states[s.name] = {"state": "pending"}
            self._decoded[s.name] = 0
        if self.bar and sys.stderr.isatty():
            from tqdm import tqdm

            self._tqdm = tqdm(total=self.total, desc="sweep", unit="decode", dynamic_ncols=True)
        self._write_status()

    @property
    def total(self) -> int:
        return sum(s.decodes for s in self.shards if self.states[s.name]["state"] != "failed") + sum(
            self._decoded[s.name] for s in self.shards if self.states[s.name]["state"] == "failed")

    def count(self, state: str) -> int:
        return sum(1 for st in self.states.values() if st["state"] == state)

    def start(self, shard: Shard, where: str, pid: int | None = None) -> None:
        self.states[shard.name] = {"state": "running", "where": where, "pid": pid, "started": time.time()}
        self._event(f"start  {shard.name} on {where}")

    def advance(self, shard: Shard, n: int) -> None:
        n = min(n, shard.decodes - self._decoded[shard.name])
        self._decoded[shard.name] += n
        if self._tqdm is not None:
            self._tqdm.update(n)
        self.tick()

    def tick(self) -> None:
        """A status line when none was printed for ``every`` seconds (no bar: a log's progress)."""
        if self._tqdm is None and time.perf_counter() - self._last_line > self.every:
            self._line("")

    def done(self, shard: Shard, payload: dict[str, Any], seconds: float) -> None:
        from icecache.bench.report import write_json

        write_json(shard_path(self.out, shard), payload)
        error_path(self.out, shard).unlink(missing_ok=True)
        self.advance(shard, shard.decodes)
        self.states[shard.name] = {"state": "done", "seconds": seconds}
        self._event(f"done   {shard.name} ({_duration(seconds)})")

    def failed(self, shard: Shard, error: str, detail: str = "") -> None:
        error_path(self.out, shard).write_text(f"{error}\n\n{detail}".rstrip() + "\n")
        started = self.states[shard.name].get("started")
        self.states[shard.name] = {"state": "failed", "error": error,
                                   "seconds": None if started is None else time.time() - started}
        if self._tqdm is not None:
            self._tqdm.total = self.total
            self._tqdm.refresh()
        self._event(f"FAILED {shard.name}: {error}")

    def close(self) -> None:
        """End of the run; shards still running (Ctrl-C) are marked ``interrupted``."""
        for st in self.states.values():
            if st["state"] == "running":
                st["state"] = "interrupted"
        if self._tqdm is not None:
            self._tqdm.close()
        self._write_status()

    def eta(self) -> float | None:
        done = sum(self._decoded.values())
        elapsed = time.perf_counter() - self._t0
        if not done:
            return None
        return (self.total - done) * elapsed / done

    def summary(self) -> str:
        eta = self.eta()
        return (f"{self.count('done')}/{len(self.shards)} shards done, {self.count('running')} running, "
                f"{self.count('failed')} failed; {_duration(time.perf_counter() - self._t0)} elapsed"
                + ("" if eta is None or not self.count("running") else f", ETA {_duration(eta)}"))

    def _event(self, what: str) -> None:
        self._write_status()
        self._line(what)

    def _line(self, what: str) -> None:
        self._last_line = time.perf_counter()
        text = f"sweep: {what + ' | ' if what else ''}{self.summary()}"
        if self._tqdm is not None:
            self._tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def _write_status(self) -> None:
        from icecache.eval.files import write_atomic

        write_atomic(self.out / "status.json", json.dumps({"shards": self.states}, indent=1))
