"""Turn a moderation model's free text into a verdict, tolerating the ways models get it wrong.

The prompt asks for a sentence or two of commentary followed by a JSON object, but real models
wrap the JSON in code fences, put prose after it, emit several objects, use Python literals,
single quotes, trailing commas or comments, or run out of tokens halfway through. A research
run must record *something* for every item, so `parse_verdict` never raises on model output:
anything it cannot read becomes an "unparsable" (or "refused") result with a short reason.

How it works: strict `json` is tried first at each candidate `{` (scanning backwards from the
end of the text, so the last verdict wins); when that fails, a small lenient recursive-descent
parser repairs the common mistakes. The work is bounded (a fixed number of candidate starts, a
character cap per candidate and a global step budget), so hostile or huge inputs stay fast.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ParsedVerdict", "parse_verdict"]

# Bounds that keep parsing linear-ish on hostile input.
MAX_CANDIDATES = 50  # only the last N `{` positions are tried as object starts
MAX_OBJECT_CHARS = 20_000  # the lenient parser looks at most this far from a start
MAX_DEPTH = 64  # nesting deeper than this is not a verdict
STEP_BUDGET = 60_000  # lenient-parser tokens per parse_verdict call, across all candidates
REFUSAL_WINDOW = 1_000  # refusal phrases are looked for in the first N characters

REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bi'?m sorry\b",
    r"\bi am sorry\b",
    r"\bi apologi[sz]e\b",
    r"\bi (?:can'?t|cannot|can not|won'?t|will not) (?:help|assist|comply|provide|do that|fulfil|support)",
    r"\bi'?m (?:not able|unable) to\b",
    r"\bi am (?:not able|unable) to\b",
    r"\bas an ai\b",
)
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)

_TRUE_WORDS = {"true", "yes", "y", "1"}
_FALSE_WORDS = {"false", "no", "n", "0"}


@dataclass
class ParsedVerdict:
    """The parser's reading of one model answer; `error` is None exactly when outcome is "ok"."""

    outcome: str  # "ok" | "unparsable" | "refused"
    flagged: bool | None
    categories: dict[str, bool | None]
    scores: dict[str, float] = field(default_factory=dict)
    commentary: str = ""
    rationale: str = ""
    error: str | None = None


def parse_verdict(
    text: str | None, codes: Sequence[str], refusal: str | None = None
) -> ParsedVerdict:
    """Read a verdict for `codes` from model `text`; `refusal` is the API's refusal field.

    Never raises for any `text`: failures come back as outcome "unparsable" or "refused".
    """
    code_list = _clean_codes(codes)
    try:
        return _parse(_as_text(text), code_list, refusal)
    except Exception as exc:  # a bug here must not kill a run; report it as unparsable
        return _failure("unparsable", code_list, f"parser error: {type(exc).__name__}: {exc}")


# ---- top level ------------------------------------------------------------------------------


def _parse(text: str, codes: list[str], refusal: Any) -> ParsedVerdict:
    refusal_text = _as_text(refusal).strip()
    if refusal_text:
        return _failure(
            "refused", codes, f"model refused: {_clean(refusal_text[:200])}", _clean(text.strip())
        )
    if not text.strip():
        return _failure("unparsable", codes, "empty model output")

    chosen: tuple[ParsedVerdict, int, int] | None = None  # last verdict-like, usable or not
    saw_json = False
    budget = _Budget(STEP_BUDGET)
    for start in _last_positions(text, "{", MAX_CANDIDATES):
        decoded = _decode_at(text, start, budget)
        if decoded is None:
            if budget.exhausted:
                break
            continue
        obj, end = decoded
        saw_json = saw_json or (isinstance(obj, dict) and bool(obj))
        if not (isinstance(obj, dict) and _looks_like_verdict(obj)):
            continue
        verdict = _interpret(obj, codes)
        if chosen is None or (chosen[0].outcome != "ok" and verdict.outcome == "ok"):
            chosen = (verdict, start, end)
        if verdict.outcome == "ok":
            break

    if chosen is None:
        commentary = _clean(text.strip())
        if _looks_like_refusal(text):
            return _failure(
                "refused", codes, f"model refused: {_clean(text.strip()[:200])}", commentary
            )
        reason = (
            "JSON found but no verdict object (no 'flagged' or 'categories' key)"
            if saw_json
            else "no JSON object found in model output"
        )
        return _failure("unparsable", codes, reason, commentary)

    verdict, start, end = chosen
    verdict.commentary = _clean(_remove_span(text, start, end))
    return verdict


def _failure(outcome: str, codes: list[str], error: str, commentary: str = "") -> ParsedVerdict:
    return ParsedVerdict(
        outcome=outcome,
        flagged=None,
        categories=dict.fromkeys(codes),
        scores={},
        commentary=commentary,
        rationale="",
        error=error,
    )


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _clean_codes(codes: Sequence[str]) -> list[str]:
    """Requested codes as strings, de-duplicated, in their given order."""
    if isinstance(codes, str):
        codes = [codes]
    out: list[str] = []
    for code in codes or ():
        code = str(code)
        if code not in out:
            out.append(code)
    return out


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(s: str) -> str:
    """Replace lone surrogates with U+FFFD so the result can always be encoded as UTF-8."""
    if not _SURROGATE.search(s):
        return s
    return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _looks_like_refusal(text: str) -> bool:
    window = text[:REFUSAL_WINDOW].replace("\u2019", "'").replace("\u2018", "'")
    return _REFUSAL.search(window) is not None


# ---- finding the object -----------------------------------------------------------------------


def _last_positions(text: str, char: str, limit: int) -> list[int]:
    """Positions of `char` in `text`, last first, at most `limit` of them."""
    out: list[int] = []
    pos = len(text)
    while len(out) < limit:
        pos = text.rfind(char, 0, pos)
        if pos < 0:
            break
        out.append(pos)
    return out


def _decode_at(text: str, start: int, budget: _Budget) -> tuple[Any, int] | None:
    """The value starting at `start` and the index after it: strict JSON first, then repaired."""
    try:
        return json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        pass
    window = text[start : start + MAX_OBJECT_CHARS]
    try:
        value, end = _Lenient(window, budget).parse()
    except _Fail:
        return None
    return value, start + end


_FENCE_OPEN = re.compile(r"```[ \t]*[\w+.-]*[ \t]*\r?\n?[ \t]*\Z")
_FENCE_CLOSE = re.compile(r"[ \t]*\r?\n?[ \t]*```")


def _remove_span(text: str, start: int, end: int) -> str:
    """`text` without [start, end) and the code fence around it, prose joined by a newline."""
    opening = _FENCE_OPEN.search(text, max(0, start - 40), start)
    if opening:
        start = opening.start()
        closing = _FENCE_CLOSE.match(text, end)
        if closing:
            end = closing.end()
    parts = (text[:start].strip(), text[end:].strip())
    return "\n".join(p for p in parts if p)


# ---- interpreting the object ------------------------------------------------------------------


def _looks_like_verdict(obj: dict[Any, Any]) -> bool:
    keys = {str(k).strip().lower() for k in obj}
    return "flagged" in keys or "categories" in keys


def _lower_keys(obj: dict[Any, Any]) -> dict[str, Any]:
    return {str(k).strip().lower(): v for k, v in obj.items()}


def _interpret(obj: dict[Any, Any], codes: list[str]) -> ParsedVerdict:
    top = _lower_keys(obj)
    categories, category_scores = _read_categories(top.get("categories"), codes)
    scores = _read_scores(top.get("scores"), codes)
    for code, score in category_scores.items():
        scores.setdefault(code, score)

    flagged = _as_bool(top.get("flagged"))
    if flagged is None:
        known = [v for v in categories.values() if v is not None]
        if any(known):
            flagged = True
        elif known:
            flagged = False

    rationale = top.get("rationale")
    rationale = "" if rationale is None else _clean(_as_text(rationale).strip())

    if flagged is None and all(v is None for v in categories.values()):
        error: str | None = "verdict JSON has no usable 'flagged' and none of the requested categories"
        outcome = "unparsable"
    else:
        error, outcome = None, "ok"
    return ParsedVerdict(outcome, flagged, categories, scores, "", rationale, error)


def _read_categories(
    raw: Any, codes: list[str]
) -> tuple[dict[str, bool | None], dict[str, float]]:
    """Category booleans per requested code, plus scores given as category values."""
    categories: dict[str, bool | None] = dict.fromkeys(codes)
    scores: dict[str, float] = {}
    by_lower = {c.lower(): c for c in codes}
    if isinstance(raw, list | tuple):  # ["V", "HR"]: the codes that apply
        listed = {str(x).strip().lower() for x in raw if isinstance(x, str)}
        return {c: c.lower() in listed for c in codes}, scores
    if not isinstance(raw, dict):
        return categories, scores
    for key, value in raw.items():
        code = by_lower.get(str(key).strip().lower())
        if code is None:
            continue
        categories[code] = _as_bool(value)
        if isinstance(value, float) and 0.0 <= value <= 1.0:
            scores[code] = value
    return categories, scores


def _read_scores(raw: Any, codes: list[str]) -> dict[str, float]:
    scores: dict[str, float] = {}
    if not isinstance(raw, dict):
        return scores
    by_lower = {c.lower(): c for c in codes}
    for key, value in raw.items():
        code = by_lower.get(str(key).strip().lower())
        number = _as_number(value)
        if code is not None and number is not None:
            scores[code] = min(1.0, max(0.0, number))
    return scores


def _as_number(value: Any) -> float | None:
    """A finite float from a number or numeric string; booleans and others are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def _as_bool(value: Any) -> bool | None:
    """True/False from booleans, 0/1, yes/no words or a score in [0, 1]; None otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    number = _as_number(value)
    if number is not None and 0.0 <= number <= 1.0:
        return number >= 0.5
    return None


# ---- lenient JSON ---------------------------------------------------------------------------


class _Fail(Exception):
    """The lenient parser gave up on this candidate."""


class _Budget:
    """Steps left for the lenient parser across all candidates of one call."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    @property
    def exhausted(self) -> bool:
        return self.left <= 0

    def tick(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _Fail("step budget exhausted")


_SKIP = re.compile(r"(?:\s+|//[^\n]*|/\*.*?(?:\*/|\Z))*", re.DOTALL)
# A bare word (unquoted key or value): runs up to punctuation, a newline or a comment.
_BARE = re.compile(r"""(?:[^\s,:{}\[\]"'/\u201c\u201d\u2018\u2019]|/(?![/*]))(?:[^,:{}\[\]"\n/]|/(?![/*]))*""")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_INT = re.compile(r"[-+]?\d+")
# Which characters may close a string opened by each quote (smart quotes are accepted too).
_CLOSERS = {
    '"': '"',
    "'": "'",
    "\u201c": "\u201d\u201c\"",
    "\u201d": "\u201d\"",
    "\u2018": "\u2019'",
    "\u2019": "\u2019'",
}
_STRING_STOPS = {q: re.compile("[\\\\" + re.escape(c) + "]") for q, c in _CLOSERS.items()}
# After a real closing quote comes punctuation, another quote, a comment or the end.
_AFTER_CLOSE = re.compile(r"""\s*(?:[,:}\]"'/\u201c\u201d\u2018\u2019]|\Z)""")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}
_LITERALS: dict[str, Any] = {
    "true": True, "false": False, "null": None, "none": None, "nil": None, "undefined": None,
}


class _Lenient:
    """A forgiving JSON reader: trailing commas, single or smart quotes, Python literals,
    unquoted keys, comments, unescaped inner quotes and a truncated end are all accepted."""

    def __init__(self, s: str, budget: _Budget) -> None:
        self.s = s
        self.i = 0
        self.budget = budget

    def parse(self) -> tuple[Any, int]:
        value = self._value(0)
        return value, self.i

    def _skip(self) -> None:
        m = _SKIP.match(self.s, self.i)
        if m:
            self.i = m.end()

    def _at_end(self) -> bool:
        return self.i >= len(self.s)

    def _value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _Fail("nested too deeply")
        self.budget.tick()
        self._skip()
        if self._at_end():
            return None
        c = self.s[self.i]
        if c == "{":
            return self._object(depth)
        if c == "[":
            return self._array(depth)
        if c in _CLOSERS:
            return self._string()
        return self._bare()

    def _object(self, depth: int) -> dict[str, Any]:
        self.i += 1
        obj: dict[str, Any] = {}
        while True:
            self.budget.tick()
            self._skip()
            if self._at_end():
                return obj  # truncated: close it
            c = self.s[self.i]
            if c == "}":
                self.i += 1
                return obj
            if c in ",]":  # extra comma, or a stray bracket
                self.i += 1
                continue
            key = self._value(depth + 1)
            self._skip()
            if self._at_end():
                return obj
            if self.s[self.i] not in ":=":
                continue  # a key without a value; drop it
            self.i += 1
            self._skip()
            if self._at_end():
                return obj
            if self.s[self.i] in ",}":
                continue  # `"key": ,`
            value = self._value(depth + 1)
            if isinstance(key, str | int | float | bool) or key is None:
                obj[str(key) if not isinstance(key, str) else key] = value

    def _array(self, depth: int) -> list[Any]:
        self.i += 1
        items: list[Any] = []
        while True:
            self.budget.tick()
            self._skip()
            if self._at_end():
                return items
            c = self.s[self.i]
            if c == "]":
                self.i += 1
                return items
            if c == "}":
                return items  # `[... }`: the bracket was forgotten; let the object close
            if c in ",:":
                self.i += 1
                continue
            items.append(self._value(depth + 1))

    def _string(self) -> str:
        quote = self.s[self.i]
        stops = _STRING_STOPS[quote]
        self.i += 1
        parts: list[str] = []
        while True:
            self.budget.tick()
            m = stops.search(self.s, self.i)
            if m is None:  # truncated inside the string
                parts.append(self.s[self.i :])
                self.i = len(self.s)
                return "".join(parts)
            parts.append(self.s[self.i : m.start()])
            if m.group() == "\\":
                self.i = self._escape(m.start(), parts)
                continue
            self.i = m.end()
            if _AFTER_CLOSE.match(self.s, self.i):
                return "".join(parts)
            parts.append(m.group())  # an unescaped quote inside the string

    def _escape(self, at: int, parts: list[str]) -> int:
        """Decode the escape at `at`, append it to `parts`, return the index after it."""
        nxt = self.s[at + 1 : at + 2]
        if nxt == "u":
            digits = self.s[at + 2 : at + 6]
            if re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                parts.append(chr(int(digits, 16)))
                return at + 6
        if not nxt:
            return at + 1
        parts.append(_ESCAPES.get(nxt, nxt))
        return at + 2

    def _bare(self) -> Any:
        m = _BARE.match(self.s, self.i)
        if m is None:  # a character that cannot start anything: skip it
            self.i += 1
            return None
        self.i = m.end()
        word = m.group().strip()
        lowered = word.lower()
        if lowered in _LITERALS:
            return _LITERALS[lowered]
        if _INT.fullmatch(word) and len(word) < 400:
            return int(word)
        if _NUMBER.fullmatch(word):
            return float(word)
        return word
