import inspect
import re
from pathlib import Path

from icecache.core import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def _hook_names():
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if name.startswith("icecache_")]


def test_every_hook_has_a_docstring_and_a_section_in_the_hook_reference():
    text = DOCS.read_text()
    documented = set(re.findall(r"^### (icecache_\w+)$", text, flags=re.M))
    names = _hook_names()
    assert len(names) >= 9
    for name in names:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
    missing = sorted(set(names) - documented)
    stale = sorted(documented - set(names))
    assert not missing, f"hooks missing from docs/hooks.md: {missing}"
    assert not stale, f"docs/hooks.md documents hooks that do not exist: {stale}"


def test_documented_arguments_match_the_specs():
    text = DOCS.read_text()
    for name in _hook_names():
        params = list(inspect.signature(getattr(hookspecs, name)).parameters)
        if params == ["register"]:
            continue
        section = text.split(f"### {name}", 1)[1].split("###", 1)[0]
        assert f"`({', '.join(params)})`" in section, f"{name}: docs do not list arguments {params}"
