"""The prompt lab in a real browser: JupyterLab, Debian's Chromium, driven by Playwright.

Runs notebooks/01_prompt_lab.ipynb in JupyterLab (Run > Run All Cells), presses the widget's Run
button and waits until the streamed commentary and the verdict are on the page, then saves a
screenshot to test-output/prompt_lab.png. Skips, saying why, when Chromium or Playwright is
missing (`apt-get install chromium`, `pip install playwright`; never `playwright install`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, free_port, stop

NOTEBOOK = ROOT / "notebooks" / "01_prompt_lab.ipynb"
SHOTS = ROOT / "test-output"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# JupyterLab settings for the test: never write the notebook back (it is stored without outputs),
# no news/update requests, every cell kept in the DOM.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def requirements() -> tuple[str, Path]:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        reason = f"Python Playwright is not installed ({exc}); pip install playwright"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    chromium = chromium_path()
    if chromium is None:
        reason = "Chromium not found at /usr/bin/chromium; apt-get install -y chromium"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    jupyter = Path(sys.executable).parent / "jupyter"
    if not jupyter.exists():
        reason = f"JupyterLab not installed next to {sys.executable}; pip install -e '.[notebook]'"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return chromium, jupyter


def _api(base: str, token: str, path: str, method: str = "GET") -> object:
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def wait_for_kernel(base: str, token: str, timeout: float = 90) -> None:
    """Until the notebook's kernel has started, answered and has the page connected."""
    deadline = time.monotonic() + timeout
    sessions: object = None
    while time.monotonic() < deadline:
        sessions = _api(base, token, "/api/sessions")
        kernels = [s["kernel"] for s in sessions or [] if s.get("path", "").endswith(NOTEBOOK.name)]  # type: ignore[union-attr]
        if kernels and kernels[0].get("execution_state") == "idle" and kernels[0].get("connections", 0) >= 1:
            return
        time.sleep(0.25)
    raise TimeoutError(f"the notebook's kernel was not ready in {timeout}s: {sessions}")


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A JupyterLab server on a free port, rooted at notebooks/; stopped by pid at teardown."""
    chromium, jupyter = requirements()
    settings = tmp_path / "lab-settings"
    for rel, body in LAB_SETTINGS.items():
        path = settings / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path / "cache"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime")}
    args = [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
            f"--ServerApp.token={token}", f"--ServerApp.root_dir={ROOT / 'notebooks'}",
            "--ServerApp.open_browser=False", f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    original = NOTEBOOK.read_bytes()
    checkpoints = NOTEBOOK.parent / ".ipynb_checkpoints"
    had_checkpoints = checkpoints.exists()
    log = open(tmp_path / "jupyterlab.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}: "
                                   f"{(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield base, token, chromium
    finally:
        try:  # shut the kernels down through the API, then the server by its pid
            for session in _api(base, token, "/api/sessions") or []:  # type: ignore[union-attr]
                _api(base, token, f"/api/sessions/{session['id']}", method="DELETE")
        except Exception:  # noqa: BLE001 - the server may be gone already
            pass
        stop(proc)
        log.close()
        if not had_checkpoints:  # JupyterLab's checkpoint of the opened notebook (git-ignored)
            shutil.rmtree(checkpoints, ignore_errors=True)
        if NOTEBOOK.read_bytes() != original:  # never leave outputs in the stored notebook
            NOTEBOOK.write_bytes(original)
            pytest.fail("JupyterLab wrote to the notebook during the test; restored it")


def test_prompt_lab_streams_commentary_and_shows_the_verdict_in_jupyterlab(jupyterlab):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    base, token, chromium = jupyterlab
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-CodeCell")
            wait_for_kernel(base, token)

            # Run > Run All Cells (again if the kernel was not listening yet)
            for attempt in range(3):
                page.locator(".lm-MenuBar-item", has_text="Run").first.click()
                page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
                try:
                    page.wait_for_function(
                        """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                                .some(e => /\\[(\\*|\\d+)\\]/.test(e.innerText))""", timeout=15_000)
                    break
                except PlaywrightTimeout:
                    if attempt == 2:
                        raise
            page.wait_for_selector(".harness-lab .harness-run")
            page.wait_for_function(
                """() => {
                    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                        .map(e => e.innerText.trim());
                    return prompts.length > 0 && prompts.every(t => /^\\[\\d+\\]:$/.test(t));
                }""", timeout=180_000)

            # record, in the page, every change of the commentary and verdict widgets, in order
            page.evaluate(
                """() => {
                    const c = document.querySelector('.harness-lab .harness-commentary');
                    const v = document.querySelector('.harness-lab .harness-verdict');
                    window.__timeline = [];
                    new MutationObserver(() => {
                        const t = c.innerText.trim();
                        if (t.startsWith('Commentary')) window.__timeline.push(['commentary', t.length]);
                    }).observe(c, {subtree: true, childList: true, characterData: true});
                    new MutationObserver(() => {
                        window.__timeline.push(['verdict', v.innerText.includes('outcome') ? 1 : 0]);
                    }).observe(v, {subtree: true, childList: true, characterData: true});
                }""")
            page.locator(".harness-lab .harness-commentary").scroll_into_view_if_needed()
            page.locator(".harness-lab .harness-run").click()
            page.wait_for_function(
                "() => window.__timeline.filter(e => e[0] === 'commentary').length >= 4", timeout=60_000)
            page.screenshot(path=str(SHOTS / "prompt_lab_streaming.png"))  # mid-stream, unless the machine is slow
            page.wait_for_function(
                """() => document.querySelector('.harness-lab .harness-status').innerText.includes('done')
                        && document.querySelector('.harness-lab .harness-verdict').innerText.includes('outcome')""",
                timeout=60_000)

            timeline = page.evaluate("() => window.__timeline")
            first_verdict = next(i for i, (kind, shown) in enumerate(timeline) if kind == "verdict" and shown)
            lengths = [n for kind, n in timeline[:first_verdict] if kind == "commentary"]
            assert len(set(lengths)) >= 5, f"commentary arrived in too few pieces before the verdict: {timeline}"
            assert lengths == sorted(lengths), f"commentary should only grow: {lengths}"
            commentary = page.locator(".harness-lab .harness-commentary").inner_text()
            verdict = page.locator(".harness-lab .harness-verdict").inner_text()
            assert commentary.startswith("Commentary:") and '"flagged"' in commentary
            assert "outcome ok" in verdict and "gold" in verdict and "latency" in verdict
            assert "agrees with gold" in verdict or "disagrees with gold" in verdict

            lab = page.locator(".harness-lab")
            lab.scroll_into_view_if_needed()
            page.set_viewport_size({"width": 1400, "height": 2000})
            lab.screenshot(path=str(SHOTS / "prompt_lab.png"))
            assert (SHOTS / "prompt_lab.png").stat().st_size > 10_000
        except Exception:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(SHOTS / "prompt_lab_failure.png"))
                print(f"screenshot of the failure: {SHOTS / 'prompt_lab_failure.png'}")
            raise
        finally:
            browser.close()
