"""The PromptLab widget driven from Python, as a notebook user would through its buttons.

Real parts only: the offline model through the real openai client, a real redis-server and a
real `harness worker` process for worker mode. Tests run inside an event loop, as a kernel does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from conftest import ROOT

from harness.config import load_settings
from harness.inline import run_inline
from harness.metrics import compare_runs, compute_metrics
from harness.schema import PromptSpec
from harness.widgets import LabRun, PromptLab

DATA = ROOT / "datasets" / "mini_moderation.jsonl"


@pytest.fixture
def lab(tmp_path) -> PromptLab:
    return PromptLab(DATA, prompts_dir=tmp_path / "prompts", seed=1)


def recorder(lab: PromptLab) -> list[tuple[str, str, float]]:
    """(widget, new value, time) for every change of the commentary and verdict widgets."""
    changes: list[tuple[str, str, float]] = []
    lab.commentary.observe(lambda ch: changes.append(("commentary", ch["new"], time.monotonic())), names="value")
    lab.verdict.observe(lambda ch: changes.append(("verdict", ch["new"], time.monotonic())), names="value")
    return changes


async def test_run_button_streams_commentary_then_shows_the_verdict_of_run_inline(lab):
    lab.pick_label("V")
    changes = recorder(lab)
    lab.run_button.click()  # what the browser does: the callback only schedules a task
    task = lab._tasks["sample"]
    assert isinstance(task, asyncio.Task) and not task.done()
    verdict = await asyncio.wait_for(task, 60)

    first_verdict = next(i for i, c in enumerate(changes) if c[0] == "verdict" and c[1])
    streamed = [c for c in changes[:first_verdict] if c[0] == "commentary" and "Commentary" in c[1]]
    assert len(streamed) >= 5, f"only {len(streamed)} commentary updates before the verdict"
    lengths = [len(c[1]) for c in streamed]
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths)  # it grows, piece by piece
    assert streamed[-1][2] - streamed[0][2] > 0.1  # spread over time (30 ms between the model's chunks)
    assert lab.commentary_text == verdict.raw
    assert lab.commentary_updates >= len(streamed)

    item = lab.data.iloc[[lab.index]]
    reference = await run_inline(item, lab.current_spec(), settings=load_settings(cache_mode="off"), progress=False)
    ref = reference.verdicts[item["content_id"].iloc[0]]
    assert (verdict.outcome, verdict.flagged, verdict.categories) == (ref.outcome, ref.flagged, ref.categories)
    assert verdict.cached is False  # the sample run bypasses the cache unless asked
    html = lab.verdict.value
    assert f"outcome <b class=\"harness-outcome\" style=\"color:#17712b\">{verdict.outcome}" in html
    assert "cached: <b>no</b>" in html and "latency" in html and "tokens" in html
    assert "done" in lab.status.value


async def test_a_wrong_verdict_is_highlighted(lab):
    # m022: gold V, which the offline keyword model misses
    assert lab.search("m022") == [21]
    verdict = await lab.run_sample()
    assert verdict.categories["V"] is False
    html = lab.verdict.value
    assert 'class="mismatch"' in html and "disagrees with gold" in html
    assert html.count('class="mismatch"') == 2  # V and the overall verdict


async def test_cache_checkbox_uses_the_cache(lab):
    lab.select(3)
    lab.use_cache.value = True
    first = await lab.run_sample()
    second = await lab.run_sample()
    assert first.cached is False and second.cached is True
    assert "cached: <b>yes</b>" in lab.verdict.value
    lab.use_cache.value = False
    assert (await lab.run_sample()).cached is False


async def test_stop_cancels_the_run(tmp_path):
    lab = PromptLab(DATA, prompts_dir=tmp_path, stream_delay_ms=2000)  # ~30 s for one answer
    task = lab.run_sample()
    await asyncio.sleep(0.5)
    assert not task.done()
    started = time.monotonic()
    lab.stop_button.click()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 5
    assert task.cancelled()
    assert "stopped" in lab.status.value
    assert lab.last_verdict is None and lab.verdict.value == ""
    assert not lab.running


async def test_editing_changes_the_version_label(lab):
    v0 = lab.version
    assert v0 in lab.version_label.value
    lab.system_text.value = lab.system_text.value + "\nBe brief."
    v1 = lab.version
    assert v1 != v0 and v1 in lab.version_label.value and v0 not in lab.version_label.value
    lab.temperature.value = 0.7
    assert lab.version not in (v0, v1)
    lab.temperature.value = 0.0
    lab.system_text.value = lab.system_text.value.removesuffix("\nBe brief.")
    assert lab.version == v0


async def test_an_unknown_placeholder_shows_the_error_instead_of_raising(lab):
    good = lab.user_template.value
    lab.user_template.value = good + "\n{language}"
    assert lab.spec is None
    assert "unknown placeholder {language}" in lab.version_label.value
    assert lab.run_sample() is None and "cannot run" in lab.status.value
    assert lab.run_dataset() is None
    lab.user_template.value = good.replace("{text}", "")
    assert "must contain the {text} placeholder" in lab.version_label.value
    lab.user_template.value = good
    assert lab.spec is not None and "version" in lab.version_label.value


async def test_picking_samples_by_gold_label_search_index_and_random(lab):
    matches = lab.pick_label("V")
    assert matches and all(lab.data["gold_V"].iloc[i] == 1 for i in matches)
    assert lab.index == matches[0] and lab.index_input.value == matches[0]
    assert lab.data["content_id"].iloc[matches[0]] in lab.sample_html.value
    assert lab.next_match() == matches[1]
    lab.label_picker.value = ("SH", 1)  # the dropdown does the same
    assert lab.data["gold_SH"].iloc[lab.index] == 1
    negatives = lab.pick_label("any", 0)
    assert negatives and all(lab.data["gold_any"].iloc[i] == 0 for i in negatives)

    found = lab.search("KILL")
    assert found and all("kill" in lab.data["text"].iloc[i].lower() for i in found)
    assert lab.index == found[0]
    assert lab.search("no such words anywhere") == [] and "no item" in lab.status.value

    lab.index_input.value = 7
    assert lab.index == 7 and lab.item["content_id"] == lab.data["content_id"].iloc[7]
    assert 0 <= lab.pick_random() < len(lab.data)
    with pytest.raises(IndexError):
        lab.select(len(lab.data))


async def test_run_dataset_fills_metrics_and_wrong_items_which_open_in_the_sample_view(lab):
    seen: list[int] = []
    lab.progress.observe(lambda ch: seen.append(ch["new"]), names="value")
    run = await asyncio.wait_for(lab.run_dataset(), 120)
    n = len(lab.data)
    assert isinstance(run, LabRun) and len(run.predictions) == n
    assert lab.progress.max == n and lab.progress.value == n and lab.progress.bar_style == "success"
    assert len([v for v in seen if 0 < v < n]) > 10  # it moved with the results, not in one jump

    expected = compute_metrics(run.predictions, run.codes)
    assert run.metrics() == expected
    table = lab.metrics_html.value
    assert "harness-metrics" in table and all(f">{c}<" in table for c in [*lab.codes, "any", "macro"])
    assert f"{expected['categories']['V']['f1']:.3f}" in table

    assert len(lab.wrong_items) >= 1 and len(lab.wrong_buttons) == len(lab.wrong_items)
    assert "m022" in set(lab.wrong_items["content_id"])
    lab.select(0)
    lab.tabs.selected_index = 1
    button = lab.wrong_buttons[-1]
    cid = lab.wrong_items["content_id"].iloc[len(lab.wrong_buttons) - 1]
    assert button.description.startswith(cid)
    button.click()
    assert lab.item["content_id"] == cid and lab.tabs.selected_index == 0
    assert cid in lab.sample_html.value

    first10 = await lab.run_dataset(limit=10)
    assert len(first10.predictions) == 10 and lab.progress.max == 10 and lab.progress.value == 10
    assert len(lab.runs) == 2


async def test_compare_lists_the_flips_of_two_versions(lab, tmp_path):
    lab.limit_input.value = 30
    run_a = await lab.run_dataset(30)
    base = lab.current_spec()
    lab.set_prompt(replace(base, name="short", max_text_chars=40))
    run_b = await lab.run_dataset(30)
    flips = await lab.compare()
    expected = compare_runs(run_a.predictions, run_b.predictions, base.taxonomy.codes)
    assert len(flips) > 0 and flips.equals(expected)
    assert lab.last_comparison is flips
    html = lab.compare_html.value
    assert "harness-side-by-side" in html and f"<b>{len(flips)}</b> prediction(s) flipped" in html
    for cid in flips["content_id"].head(5):
        assert cid in html
    assert lab.flip_buttons and lab.flip_buttons[0].description.startswith(flips["content_id"].iloc[0])

    # the same through two saved files (each is run on the first 30 items)
    path_b = lab.save_version()
    assert path_b.parent == tmp_path / "prompts" and PromptSpec.load(path_b).version == lab.version
    assert "saved as" in lab.version_label.value
    lab.set_prompt(base)
    path_a = lab.save_version(tmp_path / "elsewhere" / "a.toml")
    assert PromptSpec.load(path_a).version == base.version
    options = [value for _, value in lab.compare_a.options]
    assert ("file", str(path_a)) in options and ("file", str(path_b)) in options
    flips_files = await lab.compare(("file", str(path_a)), path_b)
    assert flips_files.equals(expected)


async def test_compare_without_two_runs_says_so(lab):
    task = lab.compare()
    with pytest.raises(ValueError):
        await task
    assert "cannot compare" in lab.compare_status.value


async def test_worker_mode_runs_the_dataset_on_workers(redis_proc, worker_procs, tmp_path):
    worker_procs(redis_proc.url)  # a long-running worker, stopped by pid at teardown
    lab = PromptLab(DATA, prompts_dir=tmp_path, where="workers", redis_url=redis_proc.url)
    seen: list[int] = []
    lab.progress.observe(lambda ch: seen.append(ch["new"]), names="value")
    run = await asyncio.wait_for(lab.run_dataset(limit=40), 120)
    assert lab.progress.max == 40 and lab.progress.value == 40
    assert any(0 < v < 40 for v in seen)
    assert run.where == "workers" and run.run_id.startswith("lab-")
    assert len(run.predictions) == 40 and set(run.predictions["outcome"]) == {"ok"}
    assert "harness-metrics" in lab.metrics_html.value

    inline = await run_inline(lab.data.head(40), lab.current_spec(), settings=load_settings(cache_mode="off"),
                              progress=False)
    assert list(run.predictions["flagged"]) == list(inline.predictions()["flagged"])

    lab.search("m005")
    verdict = await asyncio.wait_for(lab.run_sample(), 60)
    assert verdict.outcome == "ok" and verdict.flagged is True
    assert lab.commentary_text.startswith("Commentary:") and "outcome" in lab.verdict.value


async def test_a_second_run_replaces_the_first(lab):
    lab.stream_delay_ms = 200
    first = lab.run_sample()
    await asyncio.sleep(0.3)
    lab.stream_delay_ms = 0
    second = lab.run_sample()
    verdict = await asyncio.wait_for(second, 30)
    assert first.cancelled() and verdict.outcome == "ok"
    assert "done" in lab.status.value and lab.last_verdict is verdict
