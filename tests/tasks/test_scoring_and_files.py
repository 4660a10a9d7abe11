import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icecache.core.errors import ConfigError
from icecache.tasks import TaskSample, is_correct, load_tasks_file, match_fraction

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=3, max_size=8)


@given(st.lists(words, min_size=1, max_size=5, unique=True), st.text(max_size=30))
def test_all_answers_present_is_correct(answers, noise):
    output = noise + " " + " and ".join(a.upper() for a in answers)
    assert is_correct(output, answers)
    assert match_fraction(output, answers) == 1.0


@given(st.lists(words, min_size=2, max_size=5, unique=True))
def test_a_missing_answer_is_wrong(answers):
    missing = answers[0]
    output = " ".join(a for a in answers[1:] if missing not in a)
    if missing in output:
        return
    assert not is_correct(output, answers)
    assert match_fraction(output, answers) < 1.0


def _write(tmp_path, lines):
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(**kw):
    row = {"id": "a", "context": "The code is 1234.", "question": "What is the code?", "answers": ["1234"]}
    row.update(kw)
    return json.dumps(row)


def test_tasks_file_round_trip(tmp_path):
    path = _write(tmp_path, [_row(), "", _row(id="b", answer_prefix="The code is", max_new_tokens=5,
                                              task="codes")])
    samples = load_tasks_file(path)
    assert [s.id for s in samples] == ["a", "b"]
    assert samples[0].task == "file" and samples[0].max_new_tokens == 32
    assert samples[1] == TaskSample(id="b", task="codes", context="The code is 1234.",
                                    question="What is the code?", answers=["1234"],
                                    answer_prefix="The code is",
                                    max_new_tokens=5)


@pytest.mark.parametrize(("lines", "message"), [
    ([_row(), "{not json"], r"tasks.jsonl:2: not valid JSON"),
    ([_row(), _row(id="b"), "[1, 2]"], r"tasks.jsonl:3: expected a JSON object"),
    ([json.dumps({"id": "a", "context": "x"})],
     r"tasks.jsonl:1: missing field\(s\) \['question', 'answers'\]"),
    ([_row(answers=[])], r"tasks.jsonl:1: field 'answers' must be a non-empty list of non-empty strings"),
    ([_row(answers="1234")], r"tasks.jsonl:1: field 'answers' must be a non-empty list .*got '1234'"),
    ([_row(context="  ")], r"tasks.jsonl:1: field 'context' is empty"),
    ([_row(), _row()], r"tasks.jsonl:2: duplicate id 'a' \(first on line 1\)"),
    ([_row(extra=1)], r"tasks.jsonl:1: unknown field\(s\) \['extra'\]"),
    ([_row(max_new_tokens=0)], r"tasks.jsonl:1: field 'max_new_tokens' must be an integer in \[1, 4096\]"),
    ([_row(question=3)], r"tasks.jsonl:1: field 'question' must be a string"),
])
def test_malformed_tasks_file_names_the_line(tmp_path, lines, message):
    with pytest.raises(ConfigError, match=message):
        load_tasks_file(_write(tmp_path, lines))


def test_empty_or_missing_tasks_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match="holds no samples"):
        load_tasks_file(empty)
    with pytest.raises(ConfigError, match="does not exist"):
        load_tasks_file(tmp_path / "nope.jsonl")
