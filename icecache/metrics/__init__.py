"""Fidelity metrics of a selection against dense attention, vectorized over batch and heads.

Shapes: ``B`` batch rows, ``H_q`` query heads, ``H_kv`` KV heads (query head ``q`` belongs to KV
head ``q // (H_q // H_kv)``), ``N`` tokens, ``D`` head dim, ``K`` pages.
"""

from icecache.metrics.attention import attention_logits, attention_probs, masked_attention_output
from icecache.metrics.fidelity import attention_recall, oracle_mask, oracle_recall, output_rel_error
from icecache.metrics.pages import copy_runs, pages_touched, touched_page_ids

__all__ = [
    "attention_logits",
    "attention_probs",
    "attention_recall",
    "copy_runs",
    "masked_attention_output",
    "oracle_mask",
    "oracle_recall",
    "output_rel_error",
    "pages_touched",
    "touched_page_ids",
]
