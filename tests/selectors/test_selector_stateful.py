"""Stateful: any interleaving of decode appends (of any size) and selections keeps every invariant."""

from __future__ import annotations

import torch
from default_selectors import available, make_selector
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from icecache.core.config import CacheConfig
from icecache.testing.synthetic import make_clustered_kv, query_for_cluster

NAMES = [n for n in ("quest", "clusterkv", "infllm", "oracle", "streamingllm", "icecache") if available(n)]


class SelectorMachine(RuleBasedStateMachine):
    @initialize(
        name=st.sampled_from(NAMES),
        budget=st.sampled_from([24, 40, 64]),
        page_size=st.sampled_from([4, 8]),
        prompt=st.integers(1, 60),
        pad=st.integers(0, 10),
        seed=st.integers(0, 2**16),
    )
    def start(self, name, budget, page_size, prompt, pad, seed):
        self.config = CacheConfig(budget=budget, page_size=page_size, sink_tokens=2)
        self.kv = make_clustered_kv(2, 2, 160, 8, num_clusters=5, spread=0.3, seed=seed)
        self.sel = make_selector(name, self.config, **({"block_size": 16} if name == "infllm" else {}))
        self.start_pos = torch.tensor([0, min(pad, prompt - 1)])  # every row keeps a real token
        self.n = prompt
        self.sel.prefill(self.kv.keys[:, :, :prompt], start=self.start_pos)
        self.step = 0

    @precondition(lambda self: self.n < 150)
    @rule(count=st.sampled_from([1, 1, 1, 3, 8]))
    def append(self, count):
        count = min(count, 160 - self.n)
        self.sel.append(self.kv.keys[:, :, self.n : self.n + count])
        self.n += count

    @rule(cluster=st.integers(0, 4))
    def select(self, cluster):
        q = query_for_cluster(self.kv, cluster, group_size=2, seed=self.step)
        self.step += 1
        s = self.sel.select(q)
        mask = s.token_mask(self.n)
        total = s.ledger.total.expand(2, 2)
        assert torch.equal(mask.sum(-1), total)
        assert int(total.max()) <= self.config.budget and int(total.min()) >= 1
        assert not bool(mask[1, :, : int(self.start_pos[1])].any())  # left padding never attended
        assert bool(mask[:, :, self.n - 1].all())  # the newest token is in the window

    @invariant()
    def pages_partition_the_paged_tokens(self):
        pos = self.sel.positions
        layout = self.sel.layout.token_ids.reshape(2, 2, -1)
        counts = torch.zeros(2, 2, self.n + 1, dtype=torch.int64).scatter_add_(
            2, torch.where(layout >= 0, layout, self.n), torch.ones_like(layout)
        )[..., : self.n]
        assert torch.equal(counts, pos.paged_mask()[:, None].expand(2, 2, self.n).to(torch.int64))
        assert pos.window_count().max() <= self.config.window_tokens + self.sel.effective_flush_tokens - 1


SelectorMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=12, deadline=None, database=None
)
TestSelectorMachine = SelectorMachine.TestCase
