"""Metrics on a hand-built run, every number worked out by hand in the comments."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from harness.metrics import category_metrics, compare_runs, comparison_summary, compute_metrics

CODES = ["A", "B", "C"]
NA = pd.NA


def hand_frame() -> pd.DataFrame:
    """Nine items, three categories.

    id  outcome     flagged pred A/B/C   gold A/B/C  gold_any | A    B    C    any
    c1  ok          T       T  F  F      1  0  1     1        | TP   TN   FN   TP
    c2  ok          T       T  NA F      0  1  0     1        | FP   FN   TN   TP
    c3  ok          F       F  F  F      1  0  0     1        | FN   TN   TN   FN
    c4  refused     NA      NA NA NA     1  NA 0     1        | FN   unk  TN   FN (no pred -> neg)
    c5  ok          F       F  F  F      0  0  0     0        | TN   TN   TN   TN
    c6  ok          T       T  F  F      NA 0  0     NA       | unk  TN   TN   unk
    c7  unparsable  NA      NA NA NA     0  0  0     0        | TN   TN   TN   TN
    c8  error       NA      NA NA NA     0  NA 0     0        | TN   unk  TN   TN
    c9  ok          NA      NA T  NA     0  0  0     0        | TN   FP   TN   FP (fallback: B is T)
    """
    return pd.DataFrame(
        {
            "content_id": [f"c{i}" for i in range(1, 10)],
            "outcome": ["ok", "ok", "ok", "refused", "ok", "ok", "unparsable", "error", "ok"],
            "flagged": pd.array([True, True, False, NA, False, True, NA, NA, NA], dtype="boolean"),
            "pred_A": pd.array([True, True, False, NA, False, True, NA, NA, NA], dtype="boolean"),
            "pred_B": pd.array([False, NA, False, NA, False, False, NA, NA, True], dtype="boolean"),
            "pred_C": pd.array([False, False, False, NA, False, False, NA, NA, NA], dtype="boolean"),
            "gold_A": pd.array([1, 0, 1, 1, 0, NA, 0, 0, 0], dtype="Int8"),
            "gold_B": pd.array([0, 1, 0, NA, 0, 0, 0, NA, 0], dtype="Int8"),
            "gold_C": pd.array([1, 0, 0, 0, 0, 0, 0, 0, 0], dtype="Int8"),
            "gold_any": pd.array([1, 1, 1, 1, 0, NA, 0, 0, 0], dtype="Int8"),
            "text": [f"text {i}" for i in range(1, 10)],
            "latency_s": [0.1] * 9,
        }
    )


def test_category_metrics_direct() -> None:
    # gold 1,0,NA,1 vs pred T,NA,T,NA -> TP, TN (NA pred = neg), unknown, FN
    m = category_metrics(
        pd.Series([1, 0, NA, 1], dtype="Int8"), pd.Series([True, NA, True, NA], dtype="boolean")
    )
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["unknown"], m["support"]) == (1, 0, 1, 1, 1, 3)
    assert m["precision"] == 1.0  # 1 / (1 + 0)
    assert m["recall"] == 0.5  # 1 / (1 + 1)
    assert m["f1"] == pytest.approx(2 / 3)  # 2 / (2 + 0 + 1)


def test_category_metrics_undefined_is_none() -> None:
    # nothing predicted, nothing positive: every ratio is 0/0
    m = category_metrics(pd.Series([0, 0], dtype="Int8"), pd.Series([False, NA], dtype="boolean"))
    assert m["precision"] is None and m["recall"] is None and m["f1"] is None
    assert m["tn"] == 2 and m["support"] == 2


def test_per_category_counts_and_scores() -> None:
    m = compute_metrics(hand_frame(), CODES, n_boot=200)
    a, b, c = (m["categories"][k] for k in CODES)
    # A: TP c1; FP c2; FN c3 c4; TN c5 c7 c8 c9; unknown c6
    assert (a["tp"], a["fp"], a["fn"], a["tn"], a["unknown"], a["support"]) == (1, 1, 2, 4, 1, 8)
    assert a["precision"] == 0.5  # 1/2
    assert a["recall"] == pytest.approx(1 / 3)  # 1/3
    assert a["f1"] == pytest.approx(0.4)  # 2*1 / (2 + 1 + 2)
    # B: FP c9; FN c2 (NA pred counts negative); TN c1 c3 c5 c6 c7; unknown c4 c8
    assert (b["tp"], b["fp"], b["fn"], b["tn"], b["unknown"], b["support"]) == (0, 1, 1, 5, 2, 7)
    assert b["precision"] == 0.0 and b["recall"] == 0.0 and b["f1"] == 0.0
    # C: FN c1, 8 TN, nothing predicted -> precision 0/0 undefined
    assert (c["tp"], c["fp"], c["fn"], c["tn"], c["unknown"]) == (0, 0, 1, 8, 0)
    assert c["precision"] is None
    assert c["recall"] == 0.0 and c["f1"] == 0.0
    assert c["ci"]["precision"] is None  # undefined in every resample


def test_any_uses_flagged_with_fallback() -> None:
    m = compute_metrics(hand_frame(), CODES, n_boot=200)["any"]
    # TP c1 c2; FN c3 c4; TN c5 c7 c8; FP c9 (flagged NA, pred_B True); unknown c6
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["unknown"], m["support"]) == (2, 1, 2, 3, 1, 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == 0.5
    assert m["f1"] == pytest.approx(4 / 7)  # 4 / (4 + 1 + 2)


def test_any_without_gold_any_column_is_derived() -> None:
    df = hand_frame().drop(columns=["gold_any"])
    m = compute_metrics(df, CODES, n_boot=0)["any"]
    # derived gold any: c1 c2 c3 c4 -> 1 (some code is 1); c6 -> unknown (A unknown, rest 0);
    # c8 -> unknown (B unknown, rest 0); c5 c7 c9 -> 0
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["unknown"]) == (2, 1, 2, 2, 2)


def test_macro_and_micro() -> None:
    m = compute_metrics(hand_frame(), CODES, n_boot=200)
    # macro precision: mean of defined A=0.5, B=0.0 (C undefined) = 0.25
    assert m["macro"]["precision"] == pytest.approx(0.25)
    # macro recall: (1/3 + 0 + 0) / 3
    assert m["macro"]["recall"] == pytest.approx(1 / 9)
    # macro f1: (0.4 + 0 + 0) / 3
    assert m["macro"]["f1"] == pytest.approx(0.4 / 3)
    # micro: tp 1+0+0, fp 1+1+0, fn 2+1+1, tn 4+5+8
    mi = m["micro"]
    assert (mi["tp"], mi["fp"], mi["fn"], mi["tn"]) == (1, 2, 4, 17)
    assert mi["precision"] == pytest.approx(1 / 3)
    assert mi["recall"] == pytest.approx(1 / 5)
    assert mi["f1"] == pytest.approx(0.25)  # 2 / (2 + 2 + 4)


def test_outcomes_all_keys_and_sum() -> None:
    m = compute_metrics(hand_frame(), CODES, n_boot=0)
    assert m["outcomes"] == {"ok": 6, "unparsable": 1, "refused": 1, "error": 1}
    assert sum(m["outcomes"].values()) == m["n_items"] == 9
    ok_only = compute_metrics(hand_frame().head(3), CODES, n_boot=0)["outcomes"]
    assert ok_only == {"ok": 3, "unparsable": 0, "refused": 0, "error": 0}


def test_bootstrap_deterministic_and_contains_point() -> None:
    big = pd.concat([hand_frame()] * 20, ignore_index=True)  # same ratios, 180 items
    m1 = compute_metrics(big, CODES, n_boot=500, seed=7)
    m2 = compute_metrics(big, CODES, n_boot=500, seed=7)
    m3 = compute_metrics(big, CODES, n_boot=500, seed=8)
    assert m1 == m2
    assert m1["categories"]["A"]["ci"] != m3["categories"]["A"]["ci"]
    a = m1["categories"]["A"]
    assert a["precision"] == 0.5  # same as the 9-row frame
    for key in ("precision", "recall", "f1"):
        lo, hi = a["ci"][key]
        assert 0.0 <= lo <= a[key] <= hi <= 1.0
        lo, hi = m1["any"]["ci"][key]
        assert lo <= m1["any"][key] <= hi
    for block in (m1["macro"], m1["micro"]):
        lo, hi = block["ci"]["f1"]
        assert lo <= block["f1"] <= hi


def test_ci_none_when_support_zero_or_no_resamples() -> None:
    df = hand_frame()
    df["gold_D"] = pd.array([NA] * len(df), dtype="Int8")
    m = compute_metrics(df, [*CODES, "D"], n_boot=100)
    d = m["categories"]["D"]
    assert d["support"] == 0 and d["unknown"] == 9
    assert d["ci"] == {"precision": None, "recall": None, "f1": None}
    m0 = compute_metrics(hand_frame(), CODES, n_boot=0)
    assert m0["categories"]["A"]["ci"] == {"precision": None, "recall": None, "f1": None}


def test_json_safe() -> None:
    m = compute_metrics(hand_frame(), CODES, n_boot=100)
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m
    empty = compute_metrics(hand_frame().head(0), CODES, n_boot=100)
    json.dumps(empty, allow_nan=False)
    assert empty["n_items"] == 0 and empty["macro"]["f1"] is None


def test_bootstrap_is_fast() -> None:
    rng = np.random.default_rng(0)
    n = 1680
    codes = [f"K{i}" for i in range(8)]
    data: dict[str, object] = {"content_id": [str(i) for i in range(n)], "outcome": ["ok"] * n}
    for c in codes:
        data[f"gold_{c}"] = pd.array(rng.integers(0, 2, n), dtype="Int8")
        data[f"pred_{c}"] = pd.array(rng.random(n) < 0.3, dtype="boolean")
    data["gold_any"] = pd.array(rng.integers(0, 2, n), dtype="Int8")
    data["flagged"] = pd.array(rng.random(n) < 0.5, dtype="boolean")
    result = compute_metrics(pd.DataFrame(data), codes, n_boot=1000)
    assert all(result["categories"][c]["ci"]["f1"] is not None for c in codes)


def run_b() -> pd.DataFrame:
    """Run b: hand_frame with changes, shuffled, c8 missing and an extra c10."""
    b = hand_frame().set_index("content_id")
    b.loc["c3", "pred_A"] = True  # a F, gold 1 -> toward_gold
    b.loc["c1", "pred_A"] = False  # a T, gold 1 -> away_from_gold
    b.loc["c6", "pred_A"] = False  # a T, gold NA -> unknown_gold
    b.loc["c2", "pred_B"] = True  # a NA (= F), gold 1 -> toward_gold
    b.loc["c5", "pred_A"] = NA  # a F, b NA (= F): not a flip
    b.loc["c3", "flagged"] = True  # any: a F, gold_any 1 -> toward_gold
    b = b.drop(index="c8").reset_index()
    extra = b.iloc[[0]].assign(content_id="c10", pred_A=True)
    return pd.concat([b, extra], ignore_index=True).iloc[::-1].reset_index(drop=True)


def test_compare_runs_directions() -> None:
    flips = compare_runs(hand_frame(), run_b(), CODES)
    assert list(flips.columns) == ["content_id", "label", "gold", "pred_a", "pred_b", "direction"]
    got = [
        (r.content_id, r.label, None if pd.isna(r.gold) else int(r.gold), r.pred_a, r.pred_b, r.direction)
        for r in flips.itertuples(index=False)
    ]
    assert got == [
        ("c1", "A", 1, True, False, "away_from_gold"),
        ("c3", "A", 1, False, True, "toward_gold"),
        ("c6", "A", None, True, False, "unknown_gold"),
        ("c2", "B", 1, False, True, "toward_gold"),
        ("c3", "any", 1, False, True, "toward_gold"),
    ]


def test_compare_runs_identical_is_empty() -> None:
    flips = compare_runs(hand_frame(), hand_frame(), CODES)
    assert flips.empty
    assert list(flips.columns) == ["content_id", "label", "gold", "pred_a", "pred_b", "direction"]
    assert comparison_summary(flips)["n_flips"] == 0


def test_comparison_summary() -> None:
    s = comparison_summary(compare_runs(hand_frame(), run_b(), CODES))
    json.dumps(s, allow_nan=False)
    assert s["n_flips"] == 5
    assert s["by_label"]["A"] == {
        "toward_gold": 1, "away_from_gold": 1, "unknown_gold": 1, "net": 0, "total": 3
    }
    assert s["by_label"]["B"]["toward_gold"] == 1
    assert s["by_label"]["any"]["toward_gold"] == 1
    assert "C" not in s["by_label"]
    assert s["totals"] == {
        "toward_gold": 3, "away_from_gold": 1, "unknown_gold": 1, "net": 2, "total": 5
    }
