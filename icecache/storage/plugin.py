"""Built-in tiers, registered through the same hook as third-party plugins."""

from __future__ import annotations

from typing import Any

from icecache.core.config import CacheConfig
from icecache.core.hookspecs import hookimpl


def device_tier(config: CacheConfig, **options: Any) -> Any:
    from icecache.storage.device import DeviceTier

    return DeviceTier.from_config(config, **options)


def host_tier(config: CacheConfig, **options: Any) -> Any:
    from icecache.storage.host import HostTier

    return HostTier.from_config(config, **options)


def disk_tier(config: CacheConfig, **options: Any) -> Any:
    from icecache.storage.disk import DiskTier

    return DiskTier.from_config(config, **options)


@hookimpl
def icecache_register_tiers(register):
    register("device", device_tier,
             description="page pool attention reads: CUDA memory, or a CPU tensor standing in without CUDA; "
                         "capacity config.tiers.device_pages, eviction config.tiers.eviction (lru)")
    register("host", host_tier,
             description="CPU memory, pinned when CUDA is available (pageable otherwise); "
                         "capacity config.tiers.host_pages")
    register("disk", disk_tier,
             description="a file under config.tiers.disk_dir (pread/pwrite) with a checksum per page; "
                         "capacity config.tiers.disk_pages")


@hookimpl
def icecache_register_evictions(register):
    from icecache.storage.eviction import BUILTIN_EVICTIONS

    for name, cls in BUILTIN_EVICTIONS.items():
        register(name, cls, description=(cls.__doc__ or "").strip().splitlines()[0])
