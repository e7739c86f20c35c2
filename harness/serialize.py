"""How jobs and results are written to Redis: JSON, never pickle, so writing to Redis cannot run code."""

from __future__ import annotations

import json
from typing import Any


def json_serializer(obj: Any) -> bytes:
    return json.dumps(obj, default=str, ensure_ascii=False).encode("utf-8")


def json_deserializer(data: bytes) -> Any:
    return json.loads(data)
