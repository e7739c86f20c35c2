"""The main job: run one or more prompts over a labelled dataset and write a scorecard.

A report folder holds `metrics.json` (for scripts), `predictions.csv` (one row per item),
`verdicts.jsonl` (everything the model said) and `report.html`. With several prompts each gets
a sub-folder named after its label, and the top folder gets the side-by-side report and flips.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import Settings, check_threshold, load_settings
from harness.datasets import load_dataset
from harness.inline import resolve_prompt, run_inline
from harness.metrics import compare_runs, comparison_summary, compute_metrics
from harness.report import format_table, write_report
from harness.results import RunResult
from harness.schema import PromptSpec

CSV_DROP = ("text", "commentary", "raw")


def run_metrics(result: RunResult, predictions: pd.DataFrame) -> dict[str, Any]:
    """metrics.json for one run: identity, outcomes, per-category scores and cache figures."""
    scores = compute_metrics(predictions, result.codes)
    n = len(result.items)
    return {
        "run_id": result.run_id,
        "prompt_name": result.spec.name,
        "prompt_version": result.spec.version,
        "model": result.model,
        "endpoint": result.endpoint,
        "dataset": result.dataset,
        "n_items": n,
        "elapsed_s": round(result.elapsed_s, 3),
        "items_per_s": round(n / result.elapsed_s, 2) if result.elapsed_s > 0 else None,
        "outcomes": scores["outcomes"],
        "categories": scores["categories"],
        "any": scores["any"],
        "macro": scores["macro"],
        "micro": scores["micro"],
        "cache": {"hits": result.cache_hits, "misses": result.cache_misses},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


async def semantic_agreement(result: RunResult, spec: PromptSpec, settings: Settings, *,
                             threshold: float | None = None, concurrency: int | None = None,
                             cache: str | None = None) -> dict[str, Any]:
    """How often a semantic hit's verdict is what the model says for that item itself.

    The hit items are judged again without the semantic cache. Their model answers go to a side
    cache (`<cache dir>/semantic-agreement`), so measuring is cheap from the second eval on and
    never puts the near copies in the main exact cache, which would turn later semantic hits
    into exact ones. `semantic_agreement` is the fraction of hits whose `flagged` and
    `categories` equal the model's own (None without hits).
    """
    hits = [cid for cid in result.items["content_id"]
            if (v := result.verdicts.get(cid)) is not None and v.semantic_source is not None]
    n = len(result.items)
    out: dict[str, Any] = {
        "semantic_hits": len(hits),
        "semantic_hit_rate": round(len(hits) / n, 4) if n else None,
        "semantic_threshold": threshold if threshold is not None else settings.semantic_threshold,
        "semantic_agreement": None,
        "semantic_compared": 0,
        "semantic_disagreements": [],
    }
    if not hits:
        return out
    from dataclasses import replace

    side = replace(settings, cache_dir=Path(settings.cache_dir) / "semantic-agreement")
    subset = result.items[result.items["content_id"].isin(hits)]
    own = await run_inline(subset, spec, settings=side, cache=cache, concurrency=concurrency, progress=False)
    disagree = []
    for cid in hits:
        v, m = result.verdicts[cid], own.verdicts.get(cid)
        if m is None or m.outcome != "ok" or m.flagged != v.flagged or m.categories != v.categories:
            disagree.append(cid)
    out.update(semantic_agreement=round(1 - len(disagree) / len(hits), 4), semantic_compared=len(hits),
               semantic_disagreements=disagree)
    return out


def semantic_line(label: str, m: dict[str, Any]) -> str:
    c = m["cache"]
    line = (f"{label}: semantic cache (threshold {c['semantic_threshold']}): {c['semantic_hits']} hits of "
            f"{m['n_items']} items ({(c['semantic_hit_rate'] or 0):.1%})")
    if c["semantic_agreement"] is not None:
        agree = c["semantic_compared"] - len(c["semantic_disagreements"])
        line += (f"; agreement with the model's own verdict {agree}/{c['semantic_compared']} "
                 f"({c['semantic_agreement']:.3f})")
        if c["semantic_disagreements"]:
            line += f"; differs for {', '.join(c['semantic_disagreements'][:10])}"
    return line


def write_run(out_dir: Path, result: RunResult, predictions: pd.DataFrame, metrics: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    predictions.drop(columns=[c for c in CSV_DROP if c in predictions.columns]).to_csv(
        out_dir / "predictions.csv", index=False)
    with (out_dir / "verdicts.jsonl").open("w", encoding="utf-8") as fh:
        for cid in result.items["content_id"]:
            if cid in result.verdicts:
                fh.write(result.verdicts[cid].to_json() + "\n")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "-", text).strip("-") or "run"


async def evaluate(
    prompts: Sequence[PromptSpec | str | Path] | None = None,
    dataset: pd.DataFrame | str | Path | None = None,
    *,
    out_dir: str | Path | None = None,
    model: str | None = None,
    concurrency: int | None = None,
    cache: str | None = None,
    limit: int | None = None,
    settings: Settings | None = None,
    progress: bool = True,
    echo: bool = True,
    semantic_cache: bool = False,
    semantic_threshold: float | None = None,
) -> list[tuple[RunResult, dict[str, Any]]]:
    """Run every prompt over the dataset, write the report folder, print the table.

    With `semantic_cache`, near-duplicates reuse verdicts (harness/semantic.py) and metrics.json's
    `cache` gains `semantic_hits` and `semantic_agreement` (see `semantic_agreement`)."""
    settings = settings or load_settings()
    if semantic_threshold is not None:
        check_threshold(semantic_threshold, "--semantic-threshold")
    specs = [resolve_prompt(p, model, settings) for p in (prompts or [None])]  # type: ignore[list-item]
    if len({s.label for s in specs}) != len(specs):
        raise ValueError("the same prompt version was given twice: " + ", ".join(s.label for s in specs))
    codes = specs[0].taxonomy.codes
    if any(s.taxonomy.codes != codes for s in specs):
        raise ValueError("prompts to compare must judge the same taxonomy codes")
    from harness.config import DEFAULT_DATASET

    items = load_dataset(dataset if dataset is not None else DEFAULT_DATASET, codes=codes, limit=limit)
    if items.empty:
        raise ValueError("nothing to evaluate: the dataset has no rows" + (" (--limit 0)" if limit == 0 else ""))
    out = Path(out_dir) if out_dir else Path("reports") / time.strftime("%Y%m%d-%H%M%S")
    if echo:
        print(f"dataset: {items.attrs.get('source')} ({len(items)} items); endpoint: {settings.endpoint}; "
              f"cache: {cache or settings.cache_mode}", flush=True)

    runs: list[tuple[RunResult, dict[str, Any], pd.DataFrame]] = []
    for spec in specs:
        result = await run_inline(items, spec, concurrency=concurrency, cache=cache, settings=settings,
                                  progress=progress, semantic_cache=semantic_cache,
                                  semantic_threshold=semantic_threshold)
        predictions = result.predictions()
        metrics = run_metrics(result, predictions)
        if semantic_cache:
            metrics["cache"].update(await semantic_agreement(
                result, spec, settings, threshold=semantic_threshold, concurrency=concurrency, cache=cache))
        run_dir = out if len(specs) == 1 else out / _slug(spec.label)
        write_run(run_dir, result, predictions, metrics)
        runs.append((result, metrics, predictions))

    comparison = None
    if len(runs) >= 2:
        comparison = compare_runs(runs[0][2], runs[-1][2], codes)
        comparison.to_csv(out / "flips.csv", index=False)
        (out / "comparison.json").write_text(json.dumps({
            "a": runs[0][0].spec.label, "b": runs[-1][0].spec.label,
            "summary": comparison_summary(comparison),
            "runs": {r.spec.label: m["run_id"] for r, m, _ in runs},
        }, indent=2) + "\n", encoding="utf-8")
    meta = {
        "dataset": str(items.attrs.get("source")), "n_items": len(items), "endpoint": settings.endpoint,
        **{f"run {r.spec.label}": f"{m['run_id']} · {m['model']} · {m['elapsed_s']} s · cache "
           f"{m['cache']['hits']} hits / {m['cache']['misses']} misses" for r, m, _ in runs},
    }
    report = write_report(out, [(r.spec.label, m, p) for r, m, p in runs], codes,
                          title="Moderation prompt scorecard", comparison=comparison, meta=meta)
    if echo:
        print(format_table([(r.spec.label, m) for r, m, _ in runs], codes))
        for r, m, _ in runs:
            print(f"{r.spec.label}: {m['n_items']} items in {m['elapsed_s']:.2f}s "
                  f"({m['items_per_s']} items/s), cache {m['cache']['hits']} hits / "
                  f"{m['cache']['misses']} misses")
            if "semantic_hits" in m["cache"]:
                print(semantic_line(r.spec.label, m))
        if comparison is not None:
            print(f"flips between {runs[0][0].spec.label} and {runs[-1][0].spec.label}: {len(comparison)} "
                  f"(see {out / 'flips.csv'})")
        print(f"report: {report}")
    return [(r, m) for r, m, _ in runs]
