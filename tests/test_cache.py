"""Cache key rules, through the real client against the real local model server."""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.config import load_settings
from harness.llm.cache import cache_key, cache_key_fields
from harness.llm.errors import TransientLLMError
from harness.llm.service import LLMService
from harness.schema import Item, bundled_prompt

SPEC = bundled_prompt().with_model("test-model")
ITEM = Item("a1", "I will hurt you tomorrow, watch your back.")


def service(cache_dir, base_url=None, api_key=None, mode="use") -> LLMService:
    return LLMService(load_settings(base_url=base_url, api_key=api_key, cache_dir=cache_dir, cache_mode=mode))


async def complete(svc: LLMService, spec=SPEC, item=ITEM, **kw):
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    messages, _ = spec.render_messages(item)
    completion = await svc.complete(spec, messages, on_delta=on_delta, **kw)
    return completion, deltas


async def test_hit_replays_the_same_stream(cache_dir):
    svc = service(cache_dir)
    first, first_deltas = await complete(svc)
    second, second_deltas = await complete(svc)
    await svc.aclose()
    assert not first.cached and second.cached
    assert len(first_deltas) > 2 and first_deltas == second_deltas
    assert second.text == first.text and second.usage == first.usage
    assert (svc.hits, svc.misses) == (1, 1)


async def test_one_word_edit_misses(cache_dir):
    svc = service(cache_dir)
    await complete(svc)
    edited = replace(SPEC, system=SPEC.system.replace("careful", "strict"))
    c, _ = await complete(svc, spec=edited)
    await svc.aclose()
    assert not c.cached and svc.misses == 2


@pytest.mark.parametrize("change", [{"temperature": 0.5}, {"max_tokens": 123}, {"model": "other"},
                                    {"response_format": "json_object"}, {"seed": 3}])
def test_key_covers_every_answer_changing_part(change):
    messages, _ = SPEC.render_messages(ITEM)
    base = cache_key(cache_key_fields(endpoint="e", model=SPEC.model, messages=messages, params=SPEC.sampling()))
    spec = replace(SPEC, **change)
    other = cache_key(cache_key_fields(endpoint="e", model=spec.model, messages=messages, params=spec.sampling()))
    assert base != other


def test_key_covers_endpoint_and_sample_index():
    messages, _ = SPEC.render_messages(ITEM)
    kw = dict(model="m", messages=messages, params=SPEC.sampling())
    keys = {cache_key(cache_key_fields(endpoint="a", **kw)), cache_key(cache_key_fields(endpoint="b", **kw)),
            cache_key(cache_key_fields(endpoint="a", sample_index=1, **kw))}
    assert len(keys) == 3


async def test_changed_api_key_hits_and_key_never_stored(llm_server, cache_dir):
    url = llm_server()
    secret_a, secret_b = "sk-test-SECRET-aaaa1111", "sk-test-SECRET-bbbb2222"
    first = service(cache_dir, url, secret_a)
    c1, _ = await complete(first)
    await first.aclose()
    second = service(cache_dir, url, secret_b)
    c2, _ = await complete(second)
    await second.aclose()
    assert not c1.cached and c2.cached
    for path in cache_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"SECRET" not in data, path


async def test_errors_are_not_cached(llm_server, cache_dir):
    url = llm_server("--fail-first", "1", "--fail-kind", "500")
    svc = service(cache_dir, url)
    with pytest.raises(TransientLLMError):
        await complete(svc)
    c2, _ = await complete(svc)  # the server now answers: a miss, not a cached error
    c3, _ = await complete(svc)
    await svc.aclose()
    assert not c2.cached and c3.cached
    assert (svc.hits, svc.misses) == (1, 2)


async def test_refresh_and_off_modes(cache_dir):
    svc = service(cache_dir)
    await complete(svc)
    refreshed, _ = await complete(svc, cache_mode="refresh")
    again, _ = await complete(svc)
    await svc.aclose()
    assert not refreshed.cached and again.cached
    off = service(cache_dir / "off", mode="off")
    a, _ = await complete(off)
    b, _ = await complete(off)
    await off.aclose()
    assert not a.cached and not b.cached
    assert not (cache_dir / "off").exists()


async def test_sample_index_separates_repeats(cache_dir):
    svc = service(cache_dir)
    await complete(svc, sample_index=0)
    c, _ = await complete(svc, sample_index=1)
    await svc.aclose()
    assert not c.cached
