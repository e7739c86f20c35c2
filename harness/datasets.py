"""Load labelled moderation data into one canonical DataFrame.

Why this module exists: evaluation data arrives as CSV, JSON lines (often gzipped), JSON or
parquet files, or as a DataFrame built in a notebook, each with its own column names and label
conventions. Everything downstream (runner, metrics, reports) should see one shape:

    content_id (str, unique) | content_type (str) | text (str) | gold_<CODE>... (Int8) | gold_any (Int8)

Gold labels are pandas nullable ``Int8``: 1, 0 or <NA>. <NA> means UNKNOWN, never "not
harmful": the OpenAI moderation set leaves a key out when a category was not annotated, and a
metric must skip those rows rather than count them as negatives. Bad input fails here, before
it costs model calls, with a DatasetError naming the row (file line, or DataFrame index label),
the column and the problem.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.schema import DEFAULT_TAXONOMY, Item

__all__ = ["DatasetError", "iter_items", "load_dataset", "sanitize_text"]

TEXT_NAMES: tuple[str, ...] = ("text", "prompt", "content", "comment_text", "body")
ID_NAMES: tuple[str, ...] = ("content_id", "id")
TYPE_NAMES: tuple[str, ...] = ("content_type", "type")
BASE_COLUMNS: tuple[str, ...] = ("content_id", "content_type", "text")
SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz",
                             ".json", ".parquet")

# Values of XSTest's `type` column: prompt families, not a content type such as "comment".
_XSTEST_TYPES = frozenset({
    "homonyms", "figurative_language", "safe_targets", "safe_contexts", "definitions",
    "real_group_nons_discr", "nons_group_real_discr", "historical_events", "privacy_public",
    "privacy_fictional", "contrast_homonyms", "contrast_figurative_language",
    "contrast_safe_targets", "contrast_safe_contexts", "contrast_definitions", "contrast_discr",
    "contrast_historical_events", "contrast_privacy",
})
_UNKNOWN_WORDS = frozenset({"", "na", "n/a", "nan", "null", "none"})
_STR_LABELS = {"1": 1, "1.0": 1, "true": 1, "0": 0, "0.0": 0, "false": 0}
_SAFE_LABELS = {"unsafe": 1, "safe": 0}
_BAD = -2  # internal marker of an unacceptable label value; -1 marks unknown


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the row, the column and the problem."""


# ---- text -------------------------------------------------------------------------------------

def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def sanitize_text(text: object) -> str:
    """Text safe to JSON-encode and send: None/NaN -> "", non-str -> str(), lone surrogates ->
    U+FFFD, NUL characters removed. Everything else is returned unchanged."""
    if _is_missing(text):
        return ""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", "replace")
    elif not isinstance(text, str):
        text = str(text)
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Joins a surrogate pair into its character; a lone surrogate becomes U+FFFD.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


# ---- reading ----------------------------------------------------------------------------------

class _Raw:
    """Source columns as object arrays, plus how to name a row in an error message."""

    def __init__(self, frame: pd.DataFrame, where: Callable[[int], str], source: str) -> None:
        self.frame = frame
        self.where = where
        self.source = source

    def fail(self, pos: int | None, message: str) -> DatasetError:
        place = f"{self.source}: " + (f"{self.where(pos)}: " if pos is not None else "")
        return DatasetError(place + message)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return "".join(path.suffixes[-2:]).lower() or "(none)"


def _object_frame(columns: Sequence[str], data: Mapping[str, Sequence[Any]], n: int) -> pd.DataFrame:
    """Object-dtype columns: no type inference, so ids like 007 or 2**60 survive unchanged."""
    arrays = {}
    for col in columns:
        arr = np.empty(n, dtype=object)
        arr[:] = list(data[col])
        arrays[col] = arr
    return pd.DataFrame(arrays, index=pd.RangeIndex(n), dtype=object)


def _line_locator(lines: Sequence[int], word: str = "line") -> Callable[[int], str]:
    return lambda pos: f"{word} {lines[pos]}"


def _read_jsonl(path: Path, gz: bool, limit: int | None) -> _Raw:
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    src = str(path)
    try:
        fh = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115 - closed below
        with fh:
            for lineno, raw in enumerate(fh, 1):
                if limit is not None and len(records) >= limit:
                    break
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise DatasetError(f"{src}: line {lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{src}: line {lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
                if not isinstance(obj, dict):
                    raise DatasetError(f"{src}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
                records.append(obj)
                lines.append(lineno)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{src}: cannot read the file ({exc})") from exc
    return _records_raw(records, _line_locator(lines), src)


def _records_raw(records: list[dict[str, Any]], where: Callable[[int], str], src: str) -> _Raw:
    columns: dict[str, None] = {}
    for rec in records:
        for key in rec:
            columns.setdefault(key, None)
    data = {c: [rec.get(c) for rec in records] for c in columns}
    return _Raw(_object_frame(list(columns), data, len(records)), where, src)


def _read_json(path: Path, limit: int | None) -> _Raw:
    src = str(path)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{src}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{src}: line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
    if not isinstance(data, list):
        raise DatasetError(f"{src}: expected a JSON list of objects, got {type(data).__name__}")
    if limit is not None:
        data = data[:limit]
    for pos, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DatasetError(f"{src}: item {pos + 1}: expected a JSON object, got {type(obj).__name__}")
    return _records_raw(data, lambda pos: f"item {pos + 1}", src)


def _read_csv(path: Path, gz: bool, limit: int | None) -> _Raw:
    src = str(path)
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # moderation texts can exceed the 128 KiB default
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    reader: Any = None
    try:
        fh = gzip.open(path, "rt", encoding="utf-8-sig", newline="") if gz \
            else open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
        with fh:
            reader = csv.reader(fh)
            end = 0
            for rec in reader:
                start, end = end + 1, reader.line_num
                if not rec:
                    continue
                if header is None:
                    header = rec
                    dupes = sorted({h for h in rec if rec.count(h) > 1})
                    if dupes:
                        raise DatasetError(f"{src}: line {start}: duplicate column names {dupes}")
                    continue
                if limit is not None and len(rows) >= limit:
                    break
                if len(rec) != len(header):
                    raise DatasetError(f"{src}: line {start}: expected {len(header)} fields like the "
                                       f"header, found {len(rec)} (an unclosed quote?)")
                rows.append(rec)
                lines.append(start)
    except csv.Error as exc:
        raise DatasetError(f"{src}: line {reader.line_num if reader else 1}: not valid CSV ({exc})") from exc
    except UnicodeDecodeError as exc:
        near = reader.line_num + 1 if reader else 1
        raise DatasetError(f"{src}: near line {near}: not valid UTF-8 ({exc.reason})") from exc
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{src}: cannot read the file ({exc})") from exc
    finally:
        csv.field_size_limit(old_limit)
    if header is None:
        raise DatasetError(f"{src}: empty file, no header row")
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    data = dict(zip(header, columns, strict=True))
    return _Raw(_object_frame(header, data, len(rows)), _line_locator(lines), src)


def _read_parquet(path: Path, limit: int | None) -> _Raw:
    src = str(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DatasetError(f"{src}: cannot read parquet ({exc})") from exc
    return _frame_raw(frame, limit, src, lambda pos: f"row {pos + 1}")


def _frame_raw(df: pd.DataFrame, limit: int | None, src: str,
               where: Callable[[int], str] | None = None) -> _Raw:
    if limit is not None:
        df = df.iloc[:limit]
    names = [str(c) for c in df.columns]
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise DatasetError(f"{src}: duplicate column names {dupes}")
    data = {name: df.iloc[:, j].to_numpy(dtype=object) for j, name in enumerate(names)}
    index = df.index
    if where is None:
        def where(pos: int) -> str:
            return f"index {index[pos]!r}"
    return _Raw(_object_frame(names, data, len(df)), where, src)


def _read(source: str | Path | pd.DataFrame, limit: int | None) -> _Raw:
    if isinstance(source, pd.DataFrame):
        return _frame_raw(source, limit, "DataFrame")
    if not isinstance(source, str | Path):
        raise DatasetError(f"source: expected a file path or a DataFrame, got {type(source).__name__}")
    path = Path(source)
    suffix = _suffix(path)
    if suffix not in SUFFIXES:
        raise DatasetError(f"{path}: unknown file type {suffix!r}; expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    if suffix in (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz"):
        raw = _read_jsonl(path, suffix.endswith(".gz"), limit)
    elif suffix in (".csv", ".csv.gz"):
        raw = _read_csv(path, suffix.endswith(".gz"), limit)
    elif suffix == ".json":
        raw = _read_json(path, limit)
    else:
        raw = _read_parquet(path, limit)
    if len(raw.frame) == 0:
        raise DatasetError(f"{path}: no records")
    return raw


# ---- columns ----------------------------------------------------------------------------------

def _check_codes(codes: Sequence[str] | None) -> list[str]:
    out = list(DEFAULT_TAXONOMY.codes if codes is None else codes)
    if isinstance(codes, str) or not out:
        raise DatasetError(f"codes: expected a non-empty list of category codes, got {codes!r}")
    bad = [c for c in out if not isinstance(c, str) or not c or c == "any" or c in BASE_COLUMNS]
    if bad:
        raise DatasetError(f"codes: unusable category codes {bad!r}")
    dupes = sorted({c for c in out if out.count(c) > 1})
    if dupes:
        raise DatasetError(f"codes: duplicate category codes {dupes}")
    return out


def _non_missing_strings(values: np.ndarray) -> set[str]:
    return {str(v).strip().lower() for v in pd.unique(values[~pd.isna(values)]) if str(v).strip()}


def _is_safe_unsafe(values: np.ndarray) -> bool:
    try:
        seen = _non_missing_strings(values)
    except TypeError:  # unhashable values (lists from JSON): not an xstest label column
        return False
    return bool(seen) and seen <= set(_SAFE_LABELS)


def _is_xstest_type(values: np.ndarray) -> bool:
    try:
        seen = _non_missing_strings(values)
    except TypeError:
        return False
    return any(v in _XSTEST_TYPES or v.startswith("contrast_") for v in seen)


def _resolve(raw: _Raw, mapping: Mapping[str, str] | None, codes: list[str]) -> dict[str, str]:
    """Role (content_id, content_type, text, any, or a code) -> source column."""
    cols = list(raw.frame.columns)
    roles: dict[str, str] = {}
    for src, dst in (mapping or {}).items():
        if src not in cols:
            raise raw.fail(None, f"columns: {src!r} is not a column of the data; found {cols}")
        role = dst[5:] if isinstance(dst, str) and dst.startswith("gold_") else dst
        if role not in (*BASE_COLUMNS, "any", *codes):
            raise raw.fail(None, f"columns: cannot map {src!r} to {dst!r}; targets are "
                                 f"{', '.join((*BASE_COLUMNS, 'any', *codes))}")
        if role in roles:
            raise raw.fail(None, f"columns: both {roles[role]!r} and {src!r} map to {role!r}")
        roles[role] = src

    def free(name: str) -> bool:
        return name in cols and name not in roles.values()

    def column(name: str) -> np.ndarray:
        return raw.frame[name].to_numpy(dtype=object)

    if "text" not in roles:
        found = next((c for c in TEXT_NAMES if free(c)), None)
        if found is None:
            raise raw.fail(None, f"no text column: found columns {cols}; accepted names are "
                                 f"{', '.join(TEXT_NAMES)}; or map one with columns={{'mycol': 'text'}}")
        roles["text"] = found
    if "content_id" not in roles:
        found = next((c for c in ID_NAMES if free(c)), None)
        if found:
            roles["content_id"] = found
    if "any" not in roles:
        if free("gold_any"):
            roles["any"] = "gold_any"
        elif free("label"):  # an overall label (xstest: safe/unsafe); a bad value is an error, not ignored
            roles["any"] = "label"
    xstest = roles.get("any") == "label"
    if "content_type" not in roles:
        if free("content_type"):
            roles["content_type"] = "content_type"
        elif free("type") and not xstest and not _is_xstest_type(column("type")):
            roles["content_type"] = "type"
    for code in codes:
        if code in roles:
            continue
        found_cols = [c for c in (code, f"gold_{code}") if free(c)]
        if len(found_cols) > 1:
            raise raw.fail(None, f"both {found_cols[0]!r} and {found_cols[1]!r} could be the labels of "
                                 f"{code!r}; choose one with columns={{{found_cols[0]!r}: {code!r}}}")
        if found_cols:
            roles[code] = found_cols[0]
    return roles


# ---- values -----------------------------------------------------------------------------------

def _label_of(value: object, allow_safe: bool) -> int:
    """1, 0, -1 (unknown) or _BAD."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer):
        return int(value) if value in (0, 1) else _BAD
    if isinstance(value, float | np.floating):
        return int(value) if value in (0.0, 1.0) else _BAD
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _STR_LABELS:
            return _STR_LABELS[word]
        if word in _UNKNOWN_WORDS:
            return -1
        if allow_safe and word in _SAFE_LABELS:
            return _SAFE_LABELS[word]
    return _BAD


def _labels(raw: _Raw, col: str, role: str) -> np.ndarray:
    """int8 array: 1, 0 or -1 for unknown. Raises on the first unacceptable value."""
    series = raw.frame[col]
    values = series.to_numpy(dtype=object)
    missing = pd.isna(values)
    out = np.full(len(values), -1, dtype=np.int8)
    allow_safe = role == "any"
    cache: dict[tuple[type, object], int] = {}
    first_bad, n_bad = -1, 0
    for pos in np.flatnonzero(~missing):
        value = values[pos]
        try:
            key = (type(value), value)
            label = cache.get(key)
            if label is None:
                label = cache[key] = _label_of(value, allow_safe)
        except TypeError:  # unhashable
            label = _BAD
        if label == _BAD:
            n_bad += 1
            if first_bad < 0:
                first_bad = pos
            continue
        out[pos] = label
    if n_bad:
        target = "gold_any" if role == "any" else f"gold_{role}"
        accepted = "1/0, true/false" + (", unsafe/safe" if allow_safe else "") + " or empty for unknown"
        more = f" ({n_bad - 1} more rows in this column are invalid too)" if n_bad > 1 else ""
        raise raw.fail(int(first_bad), f"column {col!r} ({target}): invalid label "
                                       f"{values[first_bad]!r}; expected {accepted}{more}")
    return out


def _id_of(value: object) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return sanitize_text(value)


def _ids(raw: _Raw, col: str | None) -> list[str]:
    n = len(raw.frame)
    if col is None:
        width = max(5, len(str(n)))
        return [f"row-{i:0{width}d}" for i in range(1, n + 1)]
    ids = [_id_of(v) for v in raw.frame[col].to_numpy(dtype=object)]
    for pos, cid in enumerate(ids):
        if not cid.strip():
            raise raw.fail(pos, f"column {col!r} (content_id): empty id; every row needs a unique id "
                                f"(or drop the column to get generated ids)")
    dup = pd.Series(ids).duplicated(keep=False).to_numpy()
    if dup.any():
        groups: dict[str, list[int]] = {}
        for pos in np.flatnonzero(dup):
            groups.setdefault(ids[pos], []).append(int(pos))
        parts = []
        for cid, positions in list(groups.items())[:5]:
            rows = ", ".join(raw.where(p) for p in positions[:5]) + (", ..." if len(positions) > 5 else "")
            parts.append(f"{cid!r} ({rows})")
        more = f"; and {len(groups) - 5} more duplicated ids" if len(groups) > 5 else ""
        raise raw.fail(None, f"column {col!r} (content_id): duplicate ids {'; '.join(parts)}{more}")
    return ids


def _nullable(labels: np.ndarray) -> pd.arrays.IntegerArray:
    mask = labels < 0
    return pd.arrays.IntegerArray(np.where(mask, 0, labels).astype(np.int8), mask)


# ---- public -----------------------------------------------------------------------------------

def load_dataset(
    source: str | Path | pd.DataFrame,
    *,
    columns: Mapping[str, str] | None = None,
    codes: Sequence[str] | None = None,
    content_type: str = "text",
    limit: int | None = None,
) -> pd.DataFrame:
    """Read a labelled dataset (.csv, .jsonl, .jsonl.gz, .json, .parquet or a DataFrame) into
    the canonical DataFrame described in the module docstring.

    `columns` maps source column -> canonical name (content_id, content_type, text, any, or a
    category code); roles it does not cover are recognised by name. `content_type` fills rows
    without one. `limit` keeps the first N records (counted after blank lines).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 0):
        raise DatasetError(f"limit: expected a whole number >= 0 or None, got {limit!r}")
    code_list = _check_codes(codes)
    # limit=0 still reads one record, so a wrong path or column layout fails now, not later.
    raw = _read(source, None if limit is None else max(int(limit), 1))
    roles = _resolve(raw, columns, code_list)
    n = len(raw.frame)

    ids = _ids(raw, roles.get("content_id"))
    texts = [sanitize_text(v) for v in raw.frame[roles["text"]].to_numpy(dtype=object)]
    default_type = sanitize_text(content_type).strip() or "text"
    if "content_type" in roles:
        types = [sanitize_text(v).strip() or default_type
                 for v in raw.frame[roles["content_type"]].to_numpy(dtype=object)]
    else:
        types = [default_type] * n

    gold: dict[str, np.ndarray] = {}
    for code in code_list:
        col = roles.get(code)
        gold[code] = _labels(raw, col, code) if col else np.full(n, -1, dtype=np.int8)
    if "any" in roles:
        any_label = _labels(raw, roles["any"], "any")
    else:
        stacked = np.stack([gold[c] for c in code_list], axis=1)
        any_label = np.where((stacked == 1).any(axis=1), 1,
                             np.where((stacked == 0).all(axis=1), 0, -1)).astype(np.int8)

    data: dict[str, Any] = {"content_id": ids, "content_type": types, "text": texts}
    for code in code_list:
        data[f"gold_{code}"] = _nullable(gold[code])
    data["gold_any"] = _nullable(any_label)
    df = pd.DataFrame(data)
    if limit == 0:
        df = df.iloc[:0].copy()
    df.attrs["source"] = raw.source if isinstance(source, pd.DataFrame) else str(source)
    df.attrs["codes"] = list(code_list)
    df.attrs["columns"] = {src: role for role, src in roles.items()}
    return df


def iter_items(df: pd.DataFrame) -> Iterator[Item]:
    """One schema.Item per row of a canonical DataFrame; labels are {code: 1, 0 or None}."""
    missing = [c for c in ("content_id", "text") if c not in df.columns]
    if missing:
        raise DatasetError(f"iter_items: the DataFrame lacks column(s) {missing}; build it with load_dataset")
    present = [c[5:] for c in df.columns if isinstance(c, str) and c.startswith("gold_") and c != "gold_any"]
    order = [c for c in df.attrs.get("codes") or [] if c in present]
    codes = order + [c for c in present if c not in order]
    ids = df["content_id"].to_numpy(dtype=object)
    texts = df["text"].to_numpy(dtype=object)
    types = df["content_type"].to_numpy(dtype=object) if "content_type" in df.columns else None
    gold = [df[f"gold_{c}"].astype("Int8").to_numpy(dtype=object, na_value=None) for c in codes]
    for pos in range(len(df)):
        ctype = "text" if types is None or _is_missing(types[pos]) else str(types[pos]) or "text"
        labels = {c: (None if g[pos] is None else int(g[pos])) for c, g in zip(codes, gold, strict=True)}
        yield Item(_id_of(ids[pos]), sanitize_text(texts[pos]), ctype, labels)
