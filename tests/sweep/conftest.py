import json

import pytest
from sweep_specs import TINY


@pytest.fixture
def write_spec(tmp_path):
    def write(text: str, name: str = "spec.toml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny sweep on the local backend (2 workers), run once: (spec path, out folder, sweep.json)."""
    from icecache.cli.main import main

    tmp = tmp_path_factory.mktemp("tiny")
    spec = tmp / "tiny.toml"
    spec.write_text(TINY)
    out = tmp / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    return spec, out, json.loads((out / "sweep.json").read_text())
