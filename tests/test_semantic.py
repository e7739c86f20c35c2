"""The semantic cache: near copies reuse a verdict, inline and across real Arq workers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import replace

import numpy as np
import pandas as pd
import redis as redis_sync
from conftest import ROOT

from harness.batch import enqueue_dataframe_async
from harness.config import load_settings
from harness.datasets import load_dataset
from harness.embeddings import Embedder
from harness.inline import resolve_prompt, run_inline
from harness.schema import Verdict, bundled_prompt
from harness.semantic import MemorySemanticIndex, decode_vector, encode_vector

DATASET = ROOT / "datasets" / "near_duplicates.jsonl"
# near copies, first member the original: a changed word, extra punctuation, spam variants
GROUPS = [["nd001", "nd002", "nd003"], ["nd005", "nd006"], ["nd007", "nd008", "nd009"], ["nd012", "nd013"],
          ["nd014", "nd015"], ["nd017", "nd018"], ["nd019", "nd020"], ["nd023", "nd024", "nd025"],
          ["nd027", "nd028"], ["nd031", "nd032"], ["nd035", "nd036"]]
GROUP_OF = {cid: i for i, g in enumerate(GROUPS) for cid in g}
ORIGINALS = [g[0] for g in GROUPS]
VARIANTS = [cid for g in GROUPS for cid in g[1:]]


def near_duplicates() -> pd.DataFrame:
    return load_dataset(DATASET)


def hits(verdicts: dict[str, Verdict]) -> dict[str, tuple[str, float]]:
    return {cid: (v.semantic_source, v.semantic_similarity) for cid, v in verdicts.items()
            if v.semantic_source is not None}


def test_the_dataset_is_canonical_and_has_groups_and_unrelated_items():
    df = near_duplicates()
    assert 35 <= len(df) <= 45 and df["content_id"].is_unique
    unrelated = set(df["content_id"]) - set(GROUP_OF)
    assert len(unrelated) >= 10 and len(GROUPS) >= 8


async def test_near_copies_hit_and_unrelated_items_do_not():
    df = near_duplicates()
    result = await run_inline(df, bundled_prompt(), settings=load_settings(cache_mode="off"), progress=False,
                              semantic_cache=True)
    got = hits(result.verdicts)
    assert set(got) == set(VARIANTS)
    for cid, (source, similarity) in got.items():
        assert GROUP_OF[source] == GROUP_OF[cid] and source != cid
        assert similarity >= 0.9
        v, s = result.verdicts[cid], result.verdicts[source]
        assert (v.outcome, v.flagged, v.categories) == ("ok", s.flagged, s.categories)
        assert s.semantic_source is None
    sources = {s for s, _ in got.values()}
    assert sources <= set(GROUP_OF)  # an unrelated item is neither a hit nor a source
    assert result.cache_misses == len(df) - len(VARIANTS)  # every hit saved a model call
    assert result.semantic_hits == len(VARIANTS)
    pred = result.predictions().set_index("content_id")
    assert pred.loc["nd002", "semantic_source"] == "nd001" and pd.isna(pred.loc["nd004", "semantic_source"])


async def test_semantic_cache_is_off_unless_the_run_opts_in():
    result = await run_inline(near_duplicates(), bundled_prompt(), settings=load_settings(cache_mode="off"),
                              progress=False)
    assert not hits(result.verdicts) and result.cache_misses == len(near_duplicates())


async def test_the_exact_cache_stays_first():
    df = near_duplicates()
    settings = load_settings(cache_mode="use")
    first = await run_inline(df, bundled_prompt(), settings=settings, progress=False, semantic_cache=True)
    again = await run_inline(df, bundled_prompt(), settings=settings, progress=False, semantic_cache=True)
    assert hits(again.verdicts) == hits(first.verdicts)  # the hits never entered the exact cache
    assert (again.cache_hits, again.cache_misses) == (len(df) - len(VARIANTS), 0)
    await run_inline(df, bundled_prompt(), settings=settings, progress=False)  # now every text is cached
    exact = await run_inline(df, bundled_prompt(), settings=settings, progress=False, semantic_cache=True)
    assert not hits(exact.verdicts) and exact.cache_hits == len(df)


async def test_a_different_prompt_version_never_reuses_a_verdict_inline():
    df = near_duplicates()
    index = MemorySemanticIndex()
    settings = load_settings(cache_mode="off")
    spec = bundled_prompt()
    other = replace(spec, system=spec.system.replace("careful", "strict"))
    assert other.version != spec.version
    await run_inline(df[df["content_id"].isin(ORIGINALS)], spec, settings=settings, progress=False,
                     semantic_cache=True, semantic_index=index)
    assert index.count(index.namespaces()[0]) == len(ORIGINALS)
    elsewhere = await run_inline(df[df["content_id"].isin(VARIANTS)], other, settings=settings, progress=False,
                                 semantic_cache=True, semantic_index=index)
    # copies of one original may reuse each other under the new prompt, never the old prompt's originals
    assert not {s for s, _ in hits(elsewhere.verdicts).values()} & set(ORIGINALS)
    assert len(hits(elsewhere.verdicts)) < len(VARIANTS)
    same = await run_inline(df[df["content_id"].isin(VARIANTS)], spec, settings=settings, progress=False,
                            semantic_cache=True, semantic_index=index)
    assert set(hits(same.verdicts)) == set(VARIANTS)
    assert all(GROUP_OF[s] == GROUP_OF[c] for c, (s, _) in hits(same.verdicts).items())


async def test_the_threshold_changes_what_hits():
    df = near_duplicates()
    settings = load_settings(cache_mode="off")
    by_threshold = {}
    for threshold in (0.9, 0.95, 0.99):
        result = await run_inline(df, bundled_prompt(), settings=settings, progress=False, semantic_cache=True,
                                  semantic_threshold=threshold)
        by_threshold[threshold] = hits(result.verdicts)
        assert all(sim >= threshold for _, sim in by_threshold[threshold].values())
    assert set(by_threshold[0.99]) < set(by_threshold[0.95]) < set(by_threshold[0.9])
    assert not by_threshold[0.99]
    env = load_settings(semantic_threshold=0.95)  # HARNESS_SEMANTIC_THRESHOLD
    result = await run_inline(df, bundled_prompt(), settings=replace(env, cache_mode="off"), progress=False,
                              semantic_cache=True)
    assert set(hits(result.verdicts)) == set(by_threshold[0.95])


async def test_only_fresh_ok_verdicts_enter_the_index():
    index = MemorySemanticIndex()
    rows = pd.DataFrame({"content_id": ["a", "b", "c"],
                         "text": ["Win a free cruise, reply YES now to claim your prize!",
                                  "Win a free cruise, reply YES now to claim your prize!!", "   "]})
    result = await run_inline(rows, bundled_prompt(), settings=load_settings(cache_mode="off"), progress=False,
                              semantic_cache=True, semantic_index=index)
    assert result.verdicts["c"].outcome == "error"
    assert hits(result.verdicts) == {"b": ("a", result.verdicts["b"].semantic_similarity)}
    assert index.count(index.namespaces()[0]) == 1  # not the empty item, not the hit


async def test_offline_embeddings_go_through_the_openai_client_and_are_deterministic():
    settings = load_settings()
    embedder = Embedder(settings)
    try:
        a, b = await embedder.embed(["same words here", "same words here!"]), await embedder.embed(["same words here"])
    finally:
        await embedder.aclose()
    assert a.dtype == np.float32 and a.shape == (2, 256)
    assert np.allclose(a[0], b[0]) and abs(float(np.linalg.norm(a[0])) - 1) < 1e-5
    assert float(a[0] @ a[1]) > 0.8
    assert np.array_equal(decode_vector(encode_vector(a[0])), a[0])


def _stats(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as r:  # noqa: S310 - local
        return json.loads(r.read())


async def test_hits_across_two_workers_through_redis_per_prompt_version(redis_proc, worker_procs, llm_server):
    """Worker A judges the originals; worker B, started after A exits, reuses them for the copies."""
    url = llm_server()
    env = {"OPENAI_BASE_URL": url, "HARNESS_EMBEDDING_MODEL": "test-embedding"}  # the endpoint's embeddings
    df = near_duplicates()
    originals = df[~df["content_id"].isin(VARIANTS)]
    variants = df[df["content_id"].isin(VARIANTS)]
    spec = bundled_prompt()
    other = replace(spec, system=spec.system.replace("careful", "strict"))

    async def run(frame, prompt, run_id, **kw):
        handle = await enqueue_dataframe_async(frame, prompt, redis_url=redis_proc.url, run_id=run_id,
                                               cache="off", progress=False, semantic_cache=True, **kw)
        worker = worker_procs(redis_proc.url, "--burst", env=env)
        assert worker.wait(60) == 0  # burst: also ran the update_semantic_cache jobs it enqueued
        assert await handle.wait(10)
        verdicts = await handle.store.verdicts(run_id)
        await handle.close()
        assert len(verdicts) == len(frame) and all(v.outcome == "ok" for v in verdicts.values())
        return verdicts

    first = await run(originals, spec, "originals")
    assert not hits(first)
    r = redis_sync.Redis(port=redis_proc.port)
    namespaces = sorted(n.decode() for n in r.smembers("harness:semantic:namespaces"))
    version = resolve_prompt(spec, None, load_settings()).version  # the version covers the model too
    assert len(namespaces) == 1 and namespaces[0].startswith(f"{version}:") and "test-embedding@" in namespaces[0]
    assert r.hlen(f"harness:semantic:{namespaces[0]}:vectors") == len(originals)
    chat_before = _stats(url)["chat_completions"]

    elsewhere = await run(variants, other, "variants-other-prompt")
    # another prompt version has its own namespace: copies may meet each other there, never the originals
    assert not {s for s, _ in hits(elsewhere).values()} & set(ORIGINALS)

    chat_mid = _stats(url)["chat_completions"]
    assert chat_mid - chat_before == len(variants) - len(hits(elsewhere))
    copies = await run(variants, spec, "variants")
    got = hits(copies)
    assert set(got) == set(VARIANTS)
    assert all(s in ORIGINALS and GROUP_OF[s] == GROUP_OF[c] for c, (s, _) in got.items())
    for cid, (source, _) in got.items():
        assert (copies[cid].flagged, copies[cid].categories) == (first[source].flagged, first[source].categories)
    stats = _stats(url)
    assert stats["chat_completions"] == chat_mid  # no model call for a hit
    assert stats["embeddings"] >= len(df)

    strict = await run(variants, spec, "variants-strict", semantic_threshold=0.95)
    assert 0 < len(hits(strict)) < len(VARIANTS)
    assert all(sim >= 0.95 for _, sim in hits(strict).values())


def test_harness_eval_semantic_cache_reports_hits_and_agreement(tmp_path):
    env = {**os.environ}

    def harness_eval(out, *extra):
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "eval", "--semantic-cache", "--dataset",
                               str(DATASET), "--out", str(out), "--no-progress", *extra], capture_output=True,
                              text=True, cwd=ROOT, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, json.loads((out / "metrics.json").read_text())

    stdout, metrics = harness_eval(tmp_path / "a")
    cache = metrics["cache"]
    assert cache["semantic_hits"] == len(VARIANTS) and cache["semantic_threshold"] == 0.9
    assert cache["semantic_compared"] == len(VARIANTS)
    assert cache["semantic_disagreements"] == ["nd036"]  # "hurt" -> "hug": a changed word flips the verdict
    assert cache["semantic_agreement"] == round(1 - 1 / len(VARIANTS), 4)
    assert f"semantic cache (threshold 0.9): {len(VARIANTS)} hits of 40 items" in stdout
    pred = pd.read_csv(tmp_path / "a" / "predictions.csv")
    assert set(pred.loc[pred["semantic_source"].notna(), "content_id"]) == set(VARIANTS)
    stdout, again = harness_eval(tmp_path / "b", "--semantic-threshold", "0.95")
    assert 0 < again["cache"]["semantic_hits"] < len(VARIANTS) and again["cache"]["semantic_threshold"] == 0.95


async def test_near_copies_hit_within_one_worker_run(redis_proc, worker_procs):
    """The index is updated as each verdict is stored, not by a job queued behind the run."""
    handle = await enqueue_dataframe_async(near_duplicates(), redis_url=redis_proc.url, run_id="one-run",
                                           cache="off", semantic_cache=True, progress=False)
    worker = worker_procs(redis_proc.url, "--burst", "--max-jobs", "1")
    assert worker.wait(120) == 0
    verdicts = await handle.store.verdicts("one-run")
    await handle.close()
    assert len(verdicts) == len(near_duplicates())
    assert len(hits(verdicts)) >= 10


def test_thresholds_outside_zero_to_one_are_refused_before_any_work():
    import pytest

    for bad in (0, -1, 1.5, float("nan"), float("inf"), "0.9", True):
        with pytest.raises(ValueError, match="expected a number in \\(0, 1\\]"):
            asyncio.run(run_inline(near_duplicates(), semantic_cache=True, semantic_threshold=bad,
                                   settings=load_settings(cache_mode="off"), progress=False))
