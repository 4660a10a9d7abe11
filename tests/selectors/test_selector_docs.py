"""The plugin guide's code runs as written, and its selector passes the conformance suite."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "selectors.md"


def test_selector_guide_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    out = capsys.readouterr().out
    assert "'budget': 64" in out and "'window': 13.0" in out
    selection = namespace["selection"]
    assert int(selection.ledger.total.max()) <= 64
