"""Rich HTML for plain notebook code: a verdict against its gold labels, a run, a comparison.

`show(obj)` displays a Verdict, a RunResult or anything else with IPython.display. The HTML
strings (`verdict_html`, `run_html`, `metrics_html`, `comparison_html`) are also what the
PromptLab widget shows. Items are moderation data and may carry hostile markup, so every
string from data goes through `html.escape`; only the markup built here is trusted.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from harness.metrics import comparison_summary
from harness.results import RunResult
from harness.schema import OUTCOMES, Verdict

__all__ = ["comparison_html", "gold_of", "metrics_html", "run_html", "show", "verdict_html"]

_TABLE = "border-collapse:collapse;font-size:12px;margin:4px 0"
_CELL = "border:1px solid #ddd;padding:2px 6px;text-align:left"
_NUM = _CELL.replace("text-align:left", "text-align:right") + ";font-variant-numeric:tabular-nums"
_BAD = "background:#fde2e2"
_GOOD = "background:#e6f4ea"
_OUTCOME_COLOURS = {"ok": "#17712b", "unparsable": "#a15c00", "refused": "#a15c00", "error": "#b02a2a"}


def _e(x: Any) -> str:
    return "" if x is None else html.escape(str(x), quote=True)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{float(x):.{digits}f}"


def _label(value: Any) -> int | None:
    """1, 0 or None from a gold value (1/0/True/False/NA/None)."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        return None
    return 1 if bool(value) else 0


def gold_of(row: Mapping[str, Any] | pd.Series, codes: Sequence[str]) -> dict[str, int | None]:
    """Gold labels of one canonical dataset row: {code: 1, 0 or None, ..., "any": ...}."""
    return {c: _label(row.get(f"gold_{c}")) for c in [*codes, "any"]}


def _mark(value: int | bool | None) -> str:
    if value is None:
        return "?"
    return "yes" if value else "no"


def verdict_html(verdict: Verdict, gold: Mapping[str, Any] | None = None, *,
                 codes: Sequence[str] | None = None, text: str | None = None) -> str:
    """One verdict: outcome, per-category gold vs predicted (mismatches highlighted), commentary,
    rationale, cached or not, latency and tokens."""
    gold = dict(gold or {})
    codes = list(codes or [c for c in verdict.categories] or [c for c in gold if c != "any"])
    colour = _OUTCOME_COLOURS.get(verdict.outcome, "#333")
    flagged = verdict.flagged
    gold_any = _label(gold.get("any")) if "any" in gold else None
    wrong_any = gold_any is not None and bool(gold_any) != bool(flagged)
    n_wrong = 0
    rows = []
    for code in [*codes, "any"]:
        pred = flagged if code == "any" else verdict.categories.get(code)
        g = _label(gold.get(code)) if code in gold else None
        mismatch = g is not None and bool(g) != bool(pred)
        n_wrong += mismatch and code != "any"
        style = _BAD if mismatch else (_GOOD if g is not None and g == 1 and pred else "")
        score = verdict.scores.get(code) if code != "any" else None
        rows.append(
            f'<tr class="{"mismatch" if mismatch else "match"}" style="{style}">'
            f'<th style="{_CELL}">{_e(code)}</th><td style="{_CELL}">{_mark(g)}</td>'
            f'<td style="{_CELL}">{_mark(pred)}</td><td style="{_NUM}">{_fmt(score, 2)}</td>'
            f'<td style="{_CELL}">{"✗ mismatch" if mismatch else ""}</td></tr>'
        )
    if not gold:
        summary = ""
    elif wrong_any or n_wrong:
        summary = (f' <span class="harness-wrong" style="color:#b02a2a">· disagrees with gold '
                   f'({n_wrong} categor{"y" if n_wrong == 1 else "ies"}'
                   f'{", overall" if wrong_any else ""})</span>')
    else:
        summary = ' <span class="harness-right" style="color:#17712b">· agrees with gold</span>'
    u = verdict.usage
    facts = [
        f"cached: <b>{'yes' if verdict.cached else 'no'}</b>",
        f"latency: <b>{verdict.latency_s:.2f} s</b>",
        f"tokens: <b>{u.prompt_tokens}</b> in / <b>{u.completion_tokens}</b> out",
        f"tries: {verdict.tries}",
    ]
    if verdict.truncated:
        facts.append("<b>text truncated</b> (max_text_chars)")
    if verdict.model:
        facts.append(f"model: <code>{_e(verdict.model)}</code>")
    if verdict.prompt_version:
        facts.append(f"prompt: <code>{_e(verdict.prompt_version)}</code>")
    parts = [
        '<div class="harness-verdict-body">',
        f'<div><b>{_e(verdict.content_id)}</b> · outcome <b class="harness-outcome" '
        f'style="color:{colour}">{_e(verdict.outcome)}</b> · flagged <b>{_mark(flagged)}</b>'
        f"{summary}</div>",
    ]
    if text is not None:
        parts.append(f'<div style="white-space:pre-wrap;color:#444;margin:4px 0">{_e(text)}</div>')
    parts.append(
        f'<table style="{_TABLE}"><tr><th style="{_CELL}">category</th><th style="{_CELL}">gold</th>'
        f'<th style="{_CELL}">predicted</th><th style="{_CELL}">score</th><th style="{_CELL}"></th></tr>'
        + "".join(rows) + "</table>"
    )
    if verdict.commentary:
        parts.append(f"<div><i>commentary:</i> {_e(verdict.commentary)}</div>")
    if verdict.rationale:
        parts.append(f"<div><i>rationale:</i> {_e(verdict.rationale)}</div>")
    if verdict.error:
        parts.append(f'<div style="color:#b02a2a"><i>error:</i> {_e(verdict.error)}</div>')
    parts.append(f'<div style="color:#555;font-size:12px">{" · ".join(facts)}</div></div>')
    return "".join(parts)


def _ci(block: Mapping[str, Any], key: str) -> str:
    ci = (block.get("ci") or {}).get(key)
    if not ci:
        return ""
    return f' <span style="color:#777;font-size:10px">[{_fmt(ci[0], 2)}, {_fmt(ci[1], 2)}]</span>'


def metrics_html(metrics: Mapping[str, Any], codes: Sequence[str]) -> str:
    """Per-category precision, recall and F1 (with bootstrap intervals), support and counts."""
    head = "".join(f'<th style="{_CELL}">{h}</th>' for h in
                   ("label", "precision", "recall", "F1", "support", "TP", "FP", "FN", "TN", "unknown"))
    cats = metrics.get("categories", {})
    blocks = [(c, cats.get(c, {})) for c in codes]
    blocks += [(k, metrics.get(k) or {}) for k in ("any", "macro", "micro")]
    body = []
    for label, b in blocks:
        support = b.get("support")
        if support is None and "tp" in b:
            support = sum(int(b.get(k, 0)) for k in ("tp", "fp", "fn", "tn"))
        sep = ";border-top:2px solid #aaa" if label == "macro" else ""
        cells = "".join(f'<td style="{_NUM}{sep}">{_fmt(b.get(k))}{_ci(b, k)}</td>'
                        for k in ("precision", "recall", "f1"))
        counts = "".join(f'<td style="{_NUM}{sep}">{"-" if b.get(k) is None else int(b[k])}</td>'
                         for k in ("tp", "fp", "fn", "tn", "unknown"))
        body.append(f'<tr><th style="{_CELL}{sep}">{_e(label)}</th>{cells}'
                    f'<td style="{_NUM}{sep}">{"-" if support is None else support}</td>{counts}</tr>')
    return f'<table class="harness-metrics" style="{_TABLE}"><tr>{head}</tr>{"".join(body)}</table>'


def outcomes_html(outcomes: Mapping[str, int]) -> str:
    total = sum(int(v) for v in outcomes.values())
    cells = "".join(f'<td style="{_NUM}">{int(outcomes.get(k, 0))}</td>' for k in OUTCOMES)
    head = "".join(f'<th style="{_CELL}">{k}</th>' for k in OUTCOMES)
    return (f'<table class="harness-outcomes" style="{_TABLE}"><tr>{head}<th style="{_CELL}">total</th></tr>'
            f'<tr>{cells}<td style="{_NUM}">{total}</td></tr></table>')


def run_html(result: RunResult, metrics: Mapping[str, Any] | None = None) -> str:
    """A run: what was run, outcome counts and the per-category metrics table."""
    metrics = metrics or result.metrics()
    head = (f"<div><b>{_e(result.spec.label)}</b> on <code>{_e(result.dataset)}</code> · model "
            f"<code>{_e(result.model)}</code> · {len(result.items)} items in {result.elapsed_s:.1f} s · "
            f"cache {result.cache_hits} hits / {result.cache_misses} misses</div>")
    return (f'<div class="harness-run">{head}{outcomes_html(metrics.get("outcomes", {}))}'
            f"{metrics_html(metrics, result.codes)}</div>")


def comparison_html(runs: Sequence[tuple[str, Mapping[str, Any]]], flips: pd.DataFrame,
                    codes: Sequence[str], texts: Mapping[str, str] | None = None,
                    max_flips: int = 200) -> str:
    """Two runs side by side (P/R/F1 each, F1 delta) and the predictions that flipped."""
    (name_a, ma), (name_b, mb) = runs[0], runs[1]
    head = (f'<tr><th style="{_CELL}" rowspan="2">label</th>'
            f'<th style="{_CELL}" colspan="3">a: {_e(name_a)}</th>'
            f'<th style="{_CELL}" colspan="3">b: {_e(name_b)}</th><th style="{_CELL}" rowspan="2">Δ F1</th></tr><tr>'
            + "".join(f'<th style="{_CELL}">{h}</th>' for h in ("P", "R", "F1") * 2) + "</tr>")
    body = []
    for label in [*codes, "any", "macro", "micro"]:
        ba = (ma.get("categories", {}).get(label) if label in codes else ma.get(label)) or {}
        bb = (mb.get("categories", {}).get(label) if label in codes else mb.get(label)) or {}
        fa, fb = ba.get("f1"), bb.get("f1")
        delta = None if fa is None or fb is None else fb - fa
        colour = "" if not delta else ("color:#17712b" if delta > 0 else "color:#b02a2a")
        cells = "".join(f'<td style="{_NUM}">{_fmt(blk.get(k))}</td>'
                        for blk in (ba, bb) for k in ("precision", "recall", "f1"))
        body.append(f'<tr><th style="{_CELL}">{_e(label)}</th>{cells}'
                    f'<td style="{_NUM};{colour}">{"-" if delta is None else f"{delta:+.3f}"}</td></tr>')
    summary = comparison_summary(flips)
    t = summary["totals"]
    out = [
        f'<table class="harness-side-by-side" style="{_TABLE}">{head}{"".join(body)}</table>',
        f'<div class="harness-flip-summary"><b>{summary["n_flips"]}</b> prediction(s) flipped: '
        f'<span style="color:#17712b">{t["toward_gold"]} toward gold</span>, '
        f'<span style="color:#b02a2a">{t["away_from_gold"]} away from gold</span>, '
        f'{t["unknown_gold"]} with unknown gold (net {t["net"]:+d}).</div>',
    ]
    if len(flips):
        rows = []
        for r in flips.head(max_flips).itertuples(index=False):
            gold = "?" if pd.isna(r.gold) else str(int(r.gold))
            colour = {"toward_gold": "#17712b", "away_from_gold": "#b02a2a"}.get(str(r.direction), "#777")
            text = (texts or {}).get(str(r.content_id), "")
            text = text if len(text) <= 160 else text[:160] + "…"
            rows.append(
                f'<tr><td style="{_CELL}">{_e(r.content_id)}</td><td style="{_CELL}">{_e(r.label)}</td>'
                f'<td style="{_NUM}">{gold}</td><td style="{_NUM}">{int(bool(r.pred_a))}</td>'
                f'<td style="{_NUM}">{int(bool(r.pred_b))}</td>'
                f'<td style="{_CELL};color:{colour}">{_e(str(r.direction).replace("_", " "))}</td>'
                f'<td style="{_CELL};max-width:420px">{_e(text)}</td></tr>'
            )
        more = f" (first {max_flips} of {len(flips)})" if len(flips) > max_flips else ""
        out.append(
            f'<div><b>Flips{more}</b></div><table class="harness-flips" style="{_TABLE}"><tr>'
            + "".join(f'<th style="{_CELL}">{h}</th>' for h in
                      ("content_id", "label", "gold", "pred a", "pred b", "direction", "text"))
            + "</tr>" + "".join(rows) + "</table>"
        )
    return "".join(out)


def show(obj: Any, gold: Mapping[str, Any] | None = None) -> None:
    """Display a Verdict (against `gold` when given) or a RunResult as HTML; anything else as is."""
    from IPython.display import HTML, display

    if isinstance(obj, Verdict):
        display(HTML(verdict_html(obj, gold)))
    elif isinstance(obj, RunResult):
        display(HTML(run_html(obj)))
    else:
        display(obj)
