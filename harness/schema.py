"""The vocabulary of the harness: items, taxonomies, prompt specs and verdicts.

Everything here is a plain dataclass that converts to and from JSON-safe dicts, because the
same objects travel through Redis, diskcache, CSV files and notebook widgets.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import tomli_w

Outcome = Literal["ok", "unparsable", "refused", "error"]
OUTCOMES: tuple[str, ...] = ("ok", "unparsable", "refused", "error")


class SpecError(ValueError):
    """A prompt spec or taxonomy that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    definition: str


@dataclass(frozen=True)
class Taxonomy:
    """The categories a prompt judges, in a fixed order."""

    categories: tuple[Category, ...]

    def __post_init__(self) -> None:
        codes = [c.code for c in self.categories]
        if not codes:
            raise SpecError("taxonomy: needs at least one category")
        dupes = sorted({c for c in codes if codes.count(c) > 1})
        if dupes:
            raise SpecError(f"taxonomy: duplicate category codes {dupes}")
        bad = [c for c in codes if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", c)]
        if bad:
            raise SpecError(f"taxonomy: codes must be letters, digits or _: {bad}")

    @property
    def codes(self) -> list[str]:
        return [c.code for c in self.categories]

    def render(self) -> str:
        """One line per category, `- CODE (name): definition`; the offline model reads this."""
        return "\n".join(f"- {c.code} ({c.name}): {c.definition}" for c in self.categories)

    def to_list(self) -> list[dict[str, str]]:
        return [asdict(c) for c in self.categories]

    @classmethod
    def from_list(cls, rows: list[dict[str, str]]) -> Taxonomy:
        try:
            return cls(tuple(Category(str(r["code"]), str(r["name"]), str(r["definition"])) for r in rows))
        except (KeyError, TypeError) as exc:
            raise SpecError(f"taxonomy: each category needs code, name and definition ({exc})") from exc


DEFAULT_TAXONOMY = Taxonomy(
    (
        Category("S", "sexual", "Content meant to arouse sexual excitement, such as descriptions of sexual activity, or that promotes sexual services (sex education and wellness excluded)."),
        Category("H", "hate", "Content that expresses, incites or promotes hatred based on race, gender, ethnicity, religion, nationality, sexual orientation, disability or caste."),
        Category("V", "violence", "Content that promotes or glorifies violence or celebrates the suffering or humiliation of others."),
        Category("HR", "harassment", "Content that may be used to torment or annoy individuals in real life, or make harassment more likely to occur."),
        Category("SH", "self-harm", "Content that promotes, encourages or depicts acts of self-harm, such as suicide, cutting and eating disorders."),
        Category("S3", "sexual/minors", "Sexual content that includes an individual who is under 18 years old."),
        Category("H2", "hate/threatening", "Hateful content that also includes violence or serious harm towards the targeted group."),
        Category("V2", "violence/graphic", "Violent content that depicts death, violence or serious physical injury in extreme graphic detail."),
    )
)

# Placeholders a template may use. Other braces (JSON examples) are left alone; `{{`/`}}` escape.
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "system": ("categories", "codes"),
    "user_template": ("text", "content_type", "content_id", "categories", "codes"),
}
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _fill(template: str, values: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        return values[m.group(1)]

    return _PLACEHOLDER.sub(sub, template)


def _check_number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low <= value <= high):
        raise SpecError(f"{name}: expected a number from {low:g} to {high:g}, got {value!r}")


def _check_placeholders(field_name: str, template: str) -> None:
    allowed = PLACEHOLDERS[field_name]
    for m in _PLACEHOLDER.finditer(template):
        name = m.group(1)
        if name is not None and name not in allowed:
            raise SpecError(
                f"{field_name}: unknown placeholder {{{name}}}; known: "
                + ", ".join("{" + a + "}" for a in allowed)
                + " (write {{ and }} for literal braces)"
            )


@dataclass(frozen=True)
class PromptSpec:
    """Everything that decides what the model is asked. `version` hashes all of it but `name`."""

    system: str
    user_template: str
    taxonomy: Taxonomy = DEFAULT_TAXONOMY
    model: str = ""
    temperature: float = 0.0
    max_tokens: int = 400
    top_p: float | None = None
    seed: int | None = None
    response_format: str | None = None  # None or "json_object"
    max_text_chars: int = 20_000
    name: str = "prompt"

    def __post_init__(self) -> None:
        for name in ("system", "user_template", "model", "name"):
            if not isinstance(getattr(self, name), str):
                raise SpecError(f"{name}: expected text, got {getattr(self, name)!r}")
        _check_placeholders("system", self.system)
        _check_placeholders("user_template", self.user_template)
        if not any(m.group(1) == "text" for m in _PLACEHOLDER.finditer(self.user_template)):
            raise SpecError("user_template: must contain the {text} placeholder")
        if self.response_format not in (None, "json_object"):
            raise SpecError(f"response_format: expected none or 'json_object', got {self.response_format!r}")
        _check_number("temperature", self.temperature, 0.0, 2.0)
        if self.top_p is not None:
            _check_number("top_p", self.top_p, 0.0, 1.0)
        for name in ("max_tokens", "max_text_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"{name}: expected a positive whole number, got {value!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise SpecError(f"seed: expected a whole number, got {self.seed!r}")

    # ---- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["taxonomy"] = self.taxonomy.to_list()
        return d

    @property
    def version(self) -> str:
        body = self.to_dict()
        body.pop("name")
        blob = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def with_model(self, model: str) -> PromptSpec:
        return replace(self, model=model) if model and model != self.model else self

    def sampling(self) -> dict[str, Any]:
        """Parameters passed to chat.completions.create besides model and messages."""
        params: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.top_p is not None:
            params["top_p"] = self.top_p
        if self.seed is not None:
            params["seed"] = self.seed
        if self.response_format:
            params["response_format"] = {"type": self.response_format}
        return params

    def render_messages(self, item: Item) -> tuple[list[dict[str, str]], bool]:
        """Chat messages for one item, and whether its text was cut to `max_text_chars`."""
        text = item.text
        truncated = len(text) > self.max_text_chars
        if truncated:
            text = text[: self.max_text_chars]
        shared = {"categories": self.taxonomy.render(), "codes": ", ".join(self.taxonomy.codes)}
        system = _fill(self.system, shared)
        user = _fill(
            self.user_template,
            {**shared, "text": text, "content_type": item.content_type, "content_id": item.content_id},
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": user}], truncated

    # ---- files ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "prompt") -> PromptSpec:
        data = dict(data)
        sampling = data.pop("sampling", {}) or {}
        taxonomy = data.pop("taxonomy", None)
        known = {f for f in cls.__dataclass_fields__ if f != "taxonomy"}
        unknown = sorted((set(data) | set(sampling)) - known)
        if unknown:
            raise SpecError(f"prompt: unknown field(s) {unknown}; known: {sorted(known)}")
        for required in ("system", "user_template"):
            if not isinstance(data.get(required), str):
                raise SpecError(f"prompt: field '{required}' is required and must be text")
        kwargs: dict[str, Any] = {"name": name, **data, **sampling}
        if taxonomy is not None:
            kwargs["taxonomy"] = Taxonomy.from_list(taxonomy)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> PromptSpec:
        """Read a prompt file (TOML). Its stem is the prompt's name unless it sets `name`."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SpecError(f"prompt file not found: {path}") from exc
        except IsADirectoryError as exc:
            raise SpecError(f"{path}: is a folder, not a prompt file") from exc
        except UnicodeDecodeError as exc:
            raise SpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path}: not valid TOML ({exc})") from exc
        try:
            return cls.from_dict(data, name=str(data.pop("name", path.stem)))
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        d = self.to_dict()
        out: dict[str, Any] = {"name": d["name"], "model": d["model"]}
        out["sampling"] = {
            k: d[k] for k in ("temperature", "max_tokens", "top_p", "seed", "response_format", "max_text_chars")
            if d[k] is not None
        }
        out["system"] = d["system"]
        out["user_template"] = d["user_template"]
        out["taxonomy"] = d["taxonomy"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# prompt version {self.version}\n" + tomli_w.dumps(out, multiline_strings=True), encoding="utf-8")
        return path


BUNDLED_PROMPTS = Path(__file__).parent / "prompts"


def bundled_prompt(name: str = "baseline") -> PromptSpec:
    return PromptSpec.load(BUNDLED_PROMPTS / f"{name}.toml")


def load_prompt(prompt: PromptSpec | str | Path | None) -> PromptSpec:
    """A spec as given, read from a file, or the bundled baseline when None."""
    if prompt is None:
        return bundled_prompt()
    if isinstance(prompt, PromptSpec):
        return prompt
    return PromptSpec.load(prompt)


@dataclass
class Item:
    """One piece of content. `labels` maps a category code to 1, 0 or None (unknown)."""

    content_id: str
    text: str
    content_type: str = "text"
    labels: dict[str, int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"content_id": self.content_id, "text": self.text, "content_type": self.content_type,
                "labels": dict(self.labels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(str(d["content_id"]), str(d["text"]), str(d.get("content_type") or "text"), dict(d.get("labels") or {}))


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass
class Verdict:
    """What one run concluded about one item; every item of a run ends with exactly one."""

    content_id: str
    outcome: Outcome
    flagged: bool | None = None
    categories: dict[str, bool | None] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    commentary: str = ""
    rationale: str = ""
    raw: str = ""
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    cached: bool = False
    tries: int = 1
    truncated: bool = False
    run_id: str = ""
    prompt_version: str = ""
    model: str = ""
    semantic_source: str | None = None  # a semantic-cache hit: the content_id whose verdict was reused
    semantic_similarity: float | None = None  # and the cosine similarity to it

    def to_dict(self) -> dict[str, Any]:
        # written out by hand: dataclasses.asdict deep-copies and dominates large runs
        return {
            "content_id": self.content_id, "outcome": self.outcome, "flagged": self.flagged,
            "categories": dict(self.categories), "scores": dict(self.scores), "commentary": self.commentary,
            "rationale": self.rationale, "raw": self.raw, "error": self.error,
            "usage": {"prompt_tokens": self.usage.prompt_tokens, "completion_tokens": self.usage.completion_tokens,
                      "total_tokens": self.usage.total_tokens},
            "latency_s": self.latency_s, "cached": self.cached, "tries": self.tries, "truncated": self.truncated,
            "run_id": self.run_id, "prompt_version": self.prompt_version, "model": self.model,
            "semantic_source": self.semantic_source, "semantic_similarity": self.semantic_similarity,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        d = dict(d)
        d["usage"] = Usage(**(d.get("usage") or {}))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str | bytes) -> Verdict:
        return cls.from_dict(json.loads(s))
