"""A research harness for LLM moderation prompts: one Arq task, run inline or on workers."""

from harness.batch import RunHandle, enqueue_dataframe, enqueue_dataframe_async, open_run
from harness.datasets import DatasetError, load_dataset
from harness.evaluate import evaluate
from harness.inline import run_inline, run_inline_sync
from harness.results import RunResult
from harness.schema import (
    DEFAULT_TAXONOMY,
    Category,
    Item,
    PromptSpec,
    SpecError,
    Taxonomy,
    Verdict,
    bundled_prompt,
)

__all__ = [
    "DEFAULT_TAXONOMY", "Category", "DatasetError", "Item", "PromptSpec", "RunHandle", "RunResult", "SpecError",
    "Taxonomy", "Verdict", "bundled_prompt", "enqueue_dataframe", "enqueue_dataframe_async", "evaluate",
    "load_dataset", "open_run", "run_inline", "run_inline_sync",
]
