import os
import re
import subprocess
import sys

import pytest

from icecache.core.errors import ConfigError, UnknownComponentError
from icecache.tasks import TASKS, generate_suite, generate_task, parse_task_names, prompt_ids, render_prompt

CONTEXT = 1024


@pytest.mark.parametrize("task", sorted(TASKS))
def test_prompt_fits_the_token_target_closely(task, tokenizer):
    for sample in generate_task(task, n=2, context=CONTEXT, tokenizer=tokenizer, seed=3):
        n = len(prompt_ids(tokenizer, sample))
        assert n == sample.meta["prompt_tokens"]
        assert 0.85 * CONTEXT <= n <= CONTEXT, (task, n)
        assert sample.task == task and sample.answers


# NOTE: the decode_fact tasks hold their answer in the decoded text instead (tests/tasks/test_decode_fact.py)
SCORED_ON_PROMPT = [t for t in TASKS if t != "common_words" and not t.startswith("decode_fact")]


@pytest.mark.parametrize("task", SCORED_ON_PROMPT)
def test_every_answer_is_in_the_context_away_from_the_ends(task, tokenizer):
    for sample in generate_task(task, n=3, context=CONTEXT, tokenizer=tokenizer, seed=1):
        text = sample.context
        for answer in sample.answers:
            at = text.find(answer)
            assert at >= 0, (task, answer)
            # NOTE: needles sit at 10-90% depth so sink and window tokens alone cannot answer.
            assert 0.05 * len(text) < at < 0.95 * len(text), (task, at / len(text))


def test_common_words_are_the_most_frequent(tokenizer):
    sample = generate_task("common_words", n=1, context=CONTEXT, tokenizer=tokenizer)[0]
    counts: dict[str, int] = {}
    for word in re.findall(r"\d+\. (\w+)", sample.context):
        counts[word] = counts.get(word, 0) + 1
    top = sorted(counts, key=counts.get, reverse=True)[: len(sample.answers)]
    assert set(top) == set(sample.answers)
    rest = [c for w, c in counts.items() if w not in sample.answers]
    assert min(counts[a] for a in sample.answers) >= 4 * max(rest)


def test_distractor_keys_differ_from_the_asked_key(tokenizer):
    sample = generate_task("niah_multikey", n=1, context=CONTEXT, tokenizer=tokenizer)[0]
    keys = sample.meta["keys"]
    assert len(set(keys)) == 4 and sample.meta["asked"] == keys[:1]
    assert all(k in sample.context for k in keys)
    assert sample.context.count("special magic numbers for") == 4
    assert "The grass is green" in sample.context  # distractors look like the needle, not the haystack


def test_generation_is_seeded(tokenizer):
    a = generate_task("niah_single", n=2, context=512, tokenizer=tokenizer, seed=7)
    b = generate_task("niah_single", n=2, context=512, tokenizer=tokenizer, seed=7)
    c = generate_task("niah_single", n=2, context=512, tokenizer=tokenizer, seed=8)
    assert a == b
    assert a[0].answers != c[0].answers
    assert a[0].answers != a[1].answers


def test_prompt_uses_the_chat_template_and_answer_prefix(tokenizer):
    sample = generate_task("passkey", n=1, context=512, tokenizer=tokenizer)[0]
    text = render_prompt(tokenizer, sample)
    assert text.startswith("<|im_start|>system")
    assert "<|im_start|>assistant\n" + sample.answer_prefix in text
    assert text.endswith(sample.answer_prefix)


def test_suite_and_names(tokenizer):
    suite = generate_suite("passkey,niah_single", n=1, context=512, tokenizer=tokenizer)
    assert [s.task for s in suite] == ["passkey", "niah_single"]
    assert parse_task_names("all") == list(TASKS)
    with pytest.raises(UnknownComponentError, match="niah_singel.*available tasks: .*niah_single"):
        parse_task_names("niah_singel")
    with pytest.raises(ConfigError, match="no task names"):
        parse_task_names(" , ")


def test_too_small_a_context_is_an_error_naming_it(tokenizer):
    with pytest.raises(ConfigError, match="context target of 50 tokens is too small"):
        generate_task("niah_single", n=1, context=50, tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="number of samples"):
        generate_task("niah_single", n=0, context=512, tokenizer=tokenizer)


def test_samples_are_the_same_in_every_process():
    """A seeded sample must not depend on the process's string-hash seed (set order does)."""
    script = (
        "import hashlib, json\n"
        "from transformers import AutoTokenizer\n"
        "from icecache.integrations.hf.loader import resolve_checkpoint\n"
        "from icecache.tasks import TASKS, generate_task\n"
        "tok = AutoTokenizer.from_pretrained(resolve_checkpoint())\n"
        "out = {t: [s.context + s.question + str(s.answers) for s in generate_task(t, n=2, context=900,"
        " tokenizer=tok, seed=3)] for t in sorted(TASKS)}\n"
        "print(hashlib.sha256(json.dumps(out).encode()).hexdigest())\n"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                             check=True)
        digests.add(run.stdout.strip().splitlines()[-1])
    assert len(digests) == 1


def test_niah_list_asks_every_value_of_one_key_in_the_order_they_appear(tokenizer):
    from icecache.tasks.niah import LIST_VALUES
    from icecache.tasks.scoring import match_fraction

    for sample in generate_task("niah_list", n=3, context=CONTEXT, tokenizer=tokenizer, seed=2):
        asked, *others = sample.meta["keys"]
        values = list(sample.answers)
        assert len(values) == len(set(values)) == LIST_VALUES
        positions = [sample.context.find(f"for {asked} is: {v}.") for v in values]
        assert all(p >= 0 for p in positions) and positions == sorted(positions)
        distractors = re.findall(rf"for (?:{'|'.join(map(re.escape, others))}) is: (\d+)\.", sample.context)
        assert distractors and not set(distractors) & set(values)
        assert sample.max_new_tokens >= 10 * LIST_VALUES  # room for every value, numbered
        # partial credit: the fraction listed
        assert match_fraction(" ".join(values[:5]), values) == 5 / LIST_VALUES
