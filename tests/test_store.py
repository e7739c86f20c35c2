"""The inline spill store: same answers as the in-memory one, nothing kept in Python objects."""

from __future__ import annotations

import gc

from harness.events import Event, MemoryEventBus
from harness.schema import Item, Verdict
from harness.store import MemoryStore, SpillStore


async def test_spill_store_behaves_like_the_memory_store():
    for store in (MemoryStore(), SpillStore()):
        await store.put_run("r", {"a": 1})
        assert await store.put_items("r", [Item("1", "one", labels={"S": 1}), Item("2", "two")]) == 2
        assert (await store.get_item("r", "1")).labels == {"S": 1}
        assert await store.get_item("r", "nope") is None
        assert await store.put_verdict("r", Verdict("1", "ok", flagged=True))
        assert not await store.put_verdict("r", Verdict("1", "error", error="late"))  # the first one stands
        bus = MemoryEventBus()
        got: list[Event] = []
        bus.add_listener(got.append)
        assert await store.put_final("r", Verdict("2", "ok"), Event("result", "r", "2"), bus)
        assert not await store.put_final("r", Verdict("2", "error"), Event("error", "r", "2"), bus)
        assert [e.type for e in got] == ["result"]
        verdicts = await store.verdicts("r")
        assert len(verdicts) == 2 and "1" in verdicts and "3" not in verdicts
        assert verdicts["1"].outcome == "ok" and list(verdicts) == ["1", "2"]
        assert verdicts.get("3") is None


async def test_spill_file_is_removed_when_nothing_uses_it():
    store = SpillStore()
    await store.put_verdict("r", Verdict("1", "ok"))
    view = await store.verdicts("r")
    folder = store._dir
    del store
    gc.collect()
    assert folder.exists() and view["1"].outcome == "ok"  # the view keeps the file alive
    del view
    gc.collect()
    assert not folder.exists()


def test_an_empty_run_has_an_empty_predictions_frame():
    import pandas as pd

    from harness import bundled_prompt, run_inline_sync

    result = run_inline_sync(pd.DataFrame({"content_id": [], "text": []}), bundled_prompt(), progress=False)
    pred = result.predictions()
    assert len(pred) == 0 and {"content_id", "outcome", "pred_S", "gold_S"} <= set(pred.columns)
