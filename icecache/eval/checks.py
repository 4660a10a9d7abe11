"""Checks of the shared model arguments, run before the model loads; each error names the flag, the
value and what would be valid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from icecache.core.errors import ConfigError

#: what ``--dtype`` accepts (torch's names; fp8 and integer types cannot hold a KV cache here)
DTYPES = ("float32", "float16", "bfloat16")
#: device types the cache runs on
DEVICE_TYPES = ("cpu", "cuda")


def check_dtype(name: str | None, flag: str = "--dtype") -> None:
    if name is not None and name not in DTYPES:
        raise ConfigError(f"{flag} {name!r} is not supported; use one of {', '.join(DTYPES)}")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N`` of a GPU that exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"--device {name!r}: the cache runs on {' or '.join(DEVICE_TYPES)} "
                          f"(auto, cpu, cuda, cuda:N), not {device.type!r}")
    if device.type == "cpu" and device.index not in (None, 0):
        raise ConfigError(f"--device {name!r}: the CPU has no index; use cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name!r} asked for but CUDA is not available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name!r}: this machine has {count} CUDA device(s), "
                              f"cuda:0..cuda:{count - 1}")
    return device


def check_tokens(specs: Sequence[Any], args: Any, positions: int | None) -> None:
    """Budgets, ``--sink`` and ``--window`` are non-negative and fit the model's positions (a larger
    budget would only allocate memory nothing can fill)."""
    for flag, value in (("--sink", args.sink), ("--window", args.window)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} must be a non-negative number of tokens, got {value}")
    if positions is None:
        return
    for flag, value in (("--sink", args.sink), ("--window", args.window)):
        if value is not None and value > positions:
            raise ConfigError(f"{flag} {value} is larger than the model's {positions} positions")
    if args.sink is not None and args.window is not None and args.sink + args.window > positions:
        total = args.sink + args.window
        raise ConfigError(f"--sink {args.sink} + --window {args.window} = {total} tokens is more than the "
                          f"model's {positions} positions")
    budget = getattr(args, "budget", None)
    if budget is not None and budget > positions:
        raise ConfigError(f"--budget {budget} is larger than the model's {positions} positions (a budget "
                          f"counts tokens attended per KV head; at most {positions})")
    for spec in specs:
        if spec.budget is not None and spec.budget > positions:
            raise ConfigError(f"budget {spec.budget} of {spec.label!r} is larger than the model's "
                              f"{positions} positions (a budget counts tokens attended per KV head; at "
                              f"most {positions})")


def check_disk_dir(value: str | None, flag: str = "--disk-dir") -> None:
    """An existing, writable directory (a probe file is created and removed)."""
    if value is None:
        return
    if not value.strip():
        raise ConfigError(f"{flag} is empty; give a directory (leave the flag out for no disk tier)")
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"{flag} {value!r} does not exist; create it first")
    if not path.is_dir():
        raise ConfigError(f"{flag} {value!r} is not a directory")
    from icecache.eval.files import check_output_dir

    check_output_dir(path, flag)


def check_counts(args: Any) -> None:
    """Positive counts and capacities, named by flag."""
    for flag, attr in (("--batch-size", "batch_size"), ("--threads", "threads"),
                       ("--device-pages", "device_pages"), ("--host-pages", "host_pages")):
        value = getattr(args, attr, None)
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be positive, got {value}")
    check_threads(getattr(args, "threads", None))
    if getattr(args, "seed", 0) < 0:
        raise ConfigError(f"--seed must be non-negative, got {args.seed}")


#: generated samples per task at most: they are all generated (and tokenized) before the first decode
MAX_SAMPLES = 10_000
#: torch threads at most, per CPU of the machine (OpenMP crashed with SIGSEGV at --threads 100000)
THREADS_PER_CPU = 4


def check_samples(value: int, flag: str = "--samples") -> None:
    if value < 1:
        raise ConfigError(f"{flag} must be positive, got {value}")
    if value > MAX_SAMPLES:
        raise ConfigError(f"{flag} {value} is more than {MAX_SAMPLES} samples per task (every sample is "
                          "generated before the first decode); run several seeds instead")


def check_threads(value: int | None, flag: str = "--threads") -> None:
    """``None`` (torch's default) or 1 to a few per CPU."""
    if value is None:
        return
    import os

    cpus = os.cpu_count() or 1
    if value < 1:
        raise ConfigError(f"{flag} must be positive, got {value}")
    if value > THREADS_PER_CPU * cpus:
        raise ConfigError(f"{flag} {value} is more than {THREADS_PER_CPU} per CPU of this machine "
                          f"({cpus} CPUs: at most {THREADS_PER_CPU * cpus})")

