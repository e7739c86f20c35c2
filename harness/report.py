"""Turn metrics into something a person reads: a terminal table and a self-contained HTML page.

The HTML report is a single file with inline CSS and inline SVG, no scripts and nothing
fetched from the internet, so it can be attached to a ticket or opened from an air-gapped
box. Items are moderation data and routinely contain hostile markup (``<script>``, broken
tags, control characters), so every string that comes from data or metadata goes through
``html.escape`` before it is written; only the markup built here is trusted.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.metrics import comparison_summary, resolve_labels
from harness.schema import OUTCOMES

MAX_FLIPS = 200
MAX_MISSES = 50
TEXT_CHARS = 200


# ---- small helpers -----------------------------------------------------------------------
def _fmt(x: Any, digits: int = 3) -> str:
    """A ratio with fixed decimals, "-" when undefined."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{float(x):.{digits}f}"


def _int(x: Any) -> str:
    return "-" if x is None else str(int(x))


def _is_na(x: Any) -> bool:
    if x is None:
        return True
    if isinstance(x, dict | list | tuple | str):
        return False
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def _e(x: Any) -> str:
    """Escape anything for HTML text or attribute context; NA becomes ""."""
    if _is_na(x):
        return ""
    if isinstance(x, dict | list | tuple):
        x = json.dumps(x, ensure_ascii=False, default=str)
    return html.escape(str(x), quote=True)


def _truncate(text: Any, n: int = TEXT_CHARS) -> str:
    s = "" if _is_na(text) else str(text)
    return s if len(s) <= n else s[:n] + "…"


def _rows(metrics: dict[str, Any], codes: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label, block) for codes, any, macro, micro; absent blocks become {}."""
    cats = metrics.get("categories", {})
    out = [(c, cats.get(c, {})) for c in codes]
    out += [(k, metrics.get(k) or {}) for k in ("any", "macro", "micro")]
    return out


def _support(label: str, block: dict[str, Any]) -> int | None:
    if "support" in block:
        return block["support"]
    if label == "micro" and "tp" in block:
        return sum(int(block.get(k, 0)) for k in ("tp", "fp", "fn", "tn"))
    return None


def _outcomes_line(outcomes: dict[str, int]) -> str:
    parts = [f"{k}={int(outcomes.get(k, 0))}" for k in OUTCOMES]
    return " ".join(parts) + f" (n={sum(int(v) for v in outcomes.values())})"


# ---- terminal ----------------------------------------------------------------------------
def format_table(runs: Sequence[tuple[str, dict]], codes: Sequence[str]) -> str:
    """A plain-text table: one row per label, P/R/F1/support per run side by side."""
    labels = [*codes, "any", "macro", "micro"]
    lw = max(5, *(len(x) for x in labels))
    cell = "{:>6} {:>6} {:>6} {:>6}"
    gw = len(cell.format("", "", "", ""))
    head1 = " " * lw + "".join(" | " + _center(lab, gw) for lab, _ in runs)
    head2 = "label".ljust(lw) + "".join(" | " + cell.format("P", "R", "F1", "n") for _ in runs)
    lines = [head1, head2, "-" * len(head2)]
    for i, label in enumerate(labels):
        if label == "macro":
            lines.append("-" * len(head2))
        parts = [label.ljust(lw)]
        for _, metrics in runs:
            block = _rows(metrics, codes)[i][1]
            sup = _support(label, block)
            parts.append(
                " | "
                + cell.format(
                    _fmt(block.get("precision")),
                    _fmt(block.get("recall")),
                    _fmt(block.get("f1")),
                    "-" if sup is None else str(sup),
                )
            )
        lines.append("".join(parts))
    lines.append("")
    for lab, metrics in runs:
        lines.append(f"outcomes [{lab}]: {_outcomes_line(metrics.get('outcomes', {}))}")
    return "\n".join(line.rstrip() for line in lines)


def _center(text: str, width: int) -> str:
    text = str(text)
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.center(width)


# ---- SVG ---------------------------------------------------------------------------------
_PANEL_W, _PANEL_H, _CELL = 160, 150, 46
_PER_ROW = 5


def confusion_svg(metrics: dict[str, Any], codes: Sequence[str]) -> str:
    """Inline SVG: a labelled 2x2 confusion heatmap per category and for "any".

    Rows are gold (+/-), columns predicted (+/-). Correct cells are blue, errors orange; the
    colour's strength is the cell's share of that label's support.
    """
    cats = metrics.get("categories", {})
    panels = [(c, cats.get(c, {})) for c in codes]
    if metrics.get("any"):
        panels.append(("any", metrics["any"]))
    n_rows = max(1, math.ceil(len(panels) / _PER_ROW))
    width = _PANEL_W * min(_PER_ROW, max(1, len(panels)))
    height = _PANEL_H * n_rows
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="confusion" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="confusion matrices" font-family="sans-serif" font-size="11">',
        "<title>Confusion matrices (rows: gold, columns: predicted)</title>",
    ]
    for i, (label, block) in enumerate(panels):
        x0 = (i % _PER_ROW) * _PANEL_W
        y0 = (i // _PER_ROW) * _PANEL_H
        out.append(_panel(label, block, x0, y0))
    out.append("</svg>")
    return "\n".join(out)


def _panel(label: str, block: dict[str, Any], x0: int, y0: int) -> str:
    counts = {k: int(block.get(k, 0) or 0) for k in ("tp", "fp", "fn", "tn")}
    support = sum(counts.values())
    gx, gy = x0 + 50, y0 + 36
    parts = [
        f'<g class="panel"><text x="{x0 + 80}" y="{y0 + 14}" text-anchor="middle" '
        f'font-weight="bold" font-size="12">{_e(label)}</text>',
        f'<text x="{gx + _CELL // 2}" y="{gy - 5}" text-anchor="middle">pred +</text>',
        f'<text x="{gx + _CELL + _CELL // 2}" y="{gy - 5}" text-anchor="middle">pred −</text>',
        f'<text x="{gx - 4}" y="{gy + _CELL // 2 + 4}" text-anchor="end">gold +</text>',
        f'<text x="{gx - 4}" y="{gy + _CELL + _CELL // 2 + 4}" text-anchor="end">gold −</text>',
    ]
    layout = (("tp", 0, 0, True), ("fn", 1, 0, False), ("fp", 0, 1, False), ("tn", 1, 1, True))
    for key, col, row, correct in layout:
        share = counts[key] / support if support else 0.0
        rgb = "31,119,180" if correct else "230,120,20"
        alpha = 0.06 + 0.94 * share
        x, y = gx + col * _CELL, gy + row * _CELL
        ink = "#fff" if alpha > 0.55 else "#222"
        parts.append(
            f'<rect x="{x}" y="{y}" width="{_CELL}" height="{_CELL}" '
            f'fill="rgba({rgb},{alpha:.3f})" stroke="#999"><title>{key.upper()} '
            f"{counts[key]} ({share:.1%})</title></rect>"
        )
        parts.append(
            f'<text x="{x + _CELL // 2}" y="{y + 18}" text-anchor="middle" fill="{ink}" '
            f'font-size="9">{key.upper()}</text>'
            f'<text x="{x + _CELL // 2}" y="{y + 34}" text-anchor="middle" fill="{ink}" '
            f'font-weight="bold">{counts[key]}</text>'
        )
    unknown = int(block.get("unknown", 0) or 0)
    parts.append(
        f'<text x="{gx + _CELL}" y="{gy + 2 * _CELL + 16}" text-anchor="middle" fill="#555">'
        f"n={support}" + (f", unknown={unknown}" if unknown else "") + "</text></g>"
    )
    return "".join(parts)


# ---- HTML --------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:#777;font-size:11px}.muted{color:#777}.best{font-weight:bold;background:#eef6ee}
.toward_gold{color:#17712b}.away_from_gold{color:#b02a2a}.unknown_gold{color:#777}
td.text{max-width:480px;white-space:pre-wrap;word-break:break-word;font-size:12px}
tr.sep td{border-top:2px solid #aaa}
"""


def _ci_html(block: dict[str, Any], key: str) -> str:
    ci = (block.get("ci") or {}).get(key)
    if not ci:
        return ""
    return f' <span class="ci">[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>'


def _meta_table(meta: dict[str, Any] | None) -> str:
    if not meta:
        return ""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in meta.items())
    return f"<h2>Run details</h2><table class='meta'>{rows}</table>"


def _metrics_table(metrics: dict[str, Any], codes: Sequence[str]) -> str:
    head = (
        "<tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>"
        "<th>TP</th><th>FP</th><th>FN</th><th>TN</th><th>unknown gold</th></tr>"
    )
    body = []
    for label, block in _rows(metrics, codes):
        sep = ' class="sep"' if label == "macro" else ""
        cells = "".join(
            f'<td class="num">{_fmt(block.get(k))}{_ci_html(block, k)}</td>'
            for k in ("precision", "recall", "f1")
        )
        counts = "".join(
            f'<td class="num">{_int(block.get(k))}</td>' for k in ("tp", "fp", "fn", "tn", "unknown")
        )
        sup = _support(label, block)
        body.append(
            f"<tr{sep}><th>{_e(label)}</th>{cells}"
            f'<td class="num">{"-" if sup is None else sup}</td>{counts}</tr>'
        )
    return f"<table class='metrics'>{head}{''.join(body)}</table>"


def _outcomes_table(outcomes: dict[str, int]) -> str:
    total = sum(int(v) for v in outcomes.values())
    cells = "".join(
        f'<td class="num">{int(outcomes.get(k, 0))}'
        f'{f" <span class=ci>({int(outcomes.get(k, 0)) / total:.1%})</span>" if total else ""}</td>'
        for k in OUTCOMES
    )
    head = "".join(f"<th>{_e(k)}</th>" for k in OUTCOMES)
    return f"<table class='outcomes'><tr>{head}<th>total</th></tr><tr>{cells}<td class='num'>{total}</td></tr></table>"


def _f1_side_by_side(runs: Sequence[tuple[str, dict, pd.DataFrame]], codes: Sequence[str]) -> str:
    two = len(runs) == 2
    head = "<tr><th>label</th>" + "".join(f"<th>{_e(lab)}</th>" for lab, _, _ in runs)
    head += ("<th>Δ F1 (2nd − 1st)</th>" if two else "") + "</tr>"
    body = []
    labels = [*codes, "any", "macro", "micro"]
    for i, label in enumerate(labels):
        blocks = [_rows(m, codes)[i][1] for _, m, _ in runs]
        vals = [b.get("f1") for b in blocks]
        defined = [v for v in vals if v is not None]
        best = max(defined) if defined else None
        sep = ' class="sep"' if label == "macro" else ""
        row = f"<tr{sep}><th>{_e(label)}</th>"
        for b, v in zip(blocks, vals, strict=True):
            cls = "num best" if v is not None and v == best and len(defined) > 1 else "num"
            row += f'<td class="{cls}">{_fmt(v)}{_ci_html(b, "f1")}</td>'
        if two:
            delta = None if None in vals else vals[1] - vals[0]
            row += f'<td class="num">{"-" if delta is None else f"{delta:+.3f}"}</td>'
        body.append(row + "</tr>")
    return f"<h2>F1 side by side</h2><table class='side'>{head}{''.join(body)}</table>"


def _text_lookup(runs: Sequence[tuple[str, dict, pd.DataFrame]]) -> dict[str, Any]:
    for _, _, df in runs:
        if "text" in df.columns and "content_id" in df.columns:
            return dict(zip(df["content_id"].astype(str), df["text"], strict=False))
    return {}


def _comparison_section(
    comparison: pd.DataFrame, runs: Sequence[tuple[str, dict, pd.DataFrame]]
) -> str:
    summary = comparison_summary(comparison)
    name_a, name_b = (runs[0][0], runs[1][0]) if len(runs) == 2 else ("a", "b")
    out = [
        "<h2>What changed between runs</h2>",
        f"<p>Run a = <b>{_e(name_a)}</b>, run b = <b>{_e(name_b)}</b>. "
        f"{summary['n_flips']} prediction(s) differ. "
        "“toward gold”: b now agrees with the gold label; “away from gold”: a agreed, b does not.</p>",
        "<table class='summary'><tr><th>label</th><th>toward gold</th><th>away from gold</th>"
        "<th>unknown gold</th><th>net</th><th>total</th></tr>",
    ]
    blocks = [*summary["by_label"].items(), ("all", summary["totals"])]
    for label, b in blocks:
        sep = ' class="sep"' if label == "all" else ""
        out.append(
            f"<tr{sep}><th>{_e(label)}</th>"
            + "".join(
                f'<td class="num">{b[k]:+d}</td>' if k == "net" else f'<td class="num">{b[k]}</td>'
                for k in ("toward_gold", "away_from_gold", "unknown_gold", "net", "total")
            )
            + "</tr>"
        )
    out.append("</table>")
    if len(comparison):
        texts = _text_lookup(runs)
        shown = comparison.head(MAX_FLIPS)
        more = len(comparison) - len(shown)
        out.append(
            f"<h3>Flips{f' (first {MAX_FLIPS} of {len(comparison)})' if more > 0 else ''}</h3>"
            "<table class='flips'><tr><th>content_id</th><th>label</th><th>gold</th>"
            f"<th>pred a</th><th>pred b</th><th>direction</th>{'<th>text</th>' if texts else ''}</tr>"
        )
        for r in shown.itertuples(index=False):
            gold = "?" if pd.isna(r.gold) else str(int(r.gold))
            direction = str(r.direction)
            text_cell = (
                f"<td class='text'>{_e(_truncate(texts.get(str(r.content_id))))}</td>" if texts else ""
            )
            out.append(
                f"<tr><td>{_e(r.content_id)}</td><td>{_e(r.label)}</td><td class='num'>{gold}</td>"
                f"<td class='num'>{int(bool(r.pred_a))}</td><td class='num'>{int(bool(r.pred_b))}</td>"
                f"<td class='{_e(direction)}'>{_e(direction.replace('_', ' '))}</td>{text_cell}</tr>"
            )
        out.append("</table>")
    return "".join(out)


def misclassified(df: pd.DataFrame, codes: Sequence[str]) -> pd.DataFrame:
    """Items whose effective prediction disagrees with a known gold label (any category or "any").

    Columns: content_id, outcome, gold, predicted, missed, false_alarms (codes as text; "any"
    included when the overall verdict is wrong) and position (row number in ``df``), in the
    run's order.
    """
    codes = list(codes)
    gold, eff = resolve_labels(df, codes)
    labels = [*codes, "any"]
    g = {lab: gold[lab].to_numpy(dtype="float64", na_value=np.nan) for lab in labels}
    p = {lab: eff[lab].to_numpy(dtype=bool) for lab in labels}
    missed = {lab: (g[lab] == 1) & ~p[lab] for lab in labels}
    false = {lab: (g[lab] == 0) & p[lab] for lab in labels}
    wrong = np.zeros(len(df), dtype=bool)
    for lab in labels:
        wrong |= missed[lab] | false[lab]

    def join(mask: dict[str, np.ndarray], i: int, names: Sequence[str]) -> str:
        return ", ".join(lab for lab in names if mask[lab][i])

    rows = []
    for i in np.flatnonzero(wrong):
        gold_pos = [c for c in codes if g[c][i] == 1]
        gold_unk = [c for c in codes if np.isnan(g[c][i])]
        gold_txt = ", ".join(gold_pos) or "none"
        if gold_unk:
            gold_txt += f" (unknown: {', '.join(gold_unk)})"
        rows.append(
            {
                "content_id": str(df["content_id"].iloc[i]) if "content_id" in df else str(i),
                "outcome": str(df["outcome"].iloc[i]) if "outcome" in df else "",
                "gold": gold_txt,
                "predicted": ", ".join(c for c in codes if p[c][i]) or "none",
                "missed": join(missed, i, labels),
                "false_alarms": join(false, i, labels),
                "position": int(i),
            }
        )
    return pd.DataFrame(
        rows,
        columns=["content_id", "outcome", "gold", "predicted", "missed", "false_alarms", "position"],
    )


def _misses_section(df: pd.DataFrame, codes: Sequence[str]) -> str:
    miss = misclassified(df, codes)
    if miss.empty:
        return "<h3>Misclassified items</h3><p class='muted'>None.</p>"
    shown = miss.head(MAX_MISSES)
    has_text = "text" in df.columns
    has_rat = "rationale" in df.columns or "error" in df.columns
    note = f" (first {MAX_MISSES} of {len(miss)})" if len(miss) > MAX_MISSES else f" ({len(miss)})"
    out = [
        f"<h3>Misclassified items{note}</h3><table class='misses'><tr><th>content_id</th>"
        "<th>outcome</th><th>gold</th><th>predicted</th><th>missed</th><th>false alarm</th>"
        + ("<th>text</th>" if has_text else "")
        + ("<th>rationale / error</th>" if has_rat else "")
        + "</tr>"
    ]
    for r in shown.itertuples(index=False):
        i = r.position
        row = (
            f"<tr><td>{_e(r.content_id)}</td><td>{_e(r.outcome)}</td><td>{_e(r.gold)}</td>"
            f"<td>{_e(r.predicted)}</td><td>{_e(r.missed)}</td><td>{_e(r.false_alarms)}</td>"
        )
        if has_text:
            row += f"<td class='text'>{_e(_truncate(df['text'].iloc[i]))}</td>"
        if has_rat:
            rat = _truncate(df["rationale"].iloc[i], 400) if "rationale" in df.columns else ""
            if not rat and "error" in df.columns:
                err = _truncate(df["error"].iloc[i], 400)
                rat = f"error: {err}" if err else ""
            row += f"<td class='text'>{_e(rat)}</td>"
        out.append(row + "</tr>")
    out.append("</table>")
    return "".join(out)


def render_html(
    runs: Sequence[tuple[str, dict, pd.DataFrame]],
    codes: Sequence[str],
    *,
    title: str,
    comparison: pd.DataFrame | None = None,
    meta: dict | None = None,
) -> str:
    """A self-contained HTML report for one or more runs (label, metrics, predictions)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<p class='muted'>Unknown gold labels are left out of a category's counts; an item with "
        "no verdict (unparsable, refused, error) counts as not flagged. Brackets are "
        + _e(_level_text(runs))
        + " bootstrap intervals over items.</p>",
        _meta_table(meta),
    ]
    if len(runs) > 1:
        parts.append(_f1_side_by_side(runs, codes))
    if comparison is not None:
        parts.append(_comparison_section(comparison, runs))
    for label, metrics, df in runs:
        parts.append(f"<h2>Run: {_e(label)}</h2>")
        parts.append(f"<p>{_e(metrics.get('n_items', len(df)))} items.</p>")
        parts.append(_outcomes_table(metrics.get("outcomes", {})))
        parts.append(_metrics_table(metrics, codes))
        parts.append(
            "<h3>Confusion per category</h3>"
            "<div class='svg'>" + confusion_svg(metrics, codes) + "</div>"
        )
        parts.append(_misses_section(df, codes))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _level_text(runs: Sequence[tuple[str, dict, pd.DataFrame]]) -> str:
    for _, m, _ in runs:
        b = m.get("bootstrap") or {}
        if "level" in b:
            return f"{float(b['level']):.0%} percentile ({int(b.get('n_boot', 0))} resamples)"
    return "percentile"


def write_report(
    out_dir: Path,
    runs: Sequence[tuple[str, dict, pd.DataFrame]],
    codes: Sequence[str],
    *,
    title: str,
    comparison: pd.DataFrame | None = None,
    meta: dict | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (creating the directory) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    page = render_html(runs, codes, title=title, comparison=comparison, meta=meta)
    path.write_text(page, encoding="utf-8")
    return path
