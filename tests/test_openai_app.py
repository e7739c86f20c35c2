"""The OpenAI-compatible app, through the real `openai` client: in-process and over a real socket."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import openai
import pytest

from harness.llm.inprocess import OFFLINE_BASE_URL, InProcessTransport, offline_client
from harness.llm.offline_model import answer_text
from harness.llm.openai_app import FaultConfig, create_app

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [
    {"role": "system", "content": "Judge:\n- V (violence): violent content.\n- HR (harassment): insults."},
    {"role": "user", "content": "<content>\nYou worthless idiot, I will stab you\n</content>"},
]


async def collect(stream) -> tuple[list[str], list]:
    pieces, usages = [], []
    async for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    return pieces, usages


# ---- in-process ------------------------------------------------------------------------------
async def test_streaming_yields_several_chunks_and_usage():
    async with offline_client() as client:
        stream = await client.chat.completions.create(
            model="any-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        pieces, usages = await collect(stream)
    assert len(pieces) >= 5
    assert "".join(pieces) == answer_text(MESSAGES)
    assert len(usages) == 1 and usages[0].completion_tokens > 0
    assert usages[0].total_tokens == usages[0].prompt_tokens + usages[0].completion_tokens


async def test_stream_is_incremental_not_buffered():
    async with offline_client(FaultConfig(token_delay_ms=40)) as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        arrivals = []
        async for _ in stream:
            arrivals.append(time.perf_counter())
    assert arrivals[-1] - arrivals[0] > 0.2  # chunks arrive spread out, as sent


async def test_non_streaming_and_model_echo():
    async with offline_client() as client:
        response = await client.chat.completions.create(model="my-model", messages=MESSAGES)
    assert response.model == "my-model"
    assert response.choices[0].message.content == answer_text(MESSAGES)
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None and response.usage.completion_tokens > 0


async def test_max_tokens_and_json_mode():
    async with offline_client() as client:
        short = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
        as_json = await client.chat.completions.create(
            model="m", messages=MESSAGES, response_format={"type": "json_object"}
        )
    assert short.choices[0].finish_reason == "length"
    assert len(short.choices[0].message.content.split()) == 3
    assert as_json.choices[0].message.content.startswith("{")


async def test_models_and_embeddings():
    async with offline_client() as client:
        models = await client.models.list()
        result = await client.embeddings.create(
            model="emb", input=["the cat sat on the mat", "the cat sat on a mat", "quarterly tax filing"]
        )
        as_float = await client.embeddings.create(model="emb", input="the cat sat on the mat",
                                                  encoding_format="float")
    assert [m.id for m in models.data]
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 256 for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    assert as_float.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])


async def test_api_key_enforced():
    faults = FaultConfig(api_key="secret")
    app = create_app(faults)
    async with offline_client(faults, app=app) as good:
        await good.chat.completions.create(model="m", messages=MESSAGES)
    bad = openai.AsyncOpenAI(base_url=OFFLINE_BASE_URL, api_key="wrong", max_retries=0,
                             http_client=httpx.AsyncClient(transport=InProcessTransport(app)))
    async with bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="m", messages=MESSAGES)
    assert app.stats["faults"]["401"] == 1 and app.stats["completed"] == 1


async def test_bad_requests_and_unknown_paths():
    app = create_app()
    async with offline_client(app=app) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="m", messages=[])
    async with httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://x") as raw:
        bad_json = await raw.post("/v1/chat/completions", content=b"{not json")
        no_messages = await raw.post("/v1/chat/completions", json={"model": "m"})
        missing = await raw.get("/v1/nope")
        stats = (await raw.get("/stats")).json()
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    assert no_messages.status_code == 400
    assert missing.status_code == 404
    assert stats["bad_requests"] == 3 and stats["not_found"] == 1 and stats["requests"] == 4


async def test_inprocess_cut_and_timeout_raise():
    async with offline_client(FaultConfig(rate_cut=1.0)) as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        seen = 0
        with pytest.raises(openai.APIConnectionError):
            async for _ in stream:
                seen += 1
        assert seen >= 1  # the break happens during iteration, after some chunks
    async with offline_client(FaultConfig(rate_timeout=1.0, hang_s=30), timeout=0.5) as client:
        with pytest.raises(openai.APITimeoutError):  # without the timeout the call would succeed after 30 s
            await client.chat.completions.create(model="m", messages=MESSAGES)


# ---- a real server in a subprocess -----------------------------------------------------------
def remote(base_url: str, timeout: float = 10.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="k", timeout=timeout, max_retries=0)


async def test_server_429_carries_retry_after(llm_server):
    url = llm_server("--rate-429", "1", "--retry-after", "7")
    async with remote(url) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "7"


async def test_server_500(llm_server):
    url = llm_server("--rate-500", "1")
    async with remote(url) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)


async def test_server_fail_first_then_success_and_stats(llm_server):
    url = llm_server("--fail-first", "2", "--fail-kind", "429", "--retry-after", "0")
    async with remote(url) as client:
        for _ in range(2):
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="m", messages=MESSAGES)
        third = await client.chat.completions.create(model="m", messages=MESSAGES)
        assert third.choices[0].message.content == answer_text(MESSAGES)
        other = [*MESSAGES[:1], {"role": "user", "content": "<content>hello</content>"}]
        with pytest.raises(openai.RateLimitError):  # a different request has its own count
            await client.chat.completions.create(model="m", messages=other)
    async with httpx.AsyncClient() as raw:
        stats = (await raw.get(url.removesuffix("/v1") + "/stats")).json()
    assert stats["requests"] == 4 and stats["chat_completions"] == 4
    assert stats["faults"]["429"] == 3 and stats["completed"] == 1


async def test_server_cut_stream_raises_during_iteration(llm_server):
    url = llm_server("--rate-cut", "1")
    async with remote(url) as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        seen = 0
        with pytest.raises(openai.APIConnectionError):
            async for _ in stream:
                seen += 1
        assert seen >= 1
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="m", messages=MESSAGES)


async def test_server_malformed_answer_has_no_json(llm_server):
    url = llm_server("--rate-malformed", "1")
    async with remote(url) as client:
        response = await client.chat.completions.create(model="m", messages=MESSAGES)
    content = response.choices[0].message.content
    assert content and "{" not in content and "}" not in content


async def test_server_hang_hits_client_timeout(llm_server):
    url = llm_server("--rate-timeout", "1", "--hang-s", "30")
    async with remote(url, timeout=0.5) as client:
        with pytest.raises(openai.APITimeoutError):  # without the timeout the call would succeed after 30 s
            await client.chat.completions.create(model="m", messages=MESSAGES)


def test_serve_llm_cli_registers_all_flags():
    import argparse

    from harness.llm.server import register_cli

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve-llm", "--port", "0", "--rate-cut", "0.5", "--fail-kind", "cut",
                              "--api-key", "s", "--seed", "3", "--latency-ms", "5"])
    assert callable(args.func) and args.port == 0 and args.rate_cut == 0.5
    assert args.fail_kind == "cut" and args.api_key == "s" and args.seed == 3 and args.host == "127.0.0.1"
