"""The project's own tests use the public strategies: one place to import them from.

Re-exports :mod:`icecache.testing.strategies` (and the domain strategies it gathers).
"""

from icecache.testing.strategies import *  # noqa: F403
from icecache.testing.strategies import __all__  # noqa: F401
