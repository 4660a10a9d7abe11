"""Specs and task files the sweep tests share."""

import json
from pathlib import Path

#: the tiny sweep of the issue: 2 contexts x 2 policies, one sample of a task the 135M model solves
TINY = """\
models = ["embedded"]
contexts = [256, 320]
tasks = ["niah_noise"]
samples = 1
policies = ["full", "icecache"]
budgets = [128]
"""


def tasks_file(path: Path, name: str, n: int = 1) -> Path:
    """A tasks file of ``n`` short samples (~150 tokens, 4 answer tokens): cheap shards."""
    rows = []
    for i in range(n):
        needle = f"The code word is amber{name}{i}. "
        context = "The grass is green. " * 12 + needle + "The sky is blue. " * 12
        rows.append(json.dumps({"id": f"{name}-{i}", "context": context, "question": "What is the code word?",
                                "answers": [f"amber{name}{i}"], "answer_prefix": "The code word is",
                                "max_new_tokens": 4, "task": "code_word"}))
    path.write_text("\n".join(rows) + "\n")
    return path
