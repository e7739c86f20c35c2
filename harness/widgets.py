"""The notebook prompt lab: edit a moderation prompt, run it on a sample, then on the dataset.

    from harness.widgets import PromptLab
    lab = PromptLab("datasets/mini_moderation.jsonl")   # a path or a DataFrame; prompt=None: bundled
    lab                                                 # the widget (last expression of a cell)

Every button only schedules an asyncio task on the running event loop (the kernel's) and
returns: the kernel stays responsive while the model streams, and the tasks update the widgets.
The same actions are methods, so code and tests drive the lab without a browser:
`select(i)`, `pick_label(code)`, `search(text)`, `pick_random()`, `run_sample()` (a task),
`stop()`, `run_dataset(limit)` (a task), `save_version(path)`, `compare(a, b)` (a task).

Where it runs: inline (this process, `run_inline` with an event listener) or on Arq workers
behind Redis (`enqueue_dataframe_async`, `handle.events()` for commentary and progress,
`handle.collect()` for the results).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import random
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ipywidgets as W
import pandas as pd

from harness.config import Settings, load_settings
from harness.display import comparison_html, gold_of, metrics_html, outcomes_html, verdict_html
from harness.events import Event
from harness.inline import resolve_items, run_inline
from harness.metrics import compare_runs, compute_metrics
from harness.report import misclassified
from harness.results import RunResult, dataset_fingerprint
from harness.schema import PromptSpec, SpecError, Verdict, load_prompt

__all__ = ["LabRun", "PromptLab"]

WHERE = ("inline", "workers")
MAX_WRONG_BUTTONS = 100

_STYLE = """<style>
.harness-lab .harness-commentary pre{white-space:pre-wrap;word-break:break-word;margin:0;
  font-size:12px;background:#f7f7f7;border:1px solid #ddd;padding:6px;min-height:3em}
.harness-lab .harness-error{color:#b02a2a}
.harness-lab .harness-sample{max-height:14em;overflow:auto}
.harness-lab .widget-html-content{line-height:1.35}
.harness-lab .widget-html-content table td,.harness-lab .widget-html-content table th{line-height:1.2}
</style>"""


def _e(x: Any) -> str:
    return "" if x is None else html.escape(str(x), quote=True)


def _loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop()


def _retrieve(task: asyncio.Task) -> None:
    """Mark a task's exception as seen: the lab already shows it in its status line."""
    if not task.cancelled():
        task.exception()


@dataclass
class LabRun:
    """One dataset run made by the lab: the prompt, its predictions and (inline) the RunResult."""

    label: str
    spec: PromptSpec
    predictions: pd.DataFrame
    where: str = "inline"
    run_id: str = ""
    result: RunResult | None = None
    elapsed_s: float = 0.0

    @property
    def codes(self) -> list[str]:
        return self.spec.taxonomy.codes

    def metrics(self) -> dict[str, Any]:
        return compute_metrics(self.predictions, self.codes)


class PromptLab:
    """An ipywidgets prompt lab over one labelled dataset. Display it as a cell's last value."""

    def __init__(
        self,
        data: pd.DataFrame | str | Path,
        prompt: PromptSpec | str | Path | None = None,
        *,
        settings: Settings | None = None,
        where: str = "inline",
        redis_url: str | None = None,
        stream_delay_ms: float = 30,
        use_cache: bool = False,
        prompts_dir: str | Path | None = None,
        concurrency: int | None = None,
        seed: int | None = None,
    ) -> None:
        if where not in WHERE:
            raise ValueError(f"where: expected one of {WHERE}, got {where!r}")
        spec = load_prompt(prompt)
        self.settings = settings or load_settings()
        self.base_spec = spec
        self.data = resolve_items(data, spec.taxonomy.codes).reset_index(drop=True)
        if self.data.empty:
            raise ValueError("PromptLab: the dataset has no rows")
        self.codes = spec.taxonomy.codes
        self.redis_url = redis_url
        self.stream_delay_ms = float(stream_delay_ms)
        self.concurrency = concurrency
        self._rng = random.Random(seed)

        # state, readable from code and tests
        self.index = 0
        self.spec_error: str | None = None
        self.last_verdict: Verdict | None = None
        self.last_result: RunResult | None = None
        self.runs: list[LabRun] = []
        self.wrong_items: pd.DataFrame = pd.DataFrame()
        self.last_comparison: pd.DataFrame | None = None
        self.saved: list[Path] = []
        self.commentary_text = ""
        self.commentary_updates = 0
        self._matches: list[int] = []
        self._tasks: dict[str, asyncio.Task] = {}

        self._build(spec, where, use_cache, prompts_dir)
        self._refresh_version()
        self.select(0)

    # ---- layout ---------------------------------------------------------------------------
    def _build(self, spec: PromptSpec, where: str, use_cache: bool, prompts_dir: str | Path | None) -> None:
        wide = W.Layout(width="100%")
        # the prompt
        self.name_text = W.Text(value=spec.name, description="name", layout=W.Layout(width="260px"))
        self.system_text = W.Textarea(value=spec.system, description="system",
                                      layout=W.Layout(width="100%", height="190px"))
        self.user_template = W.Textarea(value=spec.user_template, description="user",
                                        layout=W.Layout(width="100%", height="110px"))
        self.taxonomy_html = W.HTML(self._taxonomy_markup(spec), layout=W.Layout(width="34%"))
        self.model_text = W.Text(value=spec.model or self.settings.model, description="model",
                                 layout=W.Layout(width="360px"))
        self.temperature = W.BoundedFloatText(value=float(spec.temperature), min=0.0, max=2.0, step=0.1,
                                              description="temperature", layout=W.Layout(width="190px"),
                                              style={"description_width": "initial"})
        self.version_label = W.HTML()
        for w in (self.name_text, self.system_text, self.user_template, self.model_text, self.temperature):
            w.observe(lambda _change: self._refresh_version(), names="value")

        # where it runs
        self.where = W.ToggleButtons(options=list(WHERE), value=where, description="run on",
                                     style={"button_width": "80px"})
        self.use_cache = W.Checkbox(value=use_cache, description="use the cache for sample runs", indent=False)

        # the sample
        n = len(self.data)
        self.index_input = W.BoundedIntText(value=0, min=0, max=n - 1, description="item #",
                                            layout=W.Layout(width="170px"))
        self.index_input.observe(lambda ch: self.select(int(ch["new"])) if ch["new"] != self.index else None,
                                 names="value")
        self.label_picker = W.Dropdown(options=self._label_options(), index=0, description="gold",
                                       layout=W.Layout(width="300px"))
        self.label_picker.observe(self._on_label_pick, names="value")
        self.search_text = W.Text(placeholder="text search, Enter", description="search",
                                  continuous_update=False, layout=W.Layout(width="260px"))
        self.search_text.observe(lambda ch: self.search(ch["new"]) if ch["new"] else None, names="value")
        self.next_button = W.Button(description="next match", icon="forward", layout=W.Layout(width="120px"))
        self.next_button.on_click(lambda _b: self.next_match())
        self.random_button = W.Button(description="random", icon="random", layout=W.Layout(width="100px"))
        self.random_button.on_click(lambda _b: self.pick_random())
        self.sample_html = W.HTML(layout=wide)
        self.sample_html.add_class("harness-sample")

        self.run_button = W.Button(description="Run", button_style="primary", icon="play",
                                   tooltip="run the prompt on this item; the commentary streams below")
        self.run_button.add_class("harness-run")
        self.run_button.on_click(lambda _b: self.run_sample())
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop")
        self.stop_button.add_class("harness-stop")
        self.stop_button.on_click(lambda _b: self.stop())
        self.status = W.HTML("ready")
        self.status.add_class("harness-status")
        self.commentary = W.HTML(self._commentary_markup(""), layout=wide)
        self.commentary.add_class("harness-commentary")
        self.verdict = W.HTML(layout=wide)
        self.verdict.add_class("harness-verdict")

        # the dataset
        self.limit_input = W.BoundedIntText(value=0, min=0, max=n, description="first N",
                                            tooltip="0 = the whole dataset", layout=W.Layout(width="170px"))
        self.run_dataset_button = W.Button(description="Run on dataset", button_style="primary", icon="table")
        self.run_dataset_button.add_class("harness-run-dataset")
        self.run_dataset_button.on_click(lambda _b: self.run_dataset(self.limit_input.value or None))
        self.progress = W.IntProgress(value=0, min=0, max=n, description="0 / 0", bar_style="info")
        self.dataset_status = W.HTML()
        self.metrics_html = W.HTML(layout=wide)
        self.metrics_html.add_class("harness-dataset-metrics")
        self.wrong_box = W.VBox(layout=W.Layout(max_height="320px", overflow="auto"))
        self.wrong_buttons: list[W.Button] = []

        # versions
        folder = Path(prompts_dir) if prompts_dir is not None else Path.cwd() / "prompts"
        self.prompts_dir = W.Text(value=str(folder), description="folder", layout=W.Layout(width="420px"))
        self.save_button = W.Button(description="Save version", icon="save")
        self.save_button.on_click(lambda _b: self._guarded_save())
        self.save_status = W.HTML()
        self.compare_a = W.Dropdown(options=[], description="a", layout=W.Layout(width="420px"))
        self.compare_b = W.Dropdown(options=[], description="b", layout=W.Layout(width="420px"))
        self.compare_button = W.Button(description="Compare", icon="exchange")
        self.compare_button.on_click(lambda _b: self.compare(self.compare_a.value, self.compare_b.value))
        self.compare_status = W.HTML()
        self.compare_html = W.HTML(layout=wide)
        self.compare_html.add_class("harness-compare")
        self.flip_box = W.VBox(layout=W.Layout(max_height="240px", overflow="auto"))
        self.flip_buttons: list[W.Button] = []
        self._refresh_compare_options()

        editors = W.VBox([W.HBox([self.name_text, self.model_text, self.temperature]), self.system_text,
                          self.user_template, self.version_label], layout=W.Layout(width="66%"))
        sample_tab = W.VBox([
            W.HBox([self.index_input, self.label_picker, self.random_button]),
            W.HBox([self.search_text, self.next_button]),
            self.sample_html,
            W.HBox([self.run_button, self.stop_button, self.use_cache]),
            self.status, self.commentary, self.verdict,
        ])
        dataset_tab = W.VBox([
            W.HBox([self.limit_input, self.run_dataset_button, self.progress]),
            self.dataset_status, self.metrics_html,
            W.HTML("<b>Items the prompt got wrong</b> (click one to open it in the sample view)"),
            self.wrong_box,
        ])
        versions_tab = W.VBox([
            W.HBox([self.prompts_dir, self.save_button]), self.save_status,
            W.HTML("<b>Compare</b> two dataset runs or two saved prompt files (files are run on the "
                   "dataset, first N as set in the dataset tab)"),
            self.compare_a, self.compare_b, self.compare_button, self.compare_status,
            self.compare_html, self.flip_box,
        ])
        self.tabs = W.Tab(children=[sample_tab, dataset_tab, versions_tab])
        for i, title in enumerate(("Sample", "Dataset", "Versions")):
            self.tabs.set_title(i, title)
        self.widget = W.VBox([W.HTML(_STYLE), W.HBox([editors, self.taxonomy_html]), self.where, self.tabs])
        self.widget.add_class("harness-lab")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    @staticmethod
    def _taxonomy_markup(spec: PromptSpec) -> str:
        rows = "".join(f"<li><b>{_e(c.code)}</b> {_e(c.name)}: <span style='color:#555'>{_e(c.definition)}</span></li>"
                       for c in spec.taxonomy.categories)
        return f"<div style='font-size:12px'><b>Taxonomy</b><ul style='padding-left:1.2em'>{rows}</ul></div>"

    def _label_options(self) -> list[tuple[str, Any]]:
        opts: list[tuple[str, Any]] = [("pick by gold label…", None)]
        for code in [*self.codes, "any"]:
            col = self.data[f"gold_{code}"]
            n_pos = int((col == 1).sum())
            if n_pos:
                opts.append((f"positives for {code} ({n_pos})", (code, 1)))
        n_neg = int((self.data["gold_any"] == 0).sum())
        if n_neg:
            opts.append((f"negatives: nothing flagged ({n_neg})", ("any", 0)))
        return opts

    # ---- the prompt -----------------------------------------------------------------------
    def current_spec(self) -> PromptSpec:
        """The prompt as edited now (model included); raises SpecError when it is not valid."""
        try:
            temperature = float(self.temperature.value)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"temperature: expected a number ({exc})") from exc
        return replace(self.base_spec, name=self.name_text.value.strip() or "prompt",
                       system=self.system_text.value, user_template=self.user_template.value,
                       temperature=temperature, model=self.model_text.value.strip() or self.settings.model)

    @property
    def spec(self) -> PromptSpec | None:
        """The edited prompt, or None while it is not valid (the version label says why)."""
        try:
            return self.current_spec()
        except SpecError:
            return None

    def set_prompt(self, spec: PromptSpec | str | Path) -> None:
        """Load a prompt (a spec or a TOML file) into the editors."""
        spec = spec if isinstance(spec, PromptSpec) else PromptSpec.load(spec)
        self.base_spec = spec
        self.taxonomy_html.value = self._taxonomy_markup(spec)
        self.name_text.value = spec.name
        self.system_text.value = spec.system
        self.user_template.value = spec.user_template
        self.model_text.value = spec.model or self.settings.model
        self.temperature.value = float(spec.temperature)
        self._refresh_version()

    def _refresh_version(self) -> None:
        try:
            spec = self.current_spec()
        except SpecError as exc:
            self.spec_error = str(exc)
            self.version_label.value = f"<span class='harness-error'>⚠ {_e(exc)}</span>"
            return
        self.spec_error = None
        saved = [p for p in self.saved if p.exists() and _version_of(p) == spec.version]
        note = f" · saved as <code>{_e(saved[-1].name)}</code>" if saved else " · not saved"
        self.version_label.value = (f"version <code class='harness-version'>{_e(spec.version)}</code> "
                                    f"({_e(spec.name)}, model {_e(spec.model)}){note}")

    @property
    def version(self) -> str | None:
        spec = self.spec
        return spec.version if spec else None

    # ---- picking a sample -----------------------------------------------------------------
    def select(self, index: int) -> None:
        """Show item `index` (row position in the dataset) in the sample view."""
        index = int(index)
        if not 0 <= index < len(self.data):
            raise IndexError(f"item index {index} out of range 0..{len(self.data) - 1}")
        self.index = index
        if self.index_input.value != index:
            self.index_input.value = index
        row = self.data.iloc[index]
        gold = self.gold
        chips = " ".join(
            f"<span style='padding:0 4px;border-radius:3px;background:{'#fde2e2' if v == 1 else '#eee'}'>"
            f"{_e(c)}={'?' if v is None else v}</span>" for c, v in gold.items())
        self.sample_html.value = (
            f"<div><b>{_e(row['content_id'])}</b> ({_e(row['content_type'])}, item {index} of "
            f"{len(self.data)}) · gold: {chips}</div>"
            f"<div style='white-space:pre-wrap;border-left:3px solid #ccc;padding-left:6px;margin-top:4px'>"
            f"{_e(row['text'])}</div>")
        self.verdict.value = ""
        self.last_verdict = None

    @property
    def item(self) -> pd.Series:
        return self.data.iloc[self.index]

    @property
    def gold(self) -> dict[str, int | None]:
        return gold_of(self.item, self.codes)

    def _use_matches(self, matches: list[int], what: str) -> list[int]:
        self._matches = matches
        if not matches:
            self.status.value = f"<span class='harness-error'>no item {_e(what)}</span>"
            return matches
        self.status.value = f"{len(matches)} item(s) {_e(what)}"
        self.select(matches[0])
        return matches

    def pick_label(self, code: str, value: int = 1) -> list[int]:
        """Items whose gold label `code` ("any" for overall) equals `value`; selects the first."""
        if code not in [*self.codes, "any"]:
            raise KeyError(f"unknown category {code!r}; known: {[*self.codes, 'any']}")
        col = self.data[f"gold_{code}"]
        matches = [int(i) for i in (col == value).fillna(False).to_numpy().nonzero()[0]]
        kind = "positive" if value else "negative"
        return self._use_matches(matches, f"{kind} for {code}")

    def search(self, query: str) -> list[int]:
        """Items whose text or id contains `query` (case-insensitive); selects the first."""
        q = str(query).strip()
        if not q:
            return []
        hit = (self.data["text"].str.contains(q, case=False, regex=False)
               | self.data["content_id"].astype(str).str.contains(q, case=False, regex=False))
        matches = [int(i) for i in hit.to_numpy().nonzero()[0]]
        return self._use_matches(matches, f"matching {q!r}")

    def next_match(self) -> int | None:
        """The next item of the last label pick or search, wrapping around."""
        if not self._matches:
            return None
        later = [i for i in self._matches if i > self.index]
        nxt = later[0] if later else self._matches[0]
        self.select(nxt)
        return nxt

    def pick_random(self) -> int:
        index = self._rng.randrange(len(self.data))
        self.select(index)
        return index

    def _on_label_pick(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            code, value = change["new"]
            self.pick_label(code, value)

    # ---- tasks ----------------------------------------------------------------------------
    def _spawn(self, kind: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Schedule `coro` on the running loop; the callback that called this returns at once."""
        old = self._tasks.get(kind)
        if old is not None and not old.done():
            old.cancel()
        task = _loop().create_task(coro)
        task.add_done_callback(_retrieve)
        self._tasks[kind] = task
        return task

    def _is_current(self, kind: str) -> bool:
        return self._tasks.get(kind) is asyncio.current_task()

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks.values())

    def stop(self) -> None:
        """Cancel what runs (a sample run, a dataset run, a comparison)."""
        stopped = False
        for task in self._tasks.values():
            if not task.done():
                task.cancel()
                stopped = True
        if stopped:
            self.status.value = "<b>stopped</b>"

    # ---- one sample -----------------------------------------------------------------------
    def run_sample(self) -> asyncio.Task | None:
        """Run the edited prompt on the selected item; returns the task (None if the prompt is invalid).

        The commentary streams into `commentary` as it arrives; the verdict appears in `verdict`.
        """
        try:
            spec = self.current_spec()
        except SpecError as exc:
            self.status.value = f"<span class='harness-error'>cannot run: {_e(exc)}</span>"
            return None
        return self._spawn("sample", self._run_sample(spec, self.index))

    def _sample_settings(self) -> Settings:
        return replace(self.settings, offline_delay_ms=self.stream_delay_ms,
                       cache_mode="use" if self.use_cache.value else "off")

    def _set_commentary(self, text: str) -> None:
        self.commentary_text = text
        self.commentary_updates += 1
        self.commentary.value = self._commentary_markup(text)

    @staticmethod
    def _commentary_markup(text: str) -> str:
        placeholder = "<span style='color:#999'>(the commentary streams here)</span>"
        return f"<pre>{_e(text) or placeholder}</pre>"

    async def _run_sample(self, spec: PromptSpec, index: int) -> Verdict:
        row = self.data.iloc[[index]]
        cid = str(row["content_id"].iloc[0])
        where = self.where.value
        self.verdict.value = ""
        self.last_verdict = None
        self.commentary_updates = 0
        self._set_commentary("")
        self.status.value = f"running <b>{_e(cid)}</b> on {where} ({_e(spec.label)})…"
        started = time.perf_counter()
        try:
            if where == "workers":
                verdict = await self._sample_on_workers(spec, row)
            else:
                verdict = await self._sample_inline(spec, row)
        except asyncio.CancelledError:
            if self._is_current("sample"):  # not when a newer run replaced this one
                self.status.value = f"<b>stopped</b> after {time.perf_counter() - started:.1f} s"
            raise
        except Exception as exc:
            self.status.value = f"<span class='harness-error'>failed: {_e(type(exc).__name__)}: {_e(exc)}</span>"
            raise
        self.last_verdict = verdict
        self.verdict.value = verdict_html(verdict, self.gold_for(index), codes=spec.taxonomy.codes)
        self.status.value = (f"done: <b>{_e(verdict.outcome)}</b> in {time.perf_counter() - started:.2f} s "
                             f"({self.commentary_updates} commentary updates)")
        return verdict

    def gold_for(self, index: int) -> dict[str, int | None]:
        return gold_of(self.data.iloc[index], self.codes)

    async def _sample_inline(self, spec: PromptSpec, row: pd.DataFrame) -> Verdict:
        def on_event(event: Event) -> None:
            if event.type == "commentary":
                self._set_commentary(self.commentary_text + str(event.data.get("text", "")))
            elif event.type == "status" and event.data.get("state") == "retrying":
                self.status.value = f"retrying (try {event.data.get('job_try')}): {_e(event.data.get('error'))}"

        result = await run_inline(row, spec, settings=self._sample_settings(), on_event=on_event,
                                  progress=False, concurrency=1)
        self.last_result = result
        return result.verdicts[str(row["content_id"].iloc[0])]

    async def _sample_on_workers(self, spec: PromptSpec, row: pd.DataFrame) -> Verdict:
        from harness.batch import enqueue_dataframe_async

        cid = str(row["content_id"].iloc[0])
        url = await self._redis_url()
        run_id = f"lab-{spec.version}-{cid}-{uuid.uuid4().hex[:8]}"
        handle = await enqueue_dataframe_async(row, spec, redis_url=url, run_id=run_id, progress=False,
                                               cache="use" if self.use_cache.value else "off",
                                               settings=self.settings)
        verdict: Verdict | None = None
        try:
            self.status.value = f"queued <b>{_e(cid)}</b> for the workers (run {_e(run_id)})…"
            async for event in handle.events():
                if event.type == "commentary":
                    self._set_commentary(self.commentary_text + str(event.data.get("text", "")))
                elif event.type in ("result", "error") and event.data.get("verdict"):
                    verdict = Verdict.from_dict(event.data["verdict"])
                    break
                elif event.type == "status":
                    self.status.value = f"worker: {_e(event.data.get('state'))} (try {event.data.get('job_try')})"
            if verdict is None:
                pred = await handle.collect()
                r = pred.iloc[0]
                verdict = Verdict(cid, r["outcome"], error=r["error"], run_id=run_id)
        finally:
            with contextlib.suppress(Exception):
                await handle.close()
        return verdict

    async def _redis_url(self) -> str:
        from harness.redis_server import resolve_redis_url

        # may start the embedded redis-server: a blocking call, so off the event loop
        return await asyncio.to_thread(resolve_redis_url, self.redis_url)

    # ---- the dataset ----------------------------------------------------------------------
    def run_dataset(self, limit: int | None = None) -> asyncio.Task | None:
        """Run the edited prompt on the dataset (or its first `limit` items); returns the task.

        The progress bar follows the result events; at the end the metrics table and the wrong
        items (one button each, back to the sample view) appear. The task's result is a LabRun.
        """
        try:
            spec = self.current_spec()
        except SpecError as exc:
            self.dataset_status.value = f"<span class='harness-error'>cannot run: {_e(exc)}</span>"
            return None
        return self._spawn("dataset", self._run_dataset(spec, limit))

    def _frame(self, limit: int | None) -> pd.DataFrame:
        return self.data if not limit else self.data.head(int(limit))

    async def _run_dataset(self, spec: PromptSpec, limit: int | None) -> LabRun:
        try:
            run = await self._evaluate(spec, self._frame(limit))
        except asyncio.CancelledError:
            if self._is_current("dataset"):
                self.dataset_status.value = "<b>stopped</b>"
            raise
        except Exception as exc:
            self.dataset_status.value = f"<span class='harness-error'>failed: {_e(type(exc).__name__)}: {_e(exc)}</span>"
            raise
        self._show_run(run)
        return run

    async def _evaluate(self, spec: PromptSpec, df: pd.DataFrame, *, record: bool = True) -> LabRun:
        """One dataset run with the progress bar, inline or on workers; recorded in `runs`."""
        where = self.where.value
        self.progress.max = max(1, len(df))
        self.progress.value = 0
        self.progress.bar_style = "info"
        self.progress.description = f"0 / {len(df)}"
        self.dataset_status.value = f"running {_e(spec.label)} on {len(df)} items ({where})…"
        started = time.perf_counter()
        done: set[str] = set()

        def tick(event: Event) -> None:
            if event.type in ("result", "error") and event.content_id not in done:
                done.add(event.content_id)
                self.progress.value = len(done)
                self.progress.description = f"{len(done)} / {len(df)}"

        if where == "workers":
            predictions, run_id = await self._dataset_on_workers(spec, df, tick)
            result = None
        else:
            result = await run_inline(df, spec, settings=self.settings, on_event=tick, progress=False,
                                      concurrency=self.concurrency)
            predictions, run_id = result.predictions(), result.run_id
        self.progress.value = self.progress.max
        self.progress.description = f"{len(df)} / {len(df)}"
        self.progress.bar_style = "success"
        n = len(self.runs) + 1
        run = LabRun(label=f"run {n}: {spec.label} · {len(df)} items · {where}", spec=spec,
                     predictions=predictions, where=where, run_id=run_id, result=result,
                     elapsed_s=time.perf_counter() - started)
        if record:
            self.runs.append(run)
            self._refresh_compare_options()
        return run

    async def _dataset_on_workers(self, spec: PromptSpec, df: pd.DataFrame, tick) -> tuple[pd.DataFrame, str]:
        from harness.batch import enqueue_dataframe_async

        url = await self._redis_url()
        run_id = f"lab-{spec.name}-{spec.version}-{dataset_fingerprint(df)}-{uuid.uuid4().hex[:6]}"
        handle = await enqueue_dataframe_async(df, spec, redis_url=url, run_id=run_id, progress=False,
                                               settings=self.settings)
        try:
            self.dataset_status.value = (f"enqueued {handle.enqueued} jobs as run <code>{_e(run_id)}</code>; "
                                         "waiting for workers (`harness worker`)…")
            seen: set[str] = set()
            async for event in handle.events():
                tick(event)
                if event.type in ("result", "error"):
                    seen.add(event.content_id)
                    if len(seen) >= len(df):
                        break
            await handle.wait(60, poll_s=0.2)
            return await handle.collect(), run_id
        finally:
            with contextlib.suppress(Exception):
                await handle.close()

    def _show_run(self, run: LabRun) -> None:
        metrics = run.metrics()
        self.dataset_status.value = (f"<b>{_e(run.label)}</b> finished in {run.elapsed_s:.1f} s "
                                     f"{outcomes_html(metrics['outcomes'])}")
        self.metrics_html.value = metrics_html(metrics, run.codes)
        wrong = misclassified(run.predictions, run.codes)
        self.wrong_items = wrong
        self.wrong_buttons = []
        for r in wrong.head(MAX_WRONG_BUTTONS).itertuples(index=False):
            desc = f"{r.content_id}: " + "; ".join(
                p for p in (f"missed {r.missed}" if r.missed else "",
                            f"false alarm {r.false_alarms}" if r.false_alarms else "",
                            r.outcome if r.outcome != "ok" else "") if p)
            self.wrong_buttons.append(self._item_button(str(r.content_id), desc))
        more = ([W.HTML(f"… and {len(wrong) - MAX_WRONG_BUTTONS} more (see lab.wrong_items)")]
                if len(wrong) > MAX_WRONG_BUTTONS else [])
        self.wrong_box.children = [*self.wrong_buttons, *more] if len(wrong) else [W.HTML("<i>none</i>")]

    def _item_button(self, content_id: str, description: str) -> W.Button:
        button = W.Button(description=description[:120], tooltip=description,
                          layout=W.Layout(width="auto", max_width="100%"))
        button.add_class("harness-item-button")
        button.on_click(lambda _b, cid=content_id: self.open_item(cid))
        return button

    def open_item(self, content_id: str) -> int:
        """Select an item by content_id and switch to the sample view."""
        hits = (self.data["content_id"].astype(str) == str(content_id)).to_numpy().nonzero()[0]
        if not len(hits):
            raise KeyError(f"no item {content_id!r} in the dataset")
        self.select(int(hits[0]))
        self.tabs.selected_index = 0
        return int(hits[0])

    # ---- versions -------------------------------------------------------------------------
    def save_version(self, path: str | Path | None = None) -> Path:
        """Write the edited prompt to `path` (default: <folder>/<name>-<version>.toml)."""
        spec = self.current_spec()
        if path is None:
            path = Path(self.prompts_dir.value) / f"{spec.name}-{spec.version}.toml"
        path = spec.save(path)
        if path not in self.saved:
            self.saved.append(path)
        self.save_status.value = f"saved version <code>{_e(spec.version)}</code> to <code>{_e(path)}</code>"
        self._refresh_version()
        self._refresh_compare_options()
        return path

    def _guarded_save(self) -> None:
        try:
            self.save_version()
        except (SpecError, OSError) as exc:
            self.save_status.value = f"<span class='harness-error'>not saved: {_e(exc)}</span>"

    def _refresh_compare_options(self) -> None:
        opts: list[tuple[str, Any]] = [(run.label, ("run", i)) for i, run in enumerate(self.runs)]
        folder = Path(self.prompts_dir.value)
        files = sorted(set(self.saved) | (set(folder.glob("*.toml")) if folder.is_dir() else set()))
        opts += [(f"file: {p.name}", ("file", str(p))) for p in files]
        for dd, pick in ((self.compare_a, -2), (self.compare_b, -1)):
            dd.options = opts
            runs = [o for o in opts if o[1][0] == "run"]
            choice = runs[pick] if len(runs) >= 2 else (opts[pick] if len(opts) >= 2 else None)
            dd.value = choice[1] if choice else None

    def compare(self, a: Any = None, b: Any = None) -> asyncio.Task:
        """Compare two versions; returns a task whose result is the flips DataFrame.

        `a` and `b` may each be a LabRun, a RunResult, an index into `runs`, a ("run", i) or
        ("file", path) option, a PromptSpec or a saved prompt file (run on the dataset, first N
        as set in the dataset tab). With neither given: the last two dataset runs.
        """
        return self._spawn("compare", self._compare(a, b))

    async def _compare(self, a: Any, b: Any) -> pd.DataFrame:
        try:
            if a is None and b is None:
                if len(self.runs) < 2:
                    raise ValueError("compare needs two dataset runs (or two saved files); "
                                     f"there are {len(self.runs)} runs")
                a, b = self.runs[-2], self.runs[-1]
            self.compare_status.value = "comparing…"
            run_a = await self._as_run(a)
            run_b = await self._as_run(b)
        except asyncio.CancelledError:
            self.compare_status.value = "<b>stopped</b>"
            raise
        except Exception as exc:
            self.compare_status.value = f"<span class='harness-error'>cannot compare: {_e(exc)}</span>"
            raise
        codes = [c for c in run_a.codes if c in run_b.codes]
        flips = compare_runs(run_a.predictions, run_b.predictions, codes)
        self.last_comparison = flips
        texts = dict(zip(self.data["content_id"].astype(str), self.data["text"], strict=True))
        self.compare_html.value = comparison_html(
            [(run_a.label, compute_metrics(run_a.predictions, codes)),
             (run_b.label, compute_metrics(run_b.predictions, codes))], flips, codes, texts)
        ids = list(dict.fromkeys(flips["content_id"].astype(str)))
        self.flip_buttons = [
            self._item_button(cid, f"{cid}: " + ", ".join(flips.loc[flips["content_id"] == cid, "label"]))
            for cid in ids[:MAX_WRONG_BUTTONS]]
        self.flip_box.children = self.flip_buttons
        self.compare_status.value = f"a = {_e(run_a.label)}<br>b = {_e(run_b.label)}"
        return flips

    async def _as_run(self, x: Any) -> LabRun:
        if isinstance(x, LabRun):
            return x
        if isinstance(x, RunResult):
            return LabRun(f"{x.spec.label} · {len(x.items)} items", x.spec, x.predictions(), run_id=x.run_id,
                          result=x, elapsed_s=x.elapsed_s)
        if isinstance(x, tuple) and len(x) == 2 and x[0] in ("run", "file"):
            x = int(x[1]) if x[0] == "run" else Path(x[1])
        if isinstance(x, int):
            return self.runs[x]
        if isinstance(x, str | Path):
            x = PromptSpec.load(x)
        if isinstance(x, PromptSpec):
            spec = x.with_model(x.model or self.model_text.value.strip() or self.settings.model)
            return await self._evaluate(spec, self._frame(self.limit_input.value or None))
        raise TypeError(f"cannot compare {type(x).__name__}: give a run, a RunResult, a spec or a file")


def _version_of(path: Path) -> str | None:
    """The version a saved prompt file records in its first line."""
    try:
        with path.open(encoding="utf-8") as fh:
            first = fh.readline()
    except OSError:
        return None
    return first.removeprefix("# prompt version ").strip() if first.startswith("# prompt version ") else None
