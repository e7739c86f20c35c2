"""Text embeddings for the semantic cache, through the same `openai.AsyncOpenAI` client as chat.

Two sources, chosen by settings:

* default (`HARNESS_EMBEDDING_MODEL` unset): a deterministic offline embedding, hashed
  character 3-grams in 256 dimensions (`harness.llm.openai_app.embed`), served by the offline
  app's `POST /v1/embeddings` through the in-process transport. Nothing is downloaded, no
  network is used, and the same text always gets the same vector. It measures how much two
  texts share in spelling, not in meaning, which is what near-duplicates (copy-pasta, spam
  variants, a changed word) have in common.
* `HARNESS_EMBEDDING_MODEL=<name>`: the configured endpoint's embeddings API
  (`OPENAI_BASE_URL`, e.g. `text-embedding-3-small` on OpenAI, or a vLLM / Ollama embedding
  model), with the chat client itself.

Vectors come back L2-normalised as float32, so a dot product is the cosine similarity.
`Embedder.id` names the source; the semantic index keeps vectors of different sources apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import openai

from harness.config import Settings

OFFLINE_EMBEDDING_MODEL = "harness-hash-char3-256"


class Embedder:
    """Embeds texts with the offline hashed embedding or the endpoint's embeddings API."""

    def __init__(self, settings: Settings, chat_client: openai.AsyncOpenAI | None = None):
        self.settings = settings
        self._chat_client = chat_client
        self._own_client: openai.AsyncOpenAI | None = None
        self.offline = settings.embedding_model is None
        self.model = settings.embedding_model or OFFLINE_EMBEDDING_MODEL
        if self.offline:
            self.id = OFFLINE_EMBEDDING_MODEL
        else:  # the endpoint is part of the identity: another server's model is another space
            where = hashlib.sha256(settings.endpoint.encode("utf-8")).hexdigest()[:8]
            self.id = f"{self.model}@{where}"
        self.requests = 0

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The chat client when it reaches the right server; otherwise an offline in-process one."""
        if self.offline and not self.settings.offline:
            # chat goes to a real endpoint but embeddings stay offline: a private in-process client
            if self._own_client is None:
                from harness.llm.inprocess import offline_client

                self._own_client = offline_client(timeout=self.settings.llm_timeout_s, max_retries=0)
            return self._own_client
        if self._chat_client is None:
            from harness.llm.service import build_client

            self._own_client = self._own_client or build_client(self.settings)
            return self._own_client
        return self._chat_client

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """An (n, dims) float32 array of unit vectors (all zeros for a text with nothing to embed)."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        self.requests += 1
        response = await self.client.embeddings.create(model=self.model, input=list(texts))
        rows = sorted(response.data, key=lambda d: d.index)
        vecs = np.asarray([r.embedding for r in rows], dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        np.divide(vecs, norms, out=vecs, where=norms > 0)
        return vecs

    async def embed_one(self, text: str) -> np.ndarray:
        return (await self.embed([text]))[0]

    async def aclose(self) -> None:
        if self._own_client is not None:
            await self._own_client.close()
            self._own_client = None
