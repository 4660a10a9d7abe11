"""Public test helpers for plugin authors: strategies, conformance suites, ``assert_close``.

``hypothesis`` is needed for the strategies and suites (``pip install icecache[testing]``);
``assert_close`` and the fidelity metrics work without it.
"""
