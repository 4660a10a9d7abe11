"""The checks before a run refuse a tier stack that cannot hold the prompt's pages, at the boundary the
cache itself would hit, and name the flag to change."""

import pytest

from icecache.core.config import TierConfig
from icecache.core.errors import ConfigError
from icecache.eval.policies import build_policy, check_capacities, parse_policies
from icecache.integrations.hf.loader import read_model_config, resolve_checkpoint

CONTEXT, BATCH = 1024, 2


@pytest.fixture(scope="module")
def model_config():
    return read_model_config(resolve_checkpoint(None))


def _policy(model_config, *, tiers, **tier_config):
    spec = parse_policies("icecache", 256)[0]
    return build_policy(spec, model_config, tiers=TierConfig(**tier_config), tier_names=tiers)


def _prompt_pages(policy, model_config) -> int:
    """Pages the prompt writes, counted here from the geometry (not by the check's own code)."""
    config = policy.config
    page_size = policy.make_selector(config.dense_layers).page_size
    sparse = model_config.num_hidden_layers - config.dense_layers
    rows = BATCH * config.geometry.num_kv_heads
    paged = CONTEXT - config.sink_tokens - config.window_tokens
    return sparse * rows * -(-paged // page_size)


def _check(policy, model_config):
    check_capacities(policy, batch=BATCH, context=CONTEXT, num_layers=model_config.num_hidden_layers)


@pytest.mark.parametrize("stack", [("device",), ("host", "device")])
def test_a_device_tier_at_the_bottom_must_hold_every_prompt_page(model_config, stack):
    need = _prompt_pages(_policy(model_config, tiers=stack), model_config)
    _check(_policy(model_config, tiers=stack, device_pages=need), model_config)
    message = (rf"--tiers {','.join(stack)} cannot hold the prompt's pages: .* "
               rf"hold {need - 1} pages \(device {need - 1}\).* need at least {need}")
    with pytest.raises(ConfigError, match=message):
        _check(_policy(model_config, tiers=stack, device_pages=need - 1), model_config)


def test_the_default_device_capacity_is_what_the_cache_sizes(model_config):
    """Without --device-pages a device-only stack is refused, since its default room is the selection's."""
    with pytest.raises(ConfigError, match="--tiers device cannot hold"):
        _check(_policy(model_config, tiers=("device",)), model_config)


def test_backing_tiers_add_up_and_an_unbounded_one_ends_the_check(model_config):
    stack = ("device", "host", "disk")
    need = _prompt_pages(_policy(model_config, tiers=stack), model_config)
    split = need // 2
    _check(_policy(model_config, tiers=stack, host_pages=split, disk_pages=need - split, disk_dir="/tmp"),
           model_config)
    message = rf"tiers {','.join(stack)} .* hold {need - 1} pages \(host {split}, disk {need - 1 - split}\)"
    with pytest.raises(ConfigError, match=message):
        _check(_policy(model_config, tiers=stack, host_pages=split,
                       disk_pages=need - 1 - split, disk_dir="/tmp"), model_config)
    # an unbounded disk tier ends the check, however small the host tier
    _check(_policy(model_config, tiers=stack, host_pages=1, disk_dir="/tmp"), model_config)


def test_the_default_stack_names_host_pages(model_config):
    need = _prompt_pages(_policy(model_config, tiers=None), model_config)
    _check(_policy(model_config, tiers=None, host_pages=need), model_config)
    with pytest.raises(ConfigError, match=rf"--host-pages {need - 1} cannot hold .* need at least {need}; "
                                          "raise it or add --disk-dir"):
        _check(_policy(model_config, tiers=None, host_pages=need - 1), model_config)
