"""The written-during-decoding tasks: the answer reaches the cache only through decode steps."""

import pytest

from icecache.eval.runner import batches
from icecache.tasks import generate_task, parse_task_names, prompt_ids
from icecache.tasks.decode_fact import DECODED_FILLER
from icecache.tasks.sample import split_prompt_ids

TASKS = ("decode_fact", "decode_fact_lookalike")


@pytest.mark.parametrize("task", TASKS)
def test_answer_is_absent_from_the_prefilled_prompt_and_far_from_the_end(task, tokenizer):
    for sample in generate_task(task, n=3, context=700, tokenizer=tokenizer, seed=2):
        prefill, decoded = split_prompt_ids(tokenizer, sample)
        (answer,) = sample.answers
        assert answer not in tokenizer.decode(prefill)
        text = tokenizer.decode(decoded)
        assert answer in text
        # NOTE: the needle opens the decoded text; what follows must outlast a 60-token window + a page
        after = tokenizer(text[text.index(answer):], add_special_tokens=False).input_ids
        assert len(after) > 60 + 16, len(after)
        assert len(prefill) + len(decoded) <= 700
        assert abs(len(prefill) + len(decoded) - len(prompt_ids(tokenizer, sample))) <= 2


def test_lookalike_value_is_in_the_prompt_and_differs(tokenizer):
    for sample in generate_task("decode_fact_lookalike", n=4, context=600, tokenizer=tokenizer, seed=5):
        (answer,) = sample.answers
        needle = sample.meta["lookalike"]
        assert needle in sample.context and sample.meta["key"] not in needle
        value = needle.rstrip(".").rsplit(" ", 1)[1]
        assert value != answer and value[:3] == answer[:3] and len(value) == len(answer)


def test_tasks_are_registered_and_filler_is_counted():
    assert parse_task_names(",".join(TASKS)) == list(TASKS)
    assert DECODED_FILLER >= 4


def test_batches_keep_one_decoded_length_each(tokenizer):
    samples = generate_task("decode_fact", n=6, context=500, tokenizer=tokenizer, seed=1)
    lengths = [len(split_prompt_ids(tokenizer, s)[1]) for s in samples]
    for idx in batches(samples, 4, lengths):
        assert len({lengths[i] for i in idx}) == 1 and len(idx) <= 4
    assert sorted(i for b in batches(samples, 4, lengths) for i in b) == list(range(6))
