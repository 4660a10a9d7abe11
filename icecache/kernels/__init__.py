"""Device kernels: sparse paged decode attention, page gather/scatter, page scoring.

Pick a backend with :func:`get_backend` (``"auto"``, ``"reference"``, ``"triton"``); see
:mod:`icecache.kernels.base` for the contract and the selection precedence. Nothing heavy is
imported here (Triton only when the Triton backend is built).
"""

from icecache.kernels.base import KernelBackend, get_backend
from icecache.kernels.merge import merge_attention_states

__all__ = ["KernelBackend", "get_backend", "merge_attention_states"]
