"""The terminal table and the HTML report: right numbers, hostile text escaped, file written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.metrics import compare_runs, compute_metrics
from harness.report import confusion_svg, format_table, misclassified, render_html, write_report

CODES = ["A", "B"]
NA = pd.NA
EVIL = "<script>alert('x')</script> & \"quoted\""


def frame() -> pd.DataFrame:
    """Five items. A: TP c1, FP c2, FN c3, TN c4 c5 -> P 0.5, R 0.5, F1 0.5.

    B: FN c2 (NA pred), TN c1 c3 c5, unknown c4 -> P None (0/0), R 0.0, F1 0.0.
    """
    return pd.DataFrame(
        {
            "content_id": ["c1", "c2", "c3", "c4", "<b>c5</b>"],
            "outcome": ["ok", "ok", "ok", "refused", "ok"],
            "flagged": pd.array([True, True, False, NA, False], dtype="boolean"),
            "pred_A": pd.array([True, True, False, NA, False], dtype="boolean"),
            "pred_B": pd.array([False, NA, False, NA, False], dtype="boolean"),
            "gold_A": pd.array([1, 0, 1, 0, 0], dtype="Int8"),
            "gold_B": pd.array([0, 1, 0, NA, 0], dtype="Int8"),
            "gold_any": pd.array([1, 1, 1, 0, 0], dtype="Int8"),
            "text": ["fine", "x" * 500, EVIL, "ok", "plain"],
            "rationale": ["", "looked bad", "<img src=x onerror=alert(1)>", "", ""],
        }
    )


def test_format_table_numbers() -> None:
    m = compute_metrics(frame(), CODES, n_boot=50)
    out = format_table([("base", m)], CODES)
    lines = out.splitlines()
    row_a = next(line for line in lines if line.startswith("A "))
    assert "0.500" in row_a and row_a.rstrip().endswith("5")
    row_b = next(line for line in lines if line.startswith("B "))
    assert row_b.split("|")[1].split() == ["-", "0.000", "0.000", "4"]
    for label in ("any", "macro", "micro"):
        assert any(line.startswith(label) for line in lines)
    assert "outcomes [base]: ok=4 unparsable=0 refused=1 error=0 (n=5)" in out


def test_format_table_two_runs_side_by_side() -> None:
    m1 = compute_metrics(frame(), CODES, n_boot=0)
    f2 = frame()
    f2["pred_A"] = pd.array([True, False, True, False, False], dtype="boolean")  # A perfect
    m2 = compute_metrics(f2, CODES, n_boot=0)
    out = format_table([("before", m1), ("after", m2)], CODES)
    lines = out.splitlines()
    assert "before" in lines[0] and "after" in lines[0]
    assert lines[0].index("before") < lines[0].index("after")
    row_a = next(line for line in lines if line.startswith("A "))
    left, right = row_a.split("|")[1:3]
    assert left.split()[:3] == ["0.500", "0.500", "0.500"]
    assert right.split()[:3] == ["1.000", "1.000", "1.000"]
    assert "outcomes [before]" in out and "outcomes [after]" in out


def test_confusion_svg() -> None:
    svg = confusion_svg(compute_metrics(frame(), CODES, n_boot=0), CODES)
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    for word in ("TP", "FP", "FN", "TN", ">A<", ">B<", ">any<"):
        assert word in svg


def test_misclassified_rows() -> None:
    miss = misclassified(frame(), CODES)
    # c1 all right; c2 FP on A and FN on B; c3 FN on A and any; c4, c5 right
    assert miss["content_id"].tolist() == ["c2", "c3"]
    assert miss.iloc[0]["false_alarms"] == "A" and miss.iloc[0]["missed"] == "B"
    assert miss.iloc[1]["missed"] == "A, any"


def test_render_html_escapes_and_has_parts() -> None:
    f1 = frame()
    f2 = frame()
    f2["pred_A"] = pd.array([True, False, True, False, False], dtype="boolean")
    m1, m2 = compute_metrics(f1, CODES, n_boot=50), compute_metrics(f2, CODES, n_boot=50)
    page = render_html(
        [("run <1>", m1, f1), ("run 2", m2, f2)],
        CODES,
        title="Report <script>",
        comparison=compare_runs(f1, f2, CODES),
        meta={"model": EVIL, "prompt_versions": ["abc", "<def>"], "seconds": 1.5},
    )
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<img" not in page and "&lt;img src=x" in page
    assert "<b>c5</b>" not in page
    assert "run &lt;1&gt;" in page
    assert "<svg" in page
    assert "F1 side by side" in page
    assert "What changed between runs" in page and "toward gold" in page
    assert "x" * 200 + "…" in page and "x" * 201 not in page  # text cut to 200 chars
    assert "0.500" in page and "1.000" in page
    assert "<html" in page and "</html>" in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def test_render_html_single_run_no_comparison() -> None:
    f = frame()
    page = render_html([("only", compute_metrics(f, CODES, n_boot=0), f)], CODES, title="t")
    assert "F1 side by side" not in page and "What changed" not in page
    assert "Misclassified items (2)" in page


def test_write_report(tmp_path: Path) -> None:
    f = frame()
    path = write_report(
        tmp_path / "out" / "nested",
        [("only", compute_metrics(f, CODES, n_boot=20), f)],
        CODES,
        title="written",
        meta={"run_id": "r1"},
    )
    assert path == tmp_path / "out" / "nested" / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "written" in text and "r1" in text
