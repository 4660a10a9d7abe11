"""``bench e2e``'s own ``time_policy`` on a saved prefill (8000-token prompts x 4), the policies alternated.

    PYTHONPATH=<checkout> POLS=full,icecache,quest,streamingllm ROUNDS=1 TAG=new python e2e_quick.py

``OPTS``: ``--policy-options`` JSON; ``CTX``: the saved snapshot's context (``/tmp/prof/snap_CTX_4.pt``,
written by ``torch.save(prefill_snapshot(model, prompts))`` of four ``niah_single`` prompts, seed 0).
"""

import json
import os
import statistics

import torch

from icecache.bench.e2e import time_policy
from icecache.eval.policies import build_policy, parse_policies
from icecache.integrations.hf.attention import use_icecache
from icecache.integrations.hf.loader import load_model

PARTS = ("index_query", "page_load", "attention", "rest", "total", "cpu")


def main() -> None:
    torch.set_num_threads(1)
    model, _ = load_model(None, dtype="float32", device="cpu")
    use_icecache(model)
    snap = torch.load(f"/tmp/prof/snap_{os.environ.get('CTX', '8000')}_4.pt", weights_only=False)
    opts = json.loads(os.environ.get("OPTS", "{}"))
    specs = parse_policies(os.environ.get("POLS", "full,icecache"), 256, options=opts)
    policies = [(s.label, build_policy(s, model.config, device=torch.device("cpu"))) for s in specs]
    steps: dict[str, list] = {}
    for _ in range(int(os.environ.get("ROUNDS", "2"))):
        for label, policy in policies:
            steps.setdefault(label, []).extend(time_policy(model, snap, policy, 8, 2)["steps"])
    for label, got in steps.items():
        med = {k: round(1e3 * statistics.median(s[k] for s in got), 1) for k in PARTS}
        print(os.environ.get("TAG", ""), label, med)


if __name__ == "__main__":
    main()
