"""The inline runner's Arq semantics, against the real model server with injected faults."""

from __future__ import annotations

import asyncio

import pytest

from harness.config import load_settings
from harness.events import Event
from harness.inline import run_inline, run_inline_sync
from harness.schema import Item, bundled_prompt

ITEMS = [Item(f"i{n}", text) for n, text in enumerate([
    "Have a lovely day, everyone!",
    "I am going to hurt you and your family.",
    "How do I kill a Python process that hangs?",
    "Thinking about ending my life tonight.",
    "The recipe needs two eggs and some flour.",
])]


def settings(url=None, **kw):
    base = dict(base_url=url, cache_mode="off", retry_base_s=0.05, retry_cap_s=0.5, max_tries=4,
                llm_timeout_s=5.0)
    base.update(kw)
    return load_settings(**base)


async def run(url, events=None, **kw):
    collected: list[Event] = events if events is not None else []
    job_timeout = kw.pop("job_timeout", 300)
    return await run_inline(ITEMS, bundled_prompt(), settings=settings(url, **kw), progress=False,
                            on_event=collected.append, job_timeout=job_timeout)


def assert_complete(result):
    assert set(result.verdicts) == {i.content_id for i in ITEMS}


async def test_offline_run_gives_every_item_an_ok_verdict():
    result = await run(None)
    assert_complete(result)
    assert all(v.outcome == "ok" and v.tries == 1 for v in result.verdicts.values())
    assert result.verdicts["i1"].flagged is True and result.verdicts["i0"].flagged is False


@pytest.mark.parametrize("kind", ["429", "500", "cut", "timeout"])
async def test_transient_faults_retry_then_succeed(llm_server, kind):
    url = llm_server("--fail-first", "2", "--fail-kind", kind, "--retry-after", "0.2", "--hang-s", "3")
    events: list[Event] = []
    result = await run(url, events, llm_timeout_s=1.0)
    assert_complete(result)
    for v in result.verdicts.values():
        assert v.outcome == "ok", v.error
        assert v.tries == 3
    retries = [e for e in events if e.type == "status" and e.data.get("state") == "retrying"]
    assert len(retries) == 2 * len(ITEMS)
    if kind == "429":  # Retry-After is a floor under the jittered backoff
        assert min(e.data["defer_s"] for e in retries) >= 0.2


async def test_fatal_error_is_not_retried(llm_server):
    url = llm_server("--api-key", "right-key")
    events: list[Event] = []
    result = await run(url, events, api_key="wrong-key")
    assert_complete(result)
    for v in result.verdicts.values():
        assert v.outcome == "error" and v.tries == 1
        assert "not retried" in v.error and "401" in v.error
        assert "wrong-key" not in v.error and "***" in v.error  # the server echoed it; we masked it
    assert not [e for e in events if e.data.get("state") == "retrying"]
    assert not [e for e in events if "wrong-key" in str(e.to_dict())]
    assert len([e for e in events if e.type == "error"]) == len(ITEMS)


async def test_last_try_stores_an_error_verdict(llm_server):
    url = llm_server("--fail-first", "10", "--fail-kind", "500")
    result = await run(url, max_tries=3)
    assert_complete(result)
    for v in result.verdicts.values():
        assert v.outcome == "error" and v.tries == 3
        assert v.error.startswith("gave up after 3 tries") and "500" in v.error


async def test_job_timeout_is_not_retried(llm_server):
    url = llm_server("--latency-ms", "2000")
    result = await run(url, job_timeout=0.3)
    assert_complete(result)
    for v in result.verdicts.values():
        assert v.outcome == "error" and v.tries == 1 and "timed out" in v.error


async def test_malformed_output_is_unparsable_with_raw_text_kept(llm_server):
    url = llm_server("--rate-malformed", "1")
    result = await run(url)
    assert_complete(result)
    for v in result.verdicts.values():
        assert v.outcome == "unparsable" and v.raw and v.error


async def test_commentary_streams_as_several_events_before_the_result():
    events: list[Event] = []
    await run(None, events)
    for item in ITEMS:
        mine = [e for e in events if e.content_id == item.content_id]
        kinds = [e.type for e in mine]
        assert kinds[0] == "status" and kinds[-1] == "result"
        assert kinds.count("commentary") >= 3
        text = "".join(e.data["text"] for e in mine if e.type == "commentary")
        assert text == mine[-1].data["verdict"]["raw"]


async def test_empty_text_gets_an_explicit_error_outcome():
    result = await run_inline([Item("blank", "   "), Item("ok", "hello")], settings=settings(), progress=False)
    assert result.verdicts["blank"].outcome == "error"
    assert "empty text" in result.verdicts["blank"].error
    assert result.verdicts["ok"].outcome == "ok"


def test_blocking_api_works_in_a_plain_script():
    result = run_inline_sync(ITEMS, settings=settings(), progress=False)
    assert_complete(result)


async def test_blocking_api_works_inside_a_running_loop():
    """As in a Jupyter cell: the loop is running and the call still returns."""
    assert asyncio.get_running_loop() is not None
    result = run_inline_sync(ITEMS, settings=settings(), progress=False)
    assert_complete(result)


async def test_concurrency_is_bounded(llm_server):
    url = llm_server("--latency-ms", "100")
    many = [Item(f"c{n}", f"text number {n}") for n in range(12)]
    active = 0
    peak = 0

    def track(e: Event) -> None:
        nonlocal active, peak
        if e.type == "status" and e.data.get("state") == "started":
            active += 1
            peak = max(peak, active)
        elif e.type in ("result", "error"):
            active -= 1

    result = await run_inline(many, settings=settings(url), concurrency=3, on_event=track, progress=False)
    assert len(result.verdicts) == 12
    assert peak == 3


async def test_an_unparsable_answer_is_not_replayed_from_the_cache(llm_server, tmp_path):
    url = llm_server("--fail-first", "1", "--fail-kind", "malformed")  # garbage once per request, then sense
    first = await run(url, cache_mode="use", cache_dir=tmp_path / "c")
    assert {v.outcome for v in first.verdicts.values()} == {"unparsable"}
    second = await run(url, cache_mode="use", cache_dir=tmp_path / "c")
    assert {v.outcome for v in second.verdicts.values()} == {"ok"}
    assert second.cache_hits == 0
    third = await run(url, cache_mode="use", cache_dir=tmp_path / "c")
    assert third.cache_hits == len(ITEMS)  # good answers are cached as usual


async def test_an_unusable_cache_folder_stops_the_run_before_any_item(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="HARNESS_CACHE_DIR .*a-file"):
        await run_inline(ITEMS, settings=settings(cache_mode="use", cache_dir=blocker), progress=False)


def test_a_run_id_with_a_colon_is_refused():
    with pytest.raises(ValueError, match="run id 'a:b'"):
        run_inline_sync(ITEMS, settings=settings(), run_id="a:b", progress=False)
