from __future__ import annotations

from dataclasses import replace

import pytest

from harness.schema import DEFAULT_TAXONOMY, Item, PromptSpec, SpecError, Verdict, bundled_prompt


def test_default_taxonomy_has_the_eight_openai_codes():
    assert DEFAULT_TAXONOMY.codes == ["S", "H", "V", "HR", "SH", "S3", "H2", "V2"]
    assert all(c.definition for c in DEFAULT_TAXONOMY.categories)


def test_version_changes_with_every_part_but_the_name():
    spec = bundled_prompt()
    assert len(spec.version) == 12
    assert replace(spec, name="other").version == spec.version
    edited = replace(spec, system=spec.system.replace("careful", "strict"))
    assert edited.version != spec.version
    for change in ({"temperature": 0.7}, {"max_tokens": 99}, {"model": "x"}, {"top_p": 0.5},
                   {"response_format": "json_object"}, {"max_text_chars": 10},
                   {"user_template": spec.user_template + " "},
                   {"taxonomy": replace(DEFAULT_TAXONOMY, categories=DEFAULT_TAXONOMY.categories[:3])}):
        assert replace(spec, **change).version != spec.version, change


def test_save_and_load_round_trip(tmp_path):
    spec = replace(bundled_prompt(), temperature=0.3, seed=7)
    loaded = PromptSpec.load(spec.save(tmp_path / "p.toml"))
    assert loaded.version == spec.version
    assert loaded == spec.__class__(**{**spec.__dict__, "name": spec.name})


def test_unknown_placeholder_names_field_and_placeholder():
    with pytest.raises(SpecError, match=r"user_template: unknown placeholder \{txt\}"):
        PromptSpec(system="s", user_template="{txt} {text}")
    with pytest.raises(SpecError, match=r"system: unknown placeholder \{text\}"):
        PromptSpec(system="judge {text}", user_template="{text}")
    with pytest.raises(SpecError, match="must contain the {text} placeholder"):
        PromptSpec(system="s", user_template="nothing here")


def test_json_braces_are_kept_and_double_braces_escape():
    spec = PromptSpec(system='Answer {"flagged": true} for {codes} {{codes}}', user_template="<c>{text}</c>")
    messages, truncated = spec.render_messages(Item("1", "hi"))
    assert messages[0]["content"] == 'Answer {"flagged": true} for S, H, V, HR, SH, S3, H2, V2 {codes}'
    assert messages[1]["content"] == "<c>hi</c>"
    assert truncated is False


def test_long_text_is_truncated_and_reported():
    spec = PromptSpec(system="s", user_template="{text}", max_text_chars=5)
    messages, truncated = spec.render_messages(Item("1", "abcdefgh"))
    assert messages[1]["content"] == "abcde" and truncated


def test_bad_prompt_file_names_the_file_and_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('system = "s"\nuser_template = "{text}"\ncolour = "red"\n')
    with pytest.raises(SpecError, match=r"bad.toml: prompt: unknown field\(s\) \['colour'\]"):
        PromptSpec.load(path)
    path.write_text('system = "s"\nuser_template = "{text}"\n[sampling]\ntemperature = 9\n')
    with pytest.raises(SpecError, match="temperature"):
        PromptSpec.load(path)
    with pytest.raises(SpecError, match="not found"):
        PromptSpec.load(tmp_path / "missing.toml")


def test_verdict_json_round_trip():
    v = Verdict("a", "ok", flagged=True, categories={"S": True, "H": None}, scores={"S": 0.9})
    assert Verdict.from_json(v.to_json()) == v


def test_verdict_to_dict_covers_every_field():
    from dataclasses import asdict, fields

    v = Verdict("a", "error", error="x", tries=3, truncated=True, run_id="r", prompt_version="p", model="m")
    assert v.to_dict() == asdict(v)
    assert set(v.to_dict()) == {f.name for f in fields(Verdict)}
    item = Item("1", "t", "post", {"S": 1, "H": None})
    assert item.to_dict() == asdict(item)


def test_escaped_text_placeholder_does_not_count_as_text():
    with pytest.raises(SpecError, match="must contain the {text} placeholder"):
        PromptSpec(system="s", user_template="literal {{text}} only")


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", "hot"), ("temperature", "1.0"), ("temperature", True), ("max_tokens", 1.5),
    ("max_tokens", "many"), ("max_text_chars", 5.5), ("top_p", 7), ("top_p", "x"), ("seed", 1.5), ("model", 5),
])
def test_sampling_values_are_type_checked_naming_the_field(tmp_path, field, value):
    spec = bundled_prompt()
    with pytest.raises(SpecError, match=field):
        replace(spec, **{field: value})
    path = tmp_path / "p.toml"
    section = "" if field == "model" else "[sampling]\n"
    path.write_text('system = "s"\nuser_template = "{text}"\n' + section + f"{field} = {value!r}\n".replace("'", '"')
                    .replace("True", "true"))
    with pytest.raises(SpecError, match=f"p.toml: {field}"):
        PromptSpec.load(path)


def test_a_prompt_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes('system = "caf\xe9"\nuser_template = "{text}"\n'.encode("latin-1"))
    with pytest.raises(SpecError, match="latin.toml: not UTF-8"):
        PromptSpec.load(path)


def test_endpoint_never_carries_credentials():
    from harness.config import load_settings

    s = load_settings(base_url="http://user:URLSECRET@127.0.0.1:8000/v1")
    assert s.endpoint == "http://127.0.0.1:8000/v1"


def test_default_run_id_is_a_valid_run_id_for_any_prompt_name():
    import pandas as pd

    from harness.results import check_run_id, default_run_id

    spec = replace(bundled_prompt(), name="my prompt: v2 (draft)")
    df = pd.DataFrame({"content_id": ["a"], "content_type": ["text"], "text": ["x"]})
    assert check_run_id(default_run_id(spec, df)).startswith("my-prompt-v2-draft-")
