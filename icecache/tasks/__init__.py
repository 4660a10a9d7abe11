"""Offline, seeded long-context tasks (RULER-style) and user task files."""

from icecache.tasks.registry import DEFAULT_SUITE, TASKS, generate_suite, generate_task, parse_task_names
from icecache.tasks.sample import TaskSample, prompt_ids, render_prompt
from icecache.tasks.scoring import is_correct, match_fraction
from icecache.tasks.tasks_file import load_tasks_file

__all__ = ["DEFAULT_SUITE", "TASKS", "TaskSample", "generate_suite", "generate_task", "is_correct",
           "load_tasks_file", "match_fraction", "parse_task_names", "prompt_ids", "render_prompt"]
