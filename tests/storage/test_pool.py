import pytest
import torch

from icecache.core.errors import PageError, StorageError, TensorSpecError
from icecache.storage.layout import PageSpec
from icecache.storage.pool import PagePool


def test_allocate_returns_distinct_ids_with_owners():
    pool = PagePool()
    a = pool.allocate(3, seq=1, layer=2, head=0)
    b = pool.allocate(2, seq=1, layer=torch.tensor([3, 4]), head=1)
    assert a.tolist() == [0, 1, 2] and b.tolist() == [3, 4]
    assert pool.owners(b).tolist() == [[1, 3, 1], [1, 4, 1]]
    assert pool.lens(a).tolist() == [0, 0, 0]
    assert pool.pages_of(seq=1, layer=3).tolist() == [3]
    assert pool.pages_of(head=0).tolist() == [0, 1, 2]
    assert pool.num_allocated == 5


def test_free_returns_ids_for_reuse_and_freed_ids_raise():
    pool = PagePool()
    ids = pool.allocate(4)
    pool.free(ids[1:3])
    with pytest.raises(PageError, match="page id 1 is not allocated"):
        pool.check(torch.tensor([0, 1]))
    with pytest.raises(PageError, match="page id 2"):
        pool.free(torch.tensor([2]))
    again = pool.allocate(3)
    assert sorted(again.tolist()[:2]) == [1, 2] and again.tolist()[2] == 4
    assert pool.lens(again).tolist() == [0, 0, 0]


def test_out_of_range_negative_and_repeated_ids_are_named():
    pool = PagePool()
    with pytest.raises(PageError, match="page id 0 is out of range"):
        pool.check(torch.tensor([0]))
    pool.allocate(2)
    with pytest.raises(PageError, match="page id 7 is out of range"):
        pool.check(torch.tensor([1, 7]))
    with pytest.raises(PageError, match="page id -3"):
        pool.check(torch.tensor([-3]))
    with pytest.raises(PageError, match="page id 1 is listed twice"):
        pool.check(torch.tensor([1, 0, 1]))
    with pytest.raises(TensorSpecError, match="float"):
        pool.check(torch.tensor([1.0]))


def test_bounded_pool_raises_when_exhausted_and_changes_nothing():
    pool = PagePool(capacity=3)
    pool.allocate(2)
    with pytest.raises(StorageError, match="2 pages asked, 1 of 3 free"):
        pool.allocate(2)
    assert pool.num_allocated == 2
    assert pool.allocate(1).tolist() == [2]


def test_written_check_names_unwritten_page():
    pool = PagePool()
    ids = pool.allocate(2)
    pool.set_lens(ids[:1], torch.tensor([3], dtype=torch.int32))
    with pytest.raises(PageError, match="page id 1 has no data"):
        pool.check(ids, written=True)


def test_page_spec_checks_name_the_bad_value():
    spec = PageSpec(page_size=4, head_dim=8, dtype=torch.float16)
    k = torch.zeros(2, 4, 8, dtype=torch.float16)
    cpu = (torch.device("cpu"),)
    with pytest.raises(TensorSpecError, match="dtype torch.float32"):
        spec.check_kv(k.float(), k, 2, cpu)
    with pytest.raises(TensorSpecError, match=r"shape \(2, 4, 7\)"):
        spec.check_kv(k, k[..., :7], 2, cpu)
    with pytest.raises(TensorSpecError, match="device meta"):
        spec.check_kv(k, torch.empty(2, 4, 8, dtype=torch.float16, device="meta"), 2, cpu)
    with pytest.raises(TensorSpecError, match=r"lens\[1\] = 5"):
        spec.check_lens(torch.tensor([4, 5]), 2)
    assert spec.page_nbytes == 2 * 4 * 8 * 2
