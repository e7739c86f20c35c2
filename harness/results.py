"""A finished run as data: verdicts joined to their items, as one DataFrame row per item.

Inline runs and worker runs both end here, so their predictions have the same columns.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.schema import PromptSpec, Verdict

PRED_COLUMNS_TAIL = ("cached", "latency_s", "tries", "truncated", "prompt_tokens", "completion_tokens",
                     "error", "rationale", "prompt_version", "model", "run_id", "semantic_source",
                     "semantic_similarity")


def dataset_fingerprint(df: pd.DataFrame) -> str:
    """A short hash of ids, types and texts: same data, same fingerprint, any row order aside."""
    cols = [c for c in ("content_id", "content_type", "text") if c in df.columns]
    hashed = pd.util.hash_pandas_object(df[cols].sort_values("content_id"), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:8]


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")


def check_run_id(run_id: str) -> str:
    """Run ids become part of job ids (`moderate:<run>:<item>`), so they hold no `:` or spaces."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r}: use letters, digits, '.', '_', '@' or '-' (at most 128), "
                         "starting with a letter or digit")
    return run_id


def default_run_id(spec: PromptSpec, df: pd.DataFrame) -> str:
    name = re.sub(r"[^A-Za-z0-9._@-]+", "-", spec.name).strip("-._@") or "prompt"
    return f"{name[:64]}-{spec.version}-{dataset_fingerprint(df)}"


def predictions_frame(items: pd.DataFrame, verdicts: Mapping[str, Verdict], codes: Sequence[str]) -> pd.DataFrame:
    """One row per item of `items`, in its order. An item without a verdict gets outcome 'error'."""
    rows: list[dict[str, Any]] = []
    for cid in items["content_id"]:
        v = verdicts.get(cid) or Verdict(cid, "error", error="no verdict recorded for this item")
        row: dict[str, Any] = {"content_id": cid, "outcome": v.outcome, "flagged": v.flagged}
        for code in codes:
            row[f"pred_{code}"] = v.categories.get(code)
        for code in codes:
            row[f"score_{code}"] = v.scores.get(code)
        row.update(cached=v.cached, latency_s=v.latency_s, tries=v.tries, truncated=v.truncated,
                   prompt_tokens=v.usage.prompt_tokens, completion_tokens=v.usage.completion_tokens,
                   error=v.error, rationale=v.rationale, prompt_version=v.prompt_version, model=v.model,
                   run_id=v.run_id, semantic_source=v.semantic_source,
                   semantic_similarity=v.semantic_similarity, commentary=v.commentary, raw=v.raw)
        rows.append(row)
    columns = ["content_id", "outcome", "flagged", *(f"pred_{c}" for c in codes), *(f"score_{c}" for c in codes),
               *PRED_COLUMNS_TAIL, "commentary", "raw"]
    pred = pd.DataFrame(rows, columns=list(dict.fromkeys(columns + (list(rows[0]) if rows else []))))
    for col in ["flagged", *[f"pred_{c}" for c in codes]]:
        pred[col] = pred[col].astype("boolean")
    for code in codes:
        pred[f"score_{code}"] = pd.to_numeric(pred[f"score_{code}"], errors="coerce").astype("Float64")
    gold_cols = [c for c in items.columns if c.startswith("gold_")]
    left = items[["content_id", "content_type", "text", *gold_cols]].reset_index(drop=True)
    if left.empty:  # an empty frame's id column may be float; the merge must still line up
        left = left.astype({"content_id": object})
        pred = pred.astype({"content_id": object})
    return left.merge(pred, on="content_id", how="left", validate="one_to_one")


@dataclass
class RunResult:
    """One prompt version x one model x one dataset, with a verdict for every item."""

    run_id: str
    spec: PromptSpec
    model: str
    endpoint: str
    dataset: str
    items: pd.DataFrame
    verdicts: Mapping[str, Verdict]
    elapsed_s: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def semantic_hits(self) -> int:
        """Items whose verdict was reused from a near-duplicate (semantic cache), not asked of the model."""
        return sum(1 for v in self.verdicts.values() if v.semantic_source is not None)

    @property
    def codes(self) -> list[str]:
        return self.spec.taxonomy.codes

    def predictions(self) -> pd.DataFrame:
        return predictions_frame(self.items, self.verdicts, self.codes)

    def outcomes(self) -> dict[str, int]:
        counts = {"ok": 0, "unparsable": 0, "refused": 0, "error": 0}
        for cid in self.items["content_id"]:
            v = self.verdicts.get(cid)
            counts[v.outcome if v else "error"] += 1
        return counts

    def metrics(self, **kwargs: Any) -> dict[str, Any]:
        from harness.metrics import compute_metrics

        return compute_metrics(self.predictions(), self.codes, **kwargs)

    def __repr__(self) -> str:
        return (f"RunResult({self.run_id!r}, {len(self.items)} items, {self.outcomes()}, "
                f"{self.elapsed_s:.1f}s, cache {self.cache_hits} hits / {self.cache_misses} misses)")
