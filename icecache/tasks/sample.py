"""One evaluation sample and how it becomes a prompt for an instruct model."""

from __future__ import annotations

from typing import Any

from attrs import field, frozen
from attrs.validators import instance_of

from icecache.core.errors import ConfigError


def _answers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise ConfigError(f"answers must be a list of strings, got {value!r}")
    out = tuple(value)
    if not out or not all(isinstance(a, str) and a.strip() for a in out):
        raise ConfigError(f"answers must be a non-empty list of non-empty strings, got {list(out)!r}")
    return out


@frozen(kw_only=True)
class TaskSample:
    """A long-context question with the strings a correct answer contains.

    ``context`` is the long document, ``question`` follows it in the same user turn, and
    ``answer_prefix`` (possibly empty) opens the assistant turn, as RULER does, so a small model
    answers in a predictable form. A sample is correct when every string of ``answers`` appears
    in the generated text (case-insensitive).

    ``decoded`` (possibly empty) is text that follows ``context`` in the same user turn but reaches the
    cache through the decode path, one token per step, instead of the prefill: what the model "wrote"
    during decoding (see :func:`split_prompt_ids`). Only pages inserted during decode hold it.
    """

    id: str = field(validator=instance_of(str))
    task: str = field(validator=instance_of(str))
    context: str = field(validator=instance_of(str))
    question: str = field(validator=instance_of(str))
    answers: tuple[str, ...] = field(converter=_answers)
    answer_prefix: str = field(default="", validator=instance_of(str))
    max_new_tokens: int = field(default=32)
    decoded: str = field(default="", validator=instance_of(str))
    meta: dict[str, Any] = field(factory=dict, eq=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")


def render_prompt(tokenizer: Any, sample: TaskSample) -> str:
    """The full prompt text: the model's chat template around ``context + question``, then the
    assistant turn opened with ``answer_prefix``. Falls back to plain text without a template."""
    user = f"{sample.context}{sample.decoded}\n\n{sample.question}"
    template = getattr(tokenizer, "chat_template", None)
    if template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = user + "\n"
    return text + sample.answer_prefix


def prompt_ids(tokenizer: Any, sample: TaskSample) -> list[int]:
    """Token ids of :func:`render_prompt` (no extra special tokens: the template has them)."""
    return tokenizer(render_prompt(tokenizer, sample), add_special_tokens=False).input_ids


def split_prompt_ids(tokenizer: Any, sample: TaskSample) -> tuple[list[int], list[int]]:
    """``(prefilled, decoded)`` token ids of :func:`render_prompt`: everything up to the end of
    ``context``, then the rest (``decoded``, the question, the answer prefix), which is teacher-forced
    through the cache's decode steps. Without ``decoded`` the second list is empty and the first is
    :func:`prompt_ids`."""
    if not sample.decoded:
        return prompt_ids(tokenizer, sample), []
    text = render_prompt(tokenizer, sample)
    cut = text.index(sample.context) + len(sample.context)
    encode = lambda t: tokenizer(t, add_special_tokens=False).input_ids  # noqa: E731
    return encode(text[:cut]), encode(text[cut:])
