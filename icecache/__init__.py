"""icecache: KV-cache management for long-sequence LLM inference.

Importing the package loads nothing: plugins load when a plugin manager is built.
"""

__version__ = "0.1.0"
