"""Before/after memory from outside: bytes reachable from an ``IceCache`` (tensor storages and numpy
buffers) over full KV, same prompt, after the prefill and after 8 decode steps.

Self-contained (its own walk, not ``icecache.core.memory``), so it runs against any version of the
package: ``PYTHONPATH=/path/to/old/checkout python benchmarks/reachable_probe.py 8000 full,icecache``
measures that checkout; without ``PYTHONPATH``, the installed one. Prints one JSON line per policy.
"""

from __future__ import annotations

import gc
import json
import sys
import types

import numpy as np
import torch

_OPAQUE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           types.CodeType, str, bytes, int, float, bool, type(None))


def reachable(root: object) -> int:
    seen, counted, total, todo = set(), set(), 0, [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() and storage.data_ptr() not in counted:
                counted.add(storage.data_ptr())
                total += storage.nbytes()
            continue
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            ptr = base.__array_interface__["data"][0]
            if ptr and ptr not in counted:
                counted.add(ptr)
                total += base.nbytes
            continue
        todo.extend(gc.get_referents(obj))
    return total


def main() -> None:
    import icecache
    from icecache.eval.policies import build_policy, parse_policies
    from icecache.integrations.hf.attention import use_icecache
    from icecache.integrations.hf.cache import IceCache
    from icecache.integrations.hf.generation import decode
    from icecache.integrations.hf.loader import load_model
    from icecache.integrations.hf.snapshot import prefill_snapshot
    from icecache.tasks import generate_suite
    from icecache.tasks.sample import prompt_ids

    torch.set_num_threads(1)
    context, policies = int(sys.argv[1]), sys.argv[2]
    model, tokenizer = load_model(None)
    use_icecache(model)
    sample = generate_suite(["niah_single"], n=1, context=context, tokenizer=tokenizer, seed=0)[0]
    ids = [prompt_ids(tokenizer, sample)]
    try:  # NOTE: the prompt queries every built-in selector asks for (InfLLM's 512 the most), as eval gives
        snapshot = prefill_snapshot(model, ids, query_window=512)
    except TypeError:  # a version from before prefill snapshots kept queries
        snapshot = prefill_snapshot(model, ids)
    n = snapshot.keys[0].shape[2]
    full = sum(2 * k.numel() * k.element_size() for k in snapshot.keys)
    for spec in parse_policies(policies, 256):
        cache = IceCache.from_snapshot(snapshot, build_policy(spec, model.config, device=model.device))
        prefill = reachable(cache)
        decode(model, cache, snapshot, 9)
        after = reachable(cache)
        later = full * (n + 8) / n
        print(json.dumps({"code": icecache.__file__, "context": context, "policy": spec.label,
                          "prefill": round(prefill / full, 3), "after8": round(after / later, 3)}))
        cache.close()


if __name__ == "__main__":
    main()
