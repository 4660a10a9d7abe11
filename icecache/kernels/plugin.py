"""Built-in kernel backends, registered like any plugin's."""

from __future__ import annotations

from icecache.core.hookspecs import hookimpl


def _auto(**options):
    from icecache.kernels.base import get_backend

    return get_backend("auto")


def _reference(**options):
    from icecache.kernels.backends import ReferenceBackend

    return ReferenceBackend(**options)


def _triton(**options):
    from icecache.kernels.backends import TritonBackend

    return TritonBackend(**options)


@hookimpl
def icecache_register_kernels(register):
    register("auto", _auto,
             description="ICECACHE_KERNEL if set, else triton on CUDA when triton imports, else reference")
    register("reference", _reference, description="plain torch, any device (ground truth)")
    register("triton", _triton, description="Triton kernels: split-K sparse paged attention, gather/scatter, "
             "page scoring (CUDA, or CPU under TRITON_INTERPRET=1)")
