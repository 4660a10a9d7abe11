"""The MIPS transform turns max inner product into nearest neighbour."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.index.transform import mips_keys, mips_queries
from icecache.testing.assertions import assert_close
from icecache.testing.strategies.kv import point_groups


@settings(max_examples=30, deadline=None)
@given(groups=point_groups(), qseed=st.integers(0, 2**16))
def test_transformed_distance_order_is_inner_product_order(groups, qseed):
    keys = groups.points.double()  # [G, N, D]
    q = torch.randn(keys.shape[0], keys.shape[-1], generator=torch.Generator().manual_seed(qseed)).double()
    tk, m2 = mips_keys(keys)
    tq = mips_queries(q)
    dist = ((tk - tq[:, None]) ** 2).sum(-1)  # [G, N]
    ip = (keys * q[:, None]).sum(-1) / q.norm(dim=-1, keepdim=True)
    # |T_Q(q) - T_K(k)|^2 = 1 + M^2 - 2 q.k / |q|: exact identity, hence the same order
    assert_close(dist, 1 + m2[:, None] - 2 * ip, rtol=1e-9, atol=1e-9)
    assert_close(tk.norm(dim=-1), m2.sqrt()[:, None].expand_as(dist), rtol=1e-9, atol=1e-9)
    assert torch.equal(dist.argmin(-1), ip.argmax(-1)) or bool(
        torch.isclose(ip.gather(1, dist.argmin(-1, keepdim=True)), ip.amax(-1, keepdim=True)).all())


def test_max_norm_grows_lazily():
    keys = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    _, m2 = mips_keys(keys)
    assert float(m2) == 4.0
    _, m2b = mips_keys(keys[:, :1], max_norm_sq=m2)
    assert float(m2b) == 4.0  # a smaller batch never shrinks M
    masked, m2c = mips_keys(keys, mask=torch.tensor([[True, False]]))
    assert float(m2c) == 1.0 and float(masked[0, 1, -1]) == 0.0  # masked keys don't count towards M
