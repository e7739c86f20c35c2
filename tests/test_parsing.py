"""Tests for harness.parsing: accepted forms, repairs, derived fields, failures and hostile input."""

from __future__ import annotations

import json
import random

import pytest

from harness.parsing import ParsedVerdict, parse_verdict

CODES = ["S", "V", "HR"]
VALID = '{"flagged": true, "categories": {"S": false, "V": true, "HR": false}, "scores": {"V": 0.9, "S": 0.05}, "rationale": "A threat."}'


def assert_ok_violent(v: ParsedVerdict) -> None:
    assert v.outcome == "ok", v.error
    assert v.error is None
    assert v.flagged is True
    assert v.categories == {"S": False, "V": True, "HR": False}


# ---- accepted forms -------------------------------------------------------------------------


def test_clean_json() -> None:
    v = parse_verdict(VALID, CODES)
    assert_ok_violent(v)
    assert v.scores == {"V": 0.9, "S": 0.05}
    assert v.rationale == "A threat."
    assert v.commentary == ""


def test_json_fence_and_commentary() -> None:
    text = f"The post threatens someone.\n```json\n{VALID}\n```\n"
    v = parse_verdict(text, CODES)
    assert_ok_violent(v)
    assert v.commentary == "The post threatens someone."


def test_plain_fence() -> None:
    v = parse_verdict(f"Threat.\n```\n{VALID}\n```", CODES)
    assert_ok_violent(v)
    assert v.commentary == "Threat."


def test_json_before_prose() -> None:
    v = parse_verdict(f"{VALID}\n\nI flagged it because of the threat.", CODES)
    assert_ok_violent(v)
    assert v.commentary == "I flagged it because of the threat."


def test_prose_on_both_sides_is_joined() -> None:
    v = parse_verdict(f"Before.\n{VALID}\nAfter.", CODES)
    assert_ok_violent(v)
    assert v.commentary == "Before.\nAfter."


def test_last_verdict_object_wins() -> None:
    first = '{"flagged": false, "categories": {"S": false, "V": false, "HR": false}}'
    text = f"Draft: {first}\nOn reflection:\n{VALID}"
    v = parse_verdict(text, CODES)
    assert_ok_violent(v)
    assert first in v.commentary
    assert "On reflection:" in v.commentary


def test_non_verdict_object_after_verdict_is_ignored() -> None:
    v = parse_verdict(f'{VALID}\nUsage: {{"tokens": 12}}', CODES)
    assert_ok_violent(v)
    assert '{"tokens": 12}' in v.commentary


def test_echoed_template_after_answer_does_not_override() -> None:
    template = '{"flagged": true or false, "categories": {"<code>": true or false}}'
    v = parse_verdict(f"{VALID}\nFormat was: {template}", CODES)
    assert_ok_violent(v)


# ---- repairs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # trailing commas
        '{"flagged": true, "categories": {"S": false, "V": true, "HR": false,},}',
        # single quotes
        "{'flagged': true, 'categories': {'S': false, 'V': true, 'HR': false}}",
        # Python literals
        '{"flagged": True, "categories": {"S": False, "V": True, "HR": False}, "scores": None}',
        # unquoted keys
        "{flagged: true, categories: {S: false, V: true, HR: false}}",
        # // and /* */ comments
        '{"flagged": true, // overall\n "categories": {"S": false, /* no */ "V": true, "HR": false}}',
        # smart quotes
        "{\u201cflagged\u201d: true, \u201ccategories\u201d: {\u201cS\u201d: false, \u201cV\u201d: true, \u201cHR\u201d: false}}",
        # truncated: missing closing braces
        '{"flagged": true, "categories": {"S": false, "V": true, "HR": false',
        # missing comma between members
        '{"flagged": true\n "categories": {"S": false\n "V": true\n "HR": false}}',
    ],
    ids=["trailing-comma", "single-quotes", "python-literals", "unquoted-keys", "comments",
         "smart-quotes", "truncated", "missing-commas"],
)
def test_repairs(text: str) -> None:
    assert_ok_violent(parse_verdict(f"Commentary.\n{text}", CODES))


def test_truncated_inside_rationale_string() -> None:
    v = parse_verdict('{"flagged": true, "categories": {"V": true}, "rationale": "The author thre', CODES)
    assert v.outcome == "ok"
    assert v.flagged is True
    assert v.categories == {"S": None, "V": True, "HR": None}
    assert v.rationale == "The author thre"


def test_apostrophe_inside_single_quoted_string() -> None:
    v = parse_verdict("{'flagged': False, 'categories': {'V': False}, 'rationale': 'It's a recipe'}", CODES)
    assert v.outcome == "ok"
    assert v.flagged is False
    assert v.rationale == "It's a recipe"


def test_unescaped_inner_double_quotes() -> None:
    v = parse_verdict('{"flagged": false, "categories": {"V": false}, "rationale": "Says "hi" only"}', CODES)
    assert v.outcome == "ok"
    assert v.rationale == 'Says "hi" only'


def test_string_escapes_in_repaired_json() -> None:
    v = parse_verdict("{'flagged': false, 'categories': {'V': false}, 'rationale': 'a\\nb \\u00e9',}", CODES)
    assert v.rationale == "a\nb \u00e9"


# ---- category values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True), ("false", False), ('"true"', True), ('"FALSE"', False), ('"Yes"', True),
        ('"no"', False), ('"1"', True), ('"0"', False), ("1", True), ("0", False),
        ("0.8", True), ("0.2", False), ("0.5", True), ('"maybe"', None), ("null", None),
        ("7", None), ("-0.1", None), ("[1]", None),
    ],
)
def test_category_value_forms(value: str, expected: bool | None) -> None:
    v = parse_verdict(f'{{"flagged": true, "categories": {{"V": {value}}}}}', CODES)
    assert v.categories["V"] is expected


def test_category_float_doubles_as_score_unless_scores_given() -> None:
    v = parse_verdict('{"categories": {"V": 0.8, "S": 0.1}, "scores": {"S": 0.3}}', CODES)
    assert v.categories == {"S": False, "V": True, "HR": None}
    assert v.scores == {"V": 0.8, "S": 0.3}


def test_categories_as_list() -> None:
    v = parse_verdict('{"flagged": true, "categories": ["v", "HR", 3, "XX"]}', CODES)
    assert v.outcome == "ok"
    assert v.categories == {"S": False, "V": True, "HR": True}


def test_empty_category_list_means_all_false() -> None:
    v = parse_verdict('{"categories": []}', CODES)
    assert v.outcome == "ok"
    assert v.flagged is False
    assert v.categories == {"S": False, "V": False, "HR": False}


def test_codes_match_case_insensitively_and_unknown_codes_are_ignored() -> None:
    v = parse_verdict('{"flagged": true, "categories": {"v": true, "hr": false, "ZZ": true}}', CODES)
    assert v.categories == {"S": None, "V": True, "HR": False}
    assert "ZZ" not in v.categories


def test_missing_categories_are_none() -> None:
    v = parse_verdict('{"flagged": false}', CODES)
    assert v.outcome == "ok"
    assert v.flagged is False
    assert v.categories == {"S": None, "V": None, "HR": None}


# ---- flagged -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cats", "expected"),
    [
        ('{"S": false, "V": true}', True),
        ('{"S": false, "V": false, "HR": false}', False),
        ('{"S": false}', False),
    ],
)
def test_flagged_derived_when_missing(cats: str, expected: bool) -> None:
    v = parse_verdict(f'{{"categories": {cats}}}', CODES)
    assert v.outcome == "ok"
    assert v.flagged is expected


def test_flagged_derived_when_uninterpretable() -> None:
    v = parse_verdict('{"flagged": "unclear", "categories": {"V": true}}', CODES)
    assert v.flagged is True
    v = parse_verdict('{"flagged": [], "categories": {"V": false}}', CODES)
    assert v.flagged is False


def test_flagged_words() -> None:
    assert parse_verdict('{"flagged": "YES"}', CODES).flagged is True
    assert parse_verdict('{"flagged": 0}', CODES).flagged is False


def test_flagged_true_kept_without_true_category() -> None:
    v = parse_verdict('{"flagged": true, "categories": {"S": false, "V": false, "HR": false}}', CODES)
    assert v.flagged is True
    assert v.outcome == "ok"


# ---- scores ----------------------------------------------------------------------------------


def test_scores_clamped_and_filtered() -> None:
    text = json.dumps(
        {"flagged": True, "scores": {"S": -0.5, "V": 1.7, "HR": "high", "ZZ": 0.4, "v2": 0.3}}
    )
    v = parse_verdict(text, ["S", "V", "HR", "V2"])
    assert v.scores == {"S": 0.0, "V": 1.0, "V2": 0.3}


def test_scores_ignore_booleans_nan_and_numeric_strings_are_read() -> None:
    v = parse_verdict('{"flagged": true, "scores": {"S": true, "V": NaN, "HR": "0.25"}}', CODES)
    assert v.scores == {"HR": 0.25}


def test_scores_not_a_dict() -> None:
    v = parse_verdict('{"flagged": true, "scores": [0.1, 0.2]}', CODES)
    assert v.outcome == "ok"
    assert v.scores == {}


# ---- refusals --------------------------------------------------------------------------------


def test_refusal_argument_wins() -> None:
    v = parse_verdict(VALID, CODES, refusal="I can't judge this content.")
    assert v.outcome == "refused"
    assert v.error == "model refused: I can't judge this content."
    assert v.flagged is None
    assert v.categories == {"S": None, "V": None, "HR": None}


def test_refusal_argument_with_no_text_and_long_message_is_cut() -> None:
    v = parse_verdict(None, CODES, refusal="x" * 500)
    assert v.outcome == "refused"
    assert v.error == "model refused: " + "x" * 200


def test_blank_refusal_argument_is_ignored() -> None:
    assert parse_verdict(VALID, CODES, refusal="  ").outcome == "ok"


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that request.",
        "I cannot assist with moderating this.",
        "As an AI, I must decline.",
        "I\u2019m unable to review this content.",
    ],
)
def test_refusal_in_text(text: str) -> None:
    v = parse_verdict(text, CODES)
    assert v.outcome == "refused"
    assert v.error is not None and v.error.startswith("model refused: ")
    assert v.commentary == text


def test_apology_with_a_verdict_is_not_a_refusal() -> None:
    v = parse_verdict(f"I'm sorry, this is clearly a threat.\n{VALID}", CODES)
    assert_ok_violent(v)


# ---- unparsable ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error_part"),
    [
        (None, "empty"),
        ("", "empty"),
        ("   \n\t", "empty"),
        ("This content looks fine to me.", "no JSON object"),
        ('Usage: {"tokens": 3}', "no verdict object"),
        ('{"categories": {"ZZ": true}}', "no usable"),
        ('{"flagged": "maybe", "categories": {"S": "perhaps"}}', "no usable"),
        ('{"flagged": null}', "no usable"),
        ("[1, 2, 3]", "no JSON object"),
    ],
)
def test_unparsable(text: str | None, error_part: str) -> None:
    v = parse_verdict(text, CODES)
    assert v.outcome == "unparsable"
    assert v.error is not None and error_part in v.error
    assert v.flagged is None
    assert v.categories == {"S": None, "V": None, "HR": None}


def test_unparsable_keeps_prose_as_commentary() -> None:
    v = parse_verdict("  Looks fine.  ", CODES)
    assert v.commentary == "Looks fine."


# ---- hostile input ----------------------------------------------------------------------------


def _hostile_strings() -> list[str]:
    rng = random.Random(1234)
    alphabet = list('{}[]"\',:\\/*`\n\t truefalsnlTFN0123456789.-e') + [
        "\u201c", "\u201d", "\u2018", "\u2019", "\x00", "\x1b", "\ud800", "\udfff", "\u202e", "\U0001f600",
    ]
    out = [
        "{" * 100_000,
        "}" * 100_000,
        "[" * 100_000,
        '{"a":' * 50_000,
        '{"flagged":' * 20_000,
        '{"' * 50_000,
        "{'" * 50_000,
        "```" * 10_000,
        "/*" * 10_000,
        "\\" * 10_000,
        '{"flagged": true, "categories": {"V": "\\ud800"}}',
        '{"flagged": true, "rationale": "\\u12"}',
        '{"flagged": 1e999999, "scores": {"V": 1e999999}}',
        '{"flagged": true, "scores": {"V": ' + "9" * 5000 + "}}",
        "{flagged: " + "9" * 5000 + "}",
        "\ud800{\ud800: \udfff}",
        "\x00" * 1000,
        "{\"flagged\": tr",
        "{,,,:::}",
        "{'categories': {'V': '",
    ]
    for _ in range(400):
        n = rng.choice([1, 5, 30, 200, 2000])
        out.append("".join(rng.choice(alphabet) for _ in range(n)))
    # corrupt a valid answer one character at a time
    for _ in range(200):
        chars = list(VALID)
        for _ in range(rng.randint(1, 5)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        out.append("".join(chars[: rng.randrange(1, len(chars) + 1)]))
    return out


def test_hostile_strings_never_raise() -> None:
    for text in _hostile_strings():
        v = parse_verdict(text, CODES)
        assert v.outcome in ("ok", "unparsable", "refused"), text[:80]
        assert (v.error is None) == (v.outcome == "ok"), text[:80]
        assert set(v.categories) == set(CODES)
        assert v.flagged in (True, False, None)
        assert all(0.0 <= s <= 1.0 for s in v.scores.values())
        if v.outcome == "ok":
            assert v.flagged is not None or any(c is not None for c in v.categories.values())
        # results must be encodable for storage
        v.commentary.encode("utf-8")
        v.rationale.encode("utf-8")


def test_lone_surrogates_are_replaced() -> None:
    v = parse_verdict("bad \ud800 text\n" + VALID, CODES)
    assert_ok_violent(v)
    assert v.commentary == "bad \ufffd text"


def test_non_string_text_does_not_raise() -> None:
    assert parse_verdict(b'{"flagged": true}', CODES).flagged is True  # type: ignore[arg-type]
    assert parse_verdict(12345, CODES).outcome == "unparsable"  # type: ignore[arg-type]


def test_large_inputs_are_fast() -> None:
    texts = [
        "a" * 1_000_000,
        "{" * 1_000_000,
        '{"' * 500_000,
        ('{"a": [' + "1," * 5000 + "] ") * 100,
        "x" * 1_000_000 + "\n" + VALID,
    ]
    for text in texts:
        v = parse_verdict(text, CODES)
        assert v.outcome in ("ok", "unparsable"), text[:30]
    assert_ok_violent(v)
