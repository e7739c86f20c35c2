"""Score a run's predictions against gold labels: precision, recall and F1 with bootstrap CIs.

A prompt experiment is only as good as the arithmetic that compares runs, so the rules for
missing values are fixed here, in one place, and every other module uses them:

* Unknown GOLD (``gold_<CODE>`` is <NA>): the row says nothing about that category, so it is
  left out of that category's confusion counts and counted in ``unknown`` instead.
* Unknown PREDICTION (``pred_<CODE>`` is <NA> because the outcome was not "ok", or the model
  did not mention the category): counted as *not flagged* (negative). An item without a
  verdict catches nothing; dropping it instead would let a prompt that refuses or breaks the
  parser on hard items look better than one that answers them.
* "any" compares ``gold_any`` with ``flagged``. Where ``flagged`` is <NA> it falls back to
  "some ``pred_<CODE>`` is True", else negative. Without a ``gold_any`` column, gold "any"
  is 1 if some category is 1, 0 if all are 0, else unknown.
* Undefined ratios (0/0) are ``None``, never NaN, so results go straight into JSON.
  F1 is ``2tp / (2tp + fp + fn)``: it is 0 when nothing was caught and only undefined when
  there are neither gold nor predicted positives.
* Confidence intervals are percentile bootstraps over items, with the same resamples for all
  labels (paired) and a fixed seed, so a result is reproducible. A CI is ``None`` when the
  metric is undefined in more than half of the resamples or when support is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.schema import OUTCOMES

DIRECTIONS: tuple[str, ...] = ("toward_gold", "away_from_gold", "unknown_gold")
_METRICS: tuple[str, ...] = ("precision", "recall", "f1")
_BOOT_CELLS = 4_000_000  # resample-by-row cells per chunk; bounds memory for big runs


# ---- value normalisation -----------------------------------------------------------------
def _gold_array(values: Any, n: int) -> pd.arrays.IntegerArray:
    """Gold labels as Int8 with values 1, 0 or <NA>; anything > 0 counts as positive."""
    out = pd.array([pd.NA] * n, dtype="Int8")
    if values is None:
        return out
    s = pd.to_numeric(pd.Series(values).reset_index(drop=True), errors="coerce")
    if len(s) != n:
        raise ValueError(f"gold has {len(s)} rows, expected {n}")
    known = s.notna().to_numpy(dtype=bool)
    pos = np.zeros(n, dtype=bool)
    pos[known] = s[known].to_numpy(dtype=float) > 0
    out[known] = pos[known].astype("int8")
    return out


def _pred_array(values: Any, n: int) -> np.ndarray:
    """Predictions as a plain bool array, <NA> -> False (the no-verdict rule)."""
    if values is None:
        return np.zeros(n, dtype=bool)
    s = pd.Series(values).reset_index(drop=True)
    if len(s) != n:
        raise ValueError(f"pred has {len(s)} rows, expected {n}")
    return s.astype("boolean").fillna(False).to_numpy(dtype=bool)


def resolve_labels(pred: pd.DataFrame, codes: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gold (Int8, <NA> unknown) and effective predictions (bool) per label, codes + "any".

    Both frames share ``pred``'s index; a missing ``pred_<CODE>`` column means "never said",
    a missing ``gold_<CODE>`` column means "unknown".
    """
    codes = list(codes)
    if "any" in codes:
        raise ValueError("'any' is reserved for the overall label and cannot be a category code")
    n = len(pred)
    gold: dict[str, Any] = {c: _gold_array(pred.get(f"gold_{c}"), n) for c in codes}
    eff: dict[str, np.ndarray] = {c: _pred_array(pred.get(f"pred_{c}"), n) for c in codes}

    some_cat = np.zeros(n, dtype=bool)
    for c in codes:
        some_cat |= eff[c]
    flagged = pred.get("flagged")
    if flagged is None:
        eff["any"] = some_cat
    else:
        fl = pd.Series(flagged).reset_index(drop=True).astype("boolean")
        eff["any"] = np.where(fl.isna().to_numpy(), some_cat, fl.fillna(False).to_numpy(dtype=bool))

    if "gold_any" in pred.columns:
        gold["any"] = _gold_array(pred["gold_any"], n)
    else:
        g = pd.DataFrame({c: gold[c] for c in codes}, dtype="Int8")
        derived = pd.array([pd.NA] * n, dtype="Int8")
        if codes:
            has_pos = (g == 1).any(axis=1).to_numpy(dtype=bool)
            all_neg = (g == 0).fillna(False).all(axis=1).to_numpy(dtype=bool)
            derived[has_pos] = 1
            derived[all_neg & ~has_pos] = 0
        gold["any"] = derived

    labels = [*codes, "any"]
    gold_df = pd.DataFrame({k: gold[k] for k in labels}, index=pred.index).astype("Int8")
    eff_df = pd.DataFrame({k: eff[k] for k in labels}, index=pred.index).astype(bool)
    return gold_df, eff_df


# ---- point estimates ---------------------------------------------------------------------
def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _scores(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _cells(gold: pd.arrays.IntegerArray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row indicator arrays tp/fp/fn/tn/unknown for one label."""
    known = ~np.asarray(pd.isna(gold), dtype=bool)
    pos = np.asarray(pd.Series(gold).fillna(0).to_numpy(dtype=int) == 1) & known
    neg = known & ~pos
    return {
        "tp": pos & pred,
        "fp": neg & pred,
        "fn": pos & ~pred,
        "tn": neg & ~pred,
        "unknown": ~known,
    }


def _counts_dict(cells: dict[str, np.ndarray]) -> dict[str, Any]:
    tp, fp, fn, tn, unknown = (int(cells[k].sum()) for k in ("tp", "fp", "fn", "tn", "unknown"))
    return {
        **_scores(tp, fp, fn),
        "support": tp + fp + fn + tn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "unknown": unknown,
    }


def category_metrics(gold: pd.Series, pred: pd.Series) -> dict[str, Any]:
    """Confusion counts and P/R/F1 for one label; rows are aligned by position.

    Returns ``{precision, recall, f1, support, tp, fp, fn, tn, unknown}``; the ratios are
    ``None`` when undefined.
    """
    n = len(gold)
    return _counts_dict(_cells(_gold_array(gold, n), _pred_array(pred, n)))


# ---- bootstrap ---------------------------------------------------------------------------
def _bootstrap_sums(m: np.ndarray, n_boot: int, seed: int) -> np.ndarray | None:
    """Column sums of ``m`` (rows = items) over ``n_boot`` resamples of the rows.

    Each resample becomes a row of per-item draw counts (bincount of the drawn indices), so
    all columns of all resamples are one matrix product.
    """
    n = m.shape[0]
    if n == 0 or n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, m.shape[1]), dtype=float)
    chunk = max(1, _BOOT_CELLS // n)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))
        idx += (np.arange(k) * n)[:, None]
        weights = np.bincount(idx.ravel(), minlength=k * n).reshape(k, n).astype(float)
        out[start : start + k] = weights @ m
    return out


def _draws(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """P/R/F1 per resample, NaN where undefined."""

    def div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        res = np.full(num.shape, np.nan)
        np.divide(num, den, out=res, where=den > 0)
        return res

    return {
        "precision": div(tp, tp + fp),
        "recall": div(tp, tp + fn),
        "f1": div(2 * tp, 2 * tp + fp + fn),
    }


def _interval(draws: np.ndarray | None, ci: float) -> list[float] | None:
    if draws is None or draws.size == 0:
        return None
    ok = draws[~np.isnan(draws)]
    if ok.size == 0 or ok.size < 0.5 * draws.size:
        return None
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def _ci_block(draws: dict[str, np.ndarray] | None, ci: float, support: int) -> dict[str, Any]:
    if draws is None or support == 0:
        return dict.fromkeys(_METRICS)
    return {k: _interval(draws[k], ci) for k in _METRICS}


def _outcomes(pred: pd.DataFrame) -> dict[str, int]:
    """Counts per outcome; a missing or unrecognised outcome counts as "error"."""
    counts = dict.fromkeys(OUTCOMES, 0)
    if "outcome" not in pred.columns:
        counts["error"] = len(pred)
        return counts
    for value, k in pred["outcome"].value_counts(dropna=False).items():
        key = value if isinstance(value, str) and value in counts else "error"
        counts[key] += int(k)
    return counts


def compute_metrics(
    pred: pd.DataFrame,
    codes: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """All metrics of one run as a JSON-safe dict (see the module docstring for the rules).

    Keys: ``categories`` (per code, with ``ci``), ``any``, ``macro`` and ``micro`` (both also
    with ``ci``), ``outcomes``, ``n_items`` and ``bootstrap`` (n_boot, seed, level).
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci: expected a level between 0 and 1, got {ci!r}")
    codes = list(codes)
    labels = [*codes, "any"]
    gold, eff = resolve_labels(pred, codes)
    cells = {lab: _cells(gold[lab].array, eff[lab].to_numpy(dtype=bool)) for lab in labels}

    # one column per (label, tp|fp|fn); bootstrap sums them all at once
    cols = [cells[lab][k] for lab in labels for k in ("tp", "fp", "fn")]
    m = np.stack(cols, axis=1).astype(float) if cols else np.zeros((len(pred), 0))
    sums = _bootstrap_sums(m, n_boot, seed)

    def boot(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if sums is None:
            return None
        return sums[:, 3 * i], sums[:, 3 * i + 1], sums[:, 3 * i + 2]

    per_label: dict[str, dict[str, Any]] = {}
    draws_by_label: dict[str, dict[str, np.ndarray] | None] = {}
    for i, lab in enumerate(labels):
        d = _counts_dict(cells[lab])
        b = boot(i)
        draws_by_label[lab] = _draws(*b) if b is not None else None
        d["ci"] = _ci_block(draws_by_label[lab], ci, d["support"])
        per_label[lab] = d

    cats = {c: per_label[c] for c in codes}

    # macro: mean over categories where the metric is defined (point and per resample)
    macro: dict[str, Any] = {}
    macro_draws: dict[str, np.ndarray] | None = {} if sums is not None and codes else None
    for k in _METRICS:
        vals = [cats[c][k] for c in codes if cats[c][k] is not None]
        macro[k] = float(np.mean(vals)) if vals else None
        if macro_draws is not None:
            stack = np.stack([draws_by_label[c][k] for c in codes], axis=1)  # type: ignore[index]
            defined = ~np.isnan(stack)
            cnt = defined.sum(axis=1)
            tot = np.where(defined, stack, 0.0).sum(axis=1)
            macro_draws[k] = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
    macro_support = sum(cats[c]["support"] for c in codes)
    macro["ci"] = _ci_block(macro_draws, ci, macro_support)

    # micro: pool the confusion counts of all categories ("any" excluded)
    tp, fp, fn, tn = (sum(cats[c][k] for c in codes) for k in ("tp", "fp", "fn", "tn"))
    micro: dict[str, Any] = {**_scores(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    micro_draws = None
    if sums is not None and codes:
        n_c = len(codes)
        pooled = [sums[:, [3 * i + j for i in range(n_c)]].sum(axis=1) for j in range(3)]
        micro_draws = _draws(*pooled)
    micro["ci"] = _ci_block(micro_draws, ci, tp + fp + fn + tn)

    return {
        "categories": cats,
        "any": per_label["any"],
        "macro": macro,
        "micro": micro,
        "outcomes": _outcomes(pred),
        "n_items": int(len(pred)),
        "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "level": float(ci)},
    }


# ---- run comparison ----------------------------------------------------------------------
def compare_runs(a: pd.DataFrame, b: pd.DataFrame, codes: Sequence[str]) -> pd.DataFrame:
    """Every (content_id, label) whose effective prediction differs between runs a and b.

    Items are matched on ``content_id`` (inner join); gold comes from run a. Columns:
    ``content_id, label, gold, pred_a, pred_b, direction`` where direction is "toward_gold"
    (b agrees with gold, a did not), "away_from_gold" (a agreed, b does not) or
    "unknown_gold". Rows are grouped by label (codes, then "any"), in run a's item order.
    """
    for name, df in (("a", a), ("b", b)):
        dupes = df["content_id"][df["content_id"].duplicated()].unique().tolist()
        if dupes:
            raise ValueError(f"run {name}: duplicate content_id(s) {dupes[:5]}")
    codes = list(codes)
    labels = [*codes, "any"]
    gold_a, eff_a = resolve_labels(a, codes)
    _, eff_b = resolve_labels(b, codes)
    ids_a = a["content_id"].astype(str).to_numpy()
    pos_b = pd.Series(np.arange(len(b)), index=b["content_id"].astype(str).to_numpy())
    keep = np.isin(ids_a, pos_b.index.to_numpy())
    rows_a = np.flatnonzero(keep)
    rows_b = pos_b.loc[ids_a[keep]].to_numpy()

    parts = []
    for lab in labels:
        pa = eff_a[lab].to_numpy(dtype=bool)[rows_a]
        pb = eff_b[lab].to_numpy(dtype=bool)[rows_b]
        diff = pa != pb
        if not diff.any():
            continue
        g = gold_a[lab].array[rows_a][diff]
        unknown = np.asarray(pd.isna(g), dtype=bool)
        agrees_b = pd.Series(g).fillna(-1).to_numpy(dtype=int) == pb[diff].astype(int)
        direction = np.where(unknown, "unknown_gold", np.where(agrees_b, "toward_gold", "away_from_gold"))
        parts.append(
            pd.DataFrame(
                {
                    "content_id": ids_a[rows_a][diff],
                    "label": lab,
                    "gold": pd.array(g, dtype="Int8"),
                    "pred_a": pa[diff],
                    "pred_b": pb[diff],
                    "direction": direction,
                }
            )
        )
    if not parts:
        return pd.DataFrame(
            {
                "content_id": pd.Series([], dtype="str"),
                "label": pd.Series([], dtype="str"),
                "gold": pd.Series([], dtype="Int8"),
                "pred_a": pd.Series([], dtype=bool),
                "pred_b": pd.Series([], dtype=bool),
                "direction": pd.Series([], dtype="str"),
            }
        )
    return pd.concat(parts, ignore_index=True)


def comparison_summary(flips: pd.DataFrame) -> dict[str, Any]:
    """Flip counts per label and direction, plus totals and net (toward - away); JSON-safe."""

    def block(df: pd.DataFrame) -> dict[str, int]:
        counts = {d: int((df["direction"] == d).sum()) for d in DIRECTIONS}
        counts["net"] = counts["toward_gold"] - counts["away_from_gold"]
        counts["total"] = int(len(df))
        return counts

    by_label = {str(lab): block(g) for lab, g in flips.groupby("label", sort=False)}
    return {"n_flips": int(len(flips)), "by_label": by_label, "totals": block(flips)}
