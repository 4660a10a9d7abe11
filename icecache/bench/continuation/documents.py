"""Documents a continuation is measured on: the offline prose the task suite uses, or a user's JSONL file,
cut into a prompt of ``N`` tokens and a continuation of ``M`` (+1 target) tokens."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attrs import field, frozen
from attrs.validators import instance_of

from icecache.core.errors import ConfigError

#: the longest continuation measured (tokens): a long chain of thought, not a book
MAX_CONTINUATION = 2048


@frozen
class Document:
    """One text with a name (``id``) that tables and JSON use."""

    id: str = field(validator=instance_of(str))
    text: str = field(validator=instance_of(str))


@frozen(kw_only=True)
class Split:
    """A document's tokens: ``prompt`` (prefilled, ``N`` ids) and ``continuation`` (``M + 1`` ids:
    decode step ``t`` feeds ``continuation[t]`` and is scored on ``continuation[t + 1]``)."""

    id: str
    prompt: list[int]
    continuation: list[int]

    @property
    def steps(self) -> int:
        return len(self.continuation) - 1


def builtin_documents(count: int, *, seed: int = 0) -> list[Document]:
    """``count`` documents of ``pydoc_data`` prose (the suite's essay haystack), each from its own start,
    starts spread evenly over the text (offset by ``seed``) and wrapping around its end."""
    from icecache.tasks.haystack import essay_sentences

    if count < 1:
        raise ConfigError(f"--docs must be a positive number of documents, got {count}")
    pool = essay_sentences()
    stride = max(1, len(pool) // count)
    docs = []
    for i in range(count):
        start = (seed * 7919 + i * stride) % len(pool)
        # NOTE: the whole pool from that start (about 50k tokens): more than any prompt + continuation
        text = " ".join(pool[(start + j) % len(pool)] for j in range(len(pool)))
        docs.append(Document(f"pydoc-{start}", text))
    return docs


def load_docs_file(path: str | Path) -> list[Document]:
    """JSONL, one ``{"id": str, "text": str}`` per line (blank lines skipped). Errors name the file, the
    line and what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--docs-file {str(path)!r} does not exist or is not a file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--docs-file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read --docs-file {str(path)!r}: {exc.strerror or exc}") from None
    docs: list[Document] = []
    seen: set[str] = set()
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"--docs-file {str(path)!r} line {no}"
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{where} must be a JSON object with 'id' and 'text', got {type(row).__name__}")
        missing = [k for k in ("id", "text") if k not in row]
        if missing:
            raise ConfigError(f"{where} lacks {missing}: each line needs 'id' and 'text'")
        doc_id, text = row["id"], row["text"]
        if not isinstance(doc_id, str) or not doc_id.strip():
            raise ConfigError(f"{where}: 'id' must be a non-empty string, got {doc_id!r}")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: 'text' of {doc_id!r} must be a non-empty string")
        if doc_id in seen:
            raise ConfigError(f"{where}: id {doc_id!r} appears twice")
        seen.add(doc_id)
        docs.append(Document(doc_id, text))
    if not docs:
        raise ConfigError(f"--docs-file {str(path)!r} holds no documents")
    return docs


def check_lengths(prompt_tokens: int, continuation_tokens: int, positions: int | None) -> None:
    """``N`` and ``M`` are positive, ``M <= MAX_CONTINUATION`` and ``N + M + 1`` fits the model."""
    if prompt_tokens < 1:
        raise ConfigError(f"--prompt-tokens must be positive, got {prompt_tokens}")
    if not 1 <= continuation_tokens <= MAX_CONTINUATION:
        raise ConfigError(f"--continuation-tokens must be in 1..{MAX_CONTINUATION}, "
                          f"got {continuation_tokens}")
    if positions is not None and prompt_tokens + continuation_tokens + 1 > positions:
        raise ConfigError(f"--prompt-tokens {prompt_tokens} + --continuation-tokens {continuation_tokens} "
                          f"(+1 target) is more than the model's {positions} positions")


def split_documents(docs: Sequence[Document], tokenizer: Any, prompt_tokens: int,
                    continuation_tokens: int) -> list[Split]:
    """Each document's first ``N + M + 1`` tokens (no special tokens added), or :class:`ConfigError`
    naming every document that is too short and its length."""
    need = prompt_tokens + continuation_tokens + 1
    out, short = [], []
    for doc in docs:
        ids = tokenizer(doc.text, add_special_tokens=False).input_ids
        if len(ids) < need:
            short.append(f"{doc.id!r} ({len(ids)} tokens)")
            continue
        out.append(Split(id=doc.id, prompt=ids[:prompt_tokens], continuation=ids[prompt_tokens:need]))
    if short:
        raise ConfigError(f"documents shorter than --prompt-tokens {prompt_tokens} + --continuation-tokens "
                          f"{continuation_tokens} + 1 = {need} tokens: {', '.join(short)}")
    return out
