"""The `harness` command: eval (the main job), worker-mode commands, and serve-llm."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from harness.config import CACHE_MODES

if TYPE_CHECKING:
    import pandas as pd


def _eval(args: argparse.Namespace) -> int:
    from harness.evaluate import evaluate

    runs = asyncio.run(evaluate(args.prompts or None, args.dataset, out_dir=args.out, model=args.model,
                                concurrency=args.concurrency, cache=args.cache, limit=args.limit,
                                progress=not args.no_progress, semantic_cache=args.semantic_cache,
                                semantic_threshold=args.semantic_threshold))
    status = 0
    for result, metrics in runs:
        if metrics["n_items"] and metrics["outcomes"]["error"] == metrics["n_items"]:
            first = next((v.error for v in result.verdicts.values() if v.error), "")
            print(f"harness: every item of {result.spec.label} ended in error; the first: {first}", file=sys.stderr)
            status = 1
    return status


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def _enqueue(args: argparse.Namespace) -> int:
    from harness.batch import enqueue_dataframe_async

    async def go() -> int:
        handle = await enqueue_dataframe_async(args.dataset, args.prompt, model=args.model, run_id=args.run_id,
                                               cache=args.cache, progress=not args.no_progress,
                                               queue_name=args.queue, semantic_cache=args.semantic_cache,
                                               semantic_threshold=args.semantic_threshold)
        p = await handle.progress()
        await handle.close()
        print(f"run {handle.run_id}: {p['items']} items, {handle.enqueued} jobs enqueued, "
              f"{handle.skipped} already had a verdict")
        print(f"follow it: harness status {handle.run_id} | harness tail {handle.run_id} | "
              f"harness collect {handle.run_id} --out results.csv")
        return 0

    return asyncio.run(go())


async def _collected(run_id: str, wait: float | None) -> pd.DataFrame:
    """A worker run's predictions, after waiting up to `wait` seconds for it to finish."""
    from harness.batch import open_run

    handle = await open_run(run_id)
    try:
        if wait is not None and not await handle.wait(wait, progress=True):
            print(f"not finished after {wait}s", file=sys.stderr)
        return await handle.collect()
    finally:
        await handle.close()


def _status(args: argparse.Namespace) -> int:
    pred = asyncio.run(_collected(args.run_id, args.wait))
    is_pending = pred["error"].fillna("").str.startswith("pending")
    pending = int(is_pending.sum())
    failed = int(pred["error"].fillna("").str.startswith("job failed").sum())
    counts = pred.loc[~is_pending, "outcome"].value_counts().to_dict()
    print(f"run {args.run_id}: {len(pred)} items, {len(pred) - pending - failed} with a verdict, "
          f"{failed} failed jobs, {pending} pending; outcomes: "
          + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none yet"))
    return 0 if pending == 0 else 3


def _collect(args: argparse.Namespace) -> int:
    out = args.out
    if not out.endswith((".csv", ".parquet")):
        raise ValueError(f"--out: expected a .csv or .parquet file name, got {out!r}")
    pred = asyncio.run(_collected(args.run_id, args.wait))
    if out.endswith(".parquet"):
        pred.to_parquet(out, index=False)
    else:
        pred.to_csv(out, index=False)
    print(f"wrote {len(pred)} rows to {out}: " + ", ".join(
        f"{k} {v}" for k, v in sorted(pred["outcome"].value_counts().items())))
    return 0


def _tail(args: argparse.Namespace) -> int:
    from harness.batch import open_run

    async def go() -> int:
        handle = await open_run(args.run_id)
        current = None
        try:
            async for event in handle.events(from_start=not args.new, until_done=not args.follow):
                if event.type == "commentary":
                    if event.content_id != current:
                        print(f"\n[{event.content_id}] ", end="")
                        current = event.content_id
                    print(event.data.get("text", ""), end="", flush=True)
                elif event.type == "status":
                    print(f"\n[{event.content_id}] {event.data.get('state')} "
                          f"try {event.data.get('job_try')}/{event.data.get('max_tries')}"
                          + (f" in {event.data['defer_s']}s: {event.data.get('error')}" if "defer_s" in event.data else ""),
                          flush=True)
                    current = None
                else:
                    v = event.data.get("verdict", {})
                    print(f"\n[{event.content_id}] {event.type}: outcome={v.get('outcome')} "
                          f"flagged={v.get('flagged')}" + (f" error={v.get('error')}" if v.get("error") else ""),
                          flush=True)
                    current = None
        finally:
            await handle.close()
        print()
        return 0

    return asyncio.run(go())


def _worker(args: argparse.Namespace) -> int:
    import logging

    from harness.worker import run_worker

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    return asyncio.run(run_worker(burst=args.burst, max_jobs=args.max_jobs, queue_name=args.queue,
                                  graceful_timeout_s=args.graceful_timeout))


def _redis(args: argparse.Namespace) -> int:
    from harness.redis_server import EMBEDDED_DIR, embedded_redis_url, stop_embedded_redis

    if args.stop:
        print("stopped the embedded Redis" if stop_embedded_redis() else "the embedded Redis was not running")
        return 0
    print(f"{embedded_redis_url(quiet=True)}  (data in {EMBEDDED_DIR})")
    return 0


def _semantic_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--semantic-cache", action="store_true",
                        help="near-duplicates reuse a verdict of the same prompt version and model")
    parser.add_argument("--semantic-threshold", type=float, default=None, metavar="X",
                        help="cosine similarity for a semantic hit (default: HARNESS_SEMANTIC_THRESHOLD or 0.9)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="score one or more prompts on a labelled dataset")
    ev.add_argument("prompts", nargs="*", help="prompt files (TOML); default: the bundled baseline")
    ev.add_argument("--dataset", "-d", default=None, help="CSV, JSONL or JSONL.gz; default: the bundled mini set")
    ev.add_argument("--out", "-o", default=None, help="report folder (default: reports/<timestamp>)")
    ev.add_argument("--model", "-m", default=None, help="model name (default: HARNESS_MODEL or the prompt's)")
    ev.add_argument("--concurrency", "-c", type=positive_int, default=None, help="parallel model calls (default 16)")
    ev.add_argument("--cache", choices=CACHE_MODES, default=None, help="response cache mode (default: use)")
    ev.add_argument("--limit", type=int, default=None, help="only the first N items")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    _semantic_args(ev)
    ev.set_defaults(func=_eval)

    from arq.constants import default_queue_name

    en = sub.add_parser("enqueue", help="send a dataset to the workers as one run")
    en.add_argument("dataset", help="CSV, JSONL or JSONL.gz")
    en.add_argument("--prompt", "-p", default=None, help="prompt file (TOML); default: the bundled baseline")
    en.add_argument("--run-id", default=None, help="default: derived from prompt version and dataset")
    en.add_argument("--model", "-m", default=None)
    en.add_argument("--cache", choices=CACHE_MODES, default=None)
    en.add_argument("--queue", default=default_queue_name)
    en.add_argument("--no-progress", action="store_true")
    _semantic_args(en)
    en.set_defaults(func=_enqueue)

    st = sub.add_parser("status", help="progress and outcomes of a worker run")
    st.add_argument("run_id")
    st.add_argument("--wait", type=float, default=None, metavar="SECONDS", help="wait for the run first")
    st.set_defaults(func=_status)

    co = sub.add_parser("collect", help="write a worker run's verdicts to CSV or Parquet")
    co.add_argument("run_id")
    co.add_argument("--out", "-o", required=True, help="FILE.csv or FILE.parquet")
    co.add_argument("--wait", type=float, default=None, metavar="SECONDS", help="wait for the run first")
    co.set_defaults(func=_collect)

    ta = sub.add_parser("tail", help="print a run's commentary and results as they stream in")
    ta.add_argument("run_id")
    ta.add_argument("--new", action="store_true", help="only new events, not the history")
    ta.add_argument("--follow", action="store_true", help="keep following after the run is done")
    ta.set_defaults(func=_tail)

    wo = sub.add_parser("worker", help="run an Arq worker for the harness tasks")
    wo.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    wo.add_argument("--max-jobs", type=positive_int, default=None, help="concurrent jobs (default 100)")
    wo.add_argument("--queue", default=default_queue_name)
    wo.add_argument("--graceful-timeout", type=float, default=60.0, help="seconds running jobs get on stop")
    wo.add_argument("--verbose", "-v", action="store_true", help="log every job")
    wo.set_defaults(func=_worker)

    rd = sub.add_parser("redis", help="start (or show) the embedded Redis; --stop stops it")
    rd.add_argument("--stop", action="store_true")
    rd.set_defaults(func=_redis)

    from harness.llm.server import register_cli

    register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `harness tail R | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except (ValueError, OSError, LookupError, RuntimeError) as exc:  # SpecError, DatasetError: ValueErrors
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"harness: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
