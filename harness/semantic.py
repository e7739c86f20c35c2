"""The semantic cache: near-duplicate content reuses a verdict instead of costing a model call.

A run opts in (`semantic_cache: true` in its meta: `run_inline(..., semantic_cache=True)`,
`enqueue_dataframe(..., semantic_cache=True)`, `harness eval --semantic-cache`). Then, for
an item the exact response cache cannot answer, `moderate_content` embeds the item's text
(`harness.embeddings`) and looks for an item already judged **by the same prompt version and
model** (and the same embedding) whose cosine similarity reaches the threshold
(`HARNESS_SEMANTIC_THRESHOLD`, default 0.9, or the run's `semantic_threshold`). A hit reuses that
verdict, marked with `semantic_source` (the source item's content_id) and `semantic_similarity`.

Only `ok` verdicts the model gave (fresh or from the exact cache) enter the index; a verdict
that was itself a semantic hit never does, so reuse cannot drift along a chain of near copies.
Adding is the Arq task `update_semantic_cache`: enqueued by `moderate_content` on workers,
called directly inline.

Layout. One namespace per (prompt_version, model, embedding) under `harness:semantic:<ns>:`:
`vectors` (hash: entry key -> float32 bytes), `entries` (hash: entry key -> the verdict to
reuse, JSON) and `log` (list of entry keys in the order they were added). An entry key is a
hash of the text, so the same text judged in many runs is stored once. Each worker mirrors a
namespace in a numpy matrix, reading only the entries added since its last look (`LRANGE` on
`log` from its own offset), and searches it brute force: one matrix-vector product, about
5 ms for 100k entries of 256 dimensions and 100 MB of memory per worker. That is fine up to
~100k items per namespace; beyond that an ANN index (FAISS, hnswlib, Redis vector search) would
be the next step. Inline runs use `MemorySemanticIndex`, one per run unless you pass your own.

Inline, two near copies in flight at the same time do not both call the model: the second waits
for the first (`MemorySemanticIndex` keeps in-flight reservations). Workers do not coordinate
in-flight items: near copies judged at the same moment on different workers both call the model,
and later copies hit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.config import Settings
from harness.schema import Item, PromptSpec, Verdict

log = logging.getLogger("harness.semantic")

PREFIX = "harness:semantic"
NAMESPACES_KEY = f"{PREFIX}:namespaces"


def namespace(prompt_version: str, model: str, embedder_id: str) -> str:
    return f"{prompt_version}:{model}:{embedder_id}"


def entry_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def embed_text(spec: PromptSpec, item: Item) -> str:
    """What is compared: the item's text as the model sees it (cut to max_text_chars)."""
    return item.text[: spec.max_text_chars]


def encode_vector(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(raw: str | bytes) -> np.ndarray:
    data = base64.b64decode(raw) if isinstance(raw, str) else raw
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def payload_from_verdict(v: Verdict) -> dict[str, Any]:
    """What a hit reuses: the verdict's judgement and where it came from."""
    return {"content_id": v.content_id, "run_id": v.run_id, "flagged": v.flagged,
            "categories": dict(v.categories), "scores": dict(v.scores), "commentary": v.commentary,
            "rationale": v.rationale, "raw": v.raw}


@dataclass
class SemanticHit:
    key: str
    similarity: float
    payload: dict[str, Any]

    @property
    def source_id(self) -> str:
        return str(self.payload.get("content_id", ""))

    def verdict_for(self, item: Item, *, truncated: bool = False) -> Verdict:
        p = self.payload
        return Verdict(
            content_id=item.content_id, outcome="ok", flagged=p.get("flagged"),
            categories=dict(p.get("categories") or {}), scores=dict(p.get("scores") or {}),
            commentary=p.get("commentary", ""), rationale=p.get("rationale", ""), raw=p.get("raw", ""),
            truncated=truncated, semantic_source=self.source_id,
            semantic_similarity=round(float(self.similarity), 4),
        )


class _Matrix:
    """Unit vectors in a growing float32 matrix, searched brute force."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self._data = np.zeros((0, 0), dtype=np.float32)
        self.synced = 0  # entries of the shared log already mirrored here (Redis index)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, vec: np.ndarray) -> bool:
        if key in self.index or not vec.size:
            return False
        n = len(self.keys)
        if n == 0 or self._data.shape[1] != vec.shape[0]:
            if n:  # another dimension in the same namespace: keep what is there, skip this one
                log.warning("semantic index: vector of %d dims among %d-dim ones; skipped",
                            vec.shape[0], self._data.shape[1])
                return False
            self._data = np.zeros((16, vec.shape[0]), dtype=np.float32)
        if n == self._data.shape[0]:
            grown = np.zeros((2 * n, self._data.shape[1]), dtype=np.float32)
            grown[:n] = self._data
            self._data = grown
        self._data[n] = vec
        self.keys.append(key)
        self.index[key] = n
        return True

    def best(self, vec: np.ndarray) -> tuple[str, float] | None:
        n = len(self.keys)
        if n == 0 or self._data.shape[1] != vec.shape[0]:
            return None
        sims = self._data[:n] @ vec
        i = int(np.argmax(sims))
        return self.keys[i], float(sims[i])


class Ticket:
    """One item's place in the in-flight queue of a MemorySemanticIndex namespace."""

    def __init__(self, ns: str, key: str, seq: int):
        loop = asyncio.get_running_loop()
        self.ns, self.key, self.seq = ns, key, seq
        self.vector: np.ndarray | None = None
        self.vector_known: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[dict[str, Any] | None] = loop.create_future()

    def settle(self, payload: dict[str, Any] | None) -> None:
        if not self.vector_known.done():
            self.vector_known.set_result(None)
        if not self.done.done():
            self.done.set_result(payload)


class MemorySemanticIndex:
    """The in-process index of inline runs, with single flight for near copies.

    An item takes a ticket before it embeds; a later ticket whose text is near an earlier,
    unfinished one waits for that one's verdict instead of calling the model. Only earlier
    tickets are waited on, so two items never wait on each other, and which copy is the source
    follows the order the items were started in.
    """

    def __init__(self) -> None:
        self._matrices: dict[str, _Matrix] = {}
        self._payloads: dict[str, dict[str, dict[str, Any]]] = {}
        self._pending: dict[str, dict[int, Ticket]] = {}
        self._seq = 0

    def count(self, ns: str) -> int:
        return len(self._matrices.get(ns, ()))

    def namespaces(self) -> list[str]:
        return sorted(self._matrices)

    def open(self, ns: str, key: str) -> Ticket:
        self._seq += 1
        ticket = Ticket(ns, key, self._seq)
        self._pending.setdefault(ns, {})[ticket.seq] = ticket
        return ticket

    def set_vector(self, ticket: Ticket, vec: np.ndarray) -> None:
        ticket.vector = vec
        if not ticket.vector_known.done():
            ticket.vector_known.set_result(None)

    def release(self, ticket: Ticket) -> None:
        """The item is done: waiters that got no entry from it go on to ask the model."""
        self._pending.get(ticket.ns, {}).pop(ticket.seq, None)
        ticket.settle(None)

    def _search(self, ns: str, vec: np.ndarray, threshold: float) -> SemanticHit | None:
        matrix = self._matrices.get(ns)
        found = matrix.best(vec) if matrix is not None else None
        if found is not None and found[1] >= threshold:
            return SemanticHit(found[0], found[1], self._payloads[ns][found[0]])
        return None

    async def lookup(self, ticket: Ticket, vec: np.ndarray, threshold: float,
                     wait_s: float = 0.0) -> SemanticHit | None:
        """A stored near-duplicate, or the verdict of an earlier one still in flight, or None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait_s)
        tried: set[int] = set()
        while True:
            hit = self._search(ticket.ns, vec, threshold)
            if hit is not None:
                return hit
            earlier = [t for seq, t in self._pending.get(ticket.ns, {}).items()
                       if seq < ticket.seq and seq not in tried]
            unknown = [t.vector_known for t in earlier if not t.vector_known.done()]
            if unknown and wait_s > 0:
                await asyncio.wait(unknown, timeout=max(0.0, deadline - loop.time()))
            best: tuple[float, Ticket] | None = None
            for t in earlier:
                if t.vector is not None and t.vector.shape == vec.shape:
                    sim = float(t.vector @ vec)
                    if sim >= threshold and (best is None or sim > best[0]):
                        best = (sim, t)
            if best is None or wait_s <= 0 or loop.time() >= deadline:
                return None
            similarity, source = best
            tried.add(source.seq)
            try:
                payload = await asyncio.wait_for(asyncio.shield(source.done), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return None
            if payload is not None:
                return SemanticHit(source.key, similarity, payload)

    async def add(self, ns: str, key: str, vec: np.ndarray, payload: dict[str, Any]) -> bool:
        matrix = self._matrices.setdefault(ns, _Matrix())
        added = matrix.add(key, vec)
        if added:
            self._payloads.setdefault(ns, {})[key] = payload
        stored = self._payloads.get(ns, {}).get(key)
        for ticket in list(self._pending.get(ns, {}).values()):
            if ticket.key == key and not ticket.done.done():
                ticket.done.set_result(stored)
        return added


# Add an entry once per text: vector, reusable verdict and its place in the log, atomically.
_ADD_SCRIPT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('RPUSH', KEYS[3], ARGV[1])
  redis.call('SADD', KEYS[4], ARGV[4])
  return 1
end
return 0
"""


class RedisSemanticIndex:
    """The index shared by all workers through Redis, mirrored per worker in numpy."""

    def __init__(self, redis: Any):
        self.redis = redis
        self._mirrors: dict[str, _Matrix] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def keys(ns: str) -> tuple[str, str, str]:
        return f"{PREFIX}:{ns}:vectors", f"{PREFIX}:{ns}:entries", f"{PREFIX}:{ns}:log"

    async def count(self, ns: str) -> int:
        return int(await self.redis.hlen(self.keys(ns)[0]))

    async def _sync(self, ns: str) -> _Matrix:
        lock = self._locks.setdefault(ns, asyncio.Lock())
        async with lock:
            vectors, _, log_key = self.keys(ns)
            matrix = self._mirrors.setdefault(ns, _Matrix())
            n = int(await self.redis.llen(log_key))
            if n < matrix.synced:  # the namespace was cleared: start again
                matrix = self._mirrors[ns] = _Matrix()
            while matrix.synced < n:
                upto = min(n, matrix.synced + 5000) - 1
                keys = [k.decode() if isinstance(k, bytes) else k
                        for k in await self.redis.lrange(log_key, matrix.synced, upto)]
                if not keys:
                    break
                raws = await self.redis.hmget(vectors, keys)
                for k, raw in zip(keys, raws, strict=True):
                    if raw:
                        matrix.add(k, decode_vector(raw))
                matrix.synced += len(keys)
            return matrix

    def open(self, ns: str, key: str) -> Ticket:
        return Ticket(ns, key, 0)  # workers do not coordinate items in flight

    def set_vector(self, ticket: Ticket, vec: np.ndarray) -> None:
        ticket.vector = vec

    def release(self, ticket: Ticket) -> None:
        ticket.settle(None)

    async def lookup(self, ticket: Ticket, vec: np.ndarray, threshold: float,
                     wait_s: float = 0.0) -> SemanticHit | None:
        ns = ticket.ns
        matrix = await self._sync(ns)
        found = matrix.best(vec)
        if found is None or found[1] < threshold:
            return None
        raw = await self.redis.hget(self.keys(ns)[1], found[0])
        return SemanticHit(found[0], found[1], json.loads(raw)) if raw else None

    async def add(self, ns: str, key: str, vec: np.ndarray, payload: dict[str, Any]) -> bool:
        vectors, entries, log_key = self.keys(ns)
        blob = np.asarray(vec, dtype="<f4").tobytes()
        added = await self.redis.eval(_ADD_SCRIPT, 4, vectors, entries, log_key, NAMESPACES_KEY, key, blob,
                                      json.dumps(payload, ensure_ascii=False), ns)
        return bool(added)

    async def clear(self, ns: str) -> None:
        await self.redis.delete(*self.keys(ns))
        await self.redis.srem(NAMESPACES_KEY, ns)
        self._mirrors.pop(ns, None)


# ---- the hooks moderate_content calls ----------------------------------------------------------
def install(ctx: dict[str, Any]) -> None:
    """Put the index and the embedder in ctx (startup): Redis on workers, memory inline."""
    from harness.embeddings import Embedder

    if "semantic" not in ctx:
        ctx["semantic"] = RedisSemanticIndex(ctx["redis"]) if "redis" in ctx else MemorySemanticIndex()
    if "embedder" not in ctx:
        llm = ctx.get("llm")
        ctx["embedder"] = Embedder(ctx["settings"], llm.client if llm is not None else None)


async def close(ctx: dict[str, Any]) -> None:
    embedder = ctx.pop("embedder", None)
    if embedder is not None:
        await embedder.aclose()


@dataclass
class Probe:
    """One item's look at the semantic cache, kept until its verdict is stored."""

    ns: str
    key: str
    vector: np.ndarray | None = None
    hit: SemanticHit | None = None
    index: Any = None
    ticket: Ticket | None = None

    def release(self) -> None:
        if self.index is not None and self.ticket is not None:
            self.index.release(self.ticket)
            self.ticket = None


def threshold_of(run: dict[str, Any], settings: Settings) -> float:
    value = run.get("semantic_threshold")
    return float(value) if value is not None else settings.semantic_threshold


async def _exact_cache_has(ctx: dict[str, Any], spec: PromptSpec, item: Item, run: dict[str, Any]) -> bool:
    """Whether the exact response cache will answer this item (it stays first)."""
    from harness.llm.cache import cache_key, cache_key_fields

    settings: Settings = ctx["settings"]
    if (run.get("cache_mode") or settings.cache_mode) != "use":
        return False
    llm = ctx["llm"]
    messages, _ = spec.render_messages(item)
    fields = cache_key_fields(endpoint=settings.endpoint, model=spec.model or settings.model, messages=messages,
                              params=spec.sampling(), sample_index=int(run.get("sample_index") or 0))
    return await asyncio.to_thread(llm.cache.get, cache_key(fields)) is not None


async def probe(ctx: dict[str, Any], spec: PromptSpec, item: Item, run: dict[str, Any]) -> Probe | None:
    """Look for a near-duplicate's verdict; None when the run does not use the semantic cache.

    Never fails the item: an embedding error only means the model is asked.
    """
    if not run.get("semantic_cache") or "semantic" not in ctx:
        return None
    text = embed_text(spec, item)
    if not text.strip():
        return None
    settings: Settings = ctx["settings"]
    index = ctx["semantic"]
    ns = namespace(run.get("prompt_version") or spec.version, run.get("model") or spec.model,
                   ctx["embedder"].id)
    result = Probe(ns, entry_key(text), index=index)
    result.ticket = index.open(ns, result.key)  # before any await: the order items started in
    try:
        vec = await ctx["embedder"].embed_one(text)
        if not np.any(vec):
            result.release()
            return result
        result.vector = vec
        index.set_vector(result.ticket, vec)
        if await _exact_cache_has(ctx, spec, item, run):
            return result  # the exact cache answers (it stays first); near copies may wait for it
        result.hit = await index.lookup(result.ticket, vec, threshold_of(run, settings),
                                        wait_s=settings.llm_timeout_s)
    except Exception as exc:  # noqa: BLE001 - the semantic cache is an optimisation, never a failure
        log.warning("semantic cache skipped for %s: %s: %s", item.content_id, type(exc).__name__, exc)
        result.release()
    except BaseException:
        result.release()
        raise
    return result


async def after_verdict(ctx: dict[str, Any], run: dict[str, Any], verdict: Verdict, probe_: Probe | None) -> None:
    """Add a fresh ok verdict to the index at once (the same code the Arq task runs)."""
    if not run.get("semantic_cache") or verdict.outcome != "ok" or verdict.semantic_source is not None:
        return
    vector = encode_vector(probe_.vector) if probe_ is not None and probe_.vector is not None else None
    # Called directly on workers too: as a separate job it would queue behind the run's own
    # moderation jobs, and the near copies within this run would find nothing to reuse.
    await update_semantic_cache(ctx, verdict.run_id, verdict.content_id, vector)


async def update_semantic_cache(ctx: dict[str, Any], run_id: str, content_id: str,
                                vector: str | None = None) -> dict[str, Any]:
    """Arq task: add an item's ok verdict to its (prompt version, model) namespace of the index."""
    store = ctx["store"]
    run = await store.get_run(run_id)
    item = await store.get_item(run_id, content_id)
    verdict = await store.get_verdict(run_id, content_id)
    if run is None or item is None or verdict is None:
        return {"added": False, "reason": "run, item or verdict not found"}
    if verdict.outcome != "ok" or verdict.semantic_source is not None:
        return {"added": False, "reason": "only fresh ok verdicts enter the index"}
    spec = PromptSpec.from_dict(run["prompt"], name=run["prompt"].get("name", "prompt"))
    text = embed_text(spec, item)
    vec = decode_vector(vector) if vector else await ctx["embedder"].embed_one(text)
    if not np.any(vec):
        return {"added": False, "reason": "nothing to embed"}
    ns = namespace(run.get("prompt_version") or spec.version, run.get("model") or spec.model, ctx["embedder"].id)
    added = await ctx["semantic"].add(ns, entry_key(text), vec, payload_from_verdict(verdict))
    return {"added": added, "namespace": ns}
