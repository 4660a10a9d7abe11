"""Why do free-running runs part from full KV at token 8? Full KV's greedy tokens teacher-forced through
each policy; per step and document: full's top-1 minus top-2 log-prob (nats), whether the policy's
argmax agrees, KL(full || policy). Output beside it (AVX2-only AMD EPYC, 2 cores, quiet). Run with the
``bench continuation`` flags, e.g. ``--policy icecache@256,quest@1024 --prompt-tokens 4096
--continuation-tokens 16 --free-tokens 16 --docs 4 --batch-size 4 --threads 2 --no-progress``."""

import argparse
import sys

import torch

from icecache.bench import continuation as bench
from icecache.bench.continuation.documents import builtin_documents, split_documents
from icecache.bench.continuation.measure import forced_logits
from icecache.bench.continuation.runner import FULL
from icecache.eval.policies import build_policy
from icecache.eval.session import load
from icecache.integrations.hf.cache import IceCache
from icecache.integrations.hf.generation import decode
from icecache.integrations.hf.loader import check_tokenizer
from icecache.integrations.hf.snapshot import prefill_snapshot


def main() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:])
    prepared, _ = bench._check(args)
    docs = builtin_documents(args.docs, seed=args.seed)
    tokenizer = check_tokenizer(prepared.checkpoint)
    splits = split_documents(docs, tokenizer, args.prompt_tokens, args.continuation_tokens)
    model, _ = load(prepared)
    steps = args.free_tokens
    snap = prefill_snapshot(model, [s.prompt for s in splits], query_window=0)
    full = build_policy(FULL, model.config, device=model.device, **prepared.policy_kwargs)
    cache = IceCache.from_snapshot(snap, full)
    tokens = torch.tensor(decode(model, cache, snap, steps))  # [B, T]
    cache.close()

    def log_probs(policy) -> torch.Tensor:  # [T, B, V]
        # NOTE: as run on 2026-12-03, without prompt queries (query_window=0 above)
        cache = IceCache.from_snapshot(snap, policy, fewer_queries=True)
        out = [snap.last_logits.float(), *forced_logits(model, cache, snap, tokens[:, :-1])]
        cache.close()
        return torch.stack(out).log_softmax(-1)

    ref = log_probs(full)
    top2 = ref.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    print("full greedy reproduces itself:", bool((ref.argmax(-1).T == tokens).all()))
    for spec in prepared.specs:
        got = log_probs(build_policy(spec, model.config, device=model.device, **prepared.policy_kwargs))
        kl = (ref.exp() * (ref - got)).sum(-1)
        agree = got.argmax(-1) == ref.argmax(-1)
        print(f"\n{spec.label}: per step t (doc columns) margin_full | agree | kl")
        for t in range(steps):
            cells = (f"[{margin[t, b]:.3f} {int(agree[t, b])} {kl[t, b]:.4f}]" for b in range(len(splits)))
            print(t, " ".join(cells))


if __name__ == "__main__":
    main()
