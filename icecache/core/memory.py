"""Counting the bytes an object holds: every distinct tensor storage and numpy buffer reachable from it.

``memory_report()`` itemizes what a cache holds (KV payload, page padding, index, ...); this walk is the
ground truth it is checked against, and what it calls ``other`` (bookkeeping arrays and anything not
itemized). Modules, classes and functions are not followed (a function's globals would reach the
whole program); views count once, at their storage's size.
"""

from __future__ import annotations

import gc
import types
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

_OPAQUE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           types.CodeType, types.FrameType, str, bytes, int, float, bool, type(None))


def reachable_bytes(*roots: Any, skip: Iterable[int] = ()) -> dict[str, int]:
    """Bytes of the distinct tensor storages and numpy buffers reachable from ``roots``, by device type
    (``"cpu"``, ``"cuda"``, ...). ``skip``: data pointers not to count (e.g. a memory-mapped file, which
    is disk, not memory)."""
    out: dict[str, int] = {}
    counted = set(skip)
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type == "meta":
                continue
            storage = obj.untyped_storage()
            ptr = storage.data_ptr()
            if ptr and ptr not in counted:
                counted.add(ptr)
                out[obj.device.type] = out.get(obj.device.type, 0) + storage.nbytes()
            continue
        if isinstance(obj, np.ndarray):
            root = obj
            while isinstance(root.base, np.ndarray):
                root = root.base
            ptr = root.__array_interface__["data"][0]
            if ptr and ptr not in counted:
                counted.add(ptr)
                out["cpu"] = out.get("cpu", 0) + root.nbytes
            continue
        todo.extend(gc.get_referents(obj))
    return out


def data_pointers(*tensors: torch.Tensor | None) -> set[int]:
    """Storage data pointers of ``tensors`` (for :func:`reachable_bytes`'s ``skip``)."""
    return {t.untyped_storage().data_ptr() for t in tensors if t is not None}

