"""Benchmark of `germline ui` on the lineage benchmark's lake: first paint and each click in a
real browser, against the one-second target, and against asking the CLI the same questions.

What it measures, and how:

* start       -- `germline ui` spawned until it answers /health (the graph loads before the
                 page is served). Reported, no target.
* first paint -- a fresh browser context (empty cache) opens the page until the page says it
                 is drawn (`body[data-done]`): HTML, scripts, the summary call and its list.
* clicks      -- for `--clicks` models drawn at random (seeded) from the lake, plus its first
                 model (the one with the most descendants, the worst case for at-risk): type
                 the name and search, click the hit (neighbourhood drawn and details shown),
                 click at-risk, click the first dataset in its details. Each is timed from the
                 click to the page's `data-done` for it, in Chromium (Debian's, through
                 Playwright), wall clock, as the user waits for it.
* baseline    -- the same questions asked of the CLI, a fresh process each
                 (`germline lineage show` and `lineage at-risk`), which is what they cost
                 without the explorer: each loads the graph first. Ratio: click / CLI.

Target (issue 19): first paint and every click under one second on the 100,000-node lake.

    python bench/lineage.py --lake /tmp/lake100k --keep      # once: the lake (about a minute)
    python bench/ui.py --lake /tmp/lake100k [--clicks 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from germline.lineage import LineageStore, NodeKind

TARGET_S = 1.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(lake: str) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    command = [str(BIN / "germline"), "--lake", lake, "ui", "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"germline ui exited: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=30) as reply:
                if reply.status == 200:
                    return proc, url, time.perf_counter() - start
        except OSError:
            time.sleep(0.1)


class Page:
    """One browser page on the explorer, each action timed to the page's own `data-done`."""

    def __init__(self, browser: Any, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1500, "height": 900})
        self.page = self.context.new_page()
        self.count = 0
        start = time.perf_counter()
        self.page.goto(url)
        self.first_paint = self._wait(start)

    def _wait(self, start: float) -> float:
        self.count += 1
        self.page.wait_for_selector(f'body[data-done="{self.count}"]', timeout=60_000)
        return time.perf_counter() - start

    def act(self, do: Any) -> float:
        start = time.perf_counter()
        do(self.page)
        return self._wait(start)

    def close(self) -> None:
        self.context.close()


def search(name: str) -> Any:
    def do(page: Any) -> None:
        page.fill("#search", name)
        page.click("#search-form button")

    return do


def click(selector: str) -> Any:
    return lambda page: page.click(selector)


def cli(lake: str, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([str(BIN / "germline"), "--lake", lake, "lineage", *args],
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(ordered), "median": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "max": ordered[-1]}  # fmt: skip


def run(args: argparse.Namespace, lake: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    graph = LineageStore(lake).graph()
    models = sorted(n for n, k in graph.g.nodes(data="kind") if k == NodeKind.MODEL.value)
    picks = [models[0], *random.Random(args.seed).sample(models, args.clicks)]
    nodes = len(graph)
    del graph
    proc, url, started = start_ui(lake)
    log(f"germline ui answered after {started:.1f} s")
    times: dict[str, list[float]] = {"first paint": [], "search": [], "open": [],
                                     "at-risk": [], "dataset": []}  # fmt: skip
    worst: dict[str, float] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for _ in range(args.paints):
                page = Page(browser, url)
                times["first paint"].append(page.first_paint)
                page.close()
            page = Page(browser, url)
            for i, model in enumerate(picks):
                name = model.split(":", 1)[1].rsplit("@", 1)[0]
                row = {
                    "search": page.act(search(name)),
                    "open": page.act(click(f"#list li[data-id='{model}']")),
                    "at-risk": page.act(click("#at-risk")),
                }
                dataset = page.page.query_selector("#details li[data-id^='dataset:']")
                if dataset is not None:
                    row["dataset"] = page.act(lambda p, d=dataset: d.click())
                if i == 0:
                    worst = row
                for action, seconds in row.items():
                    times[action].append(seconds)
                log(f"{i + 1}/{len(picks)} {name}: "
                    + ", ".join(f"{a} {s:.3f} s" for a, s in row.items()))  # fmt: skip
            inside = page.page.evaluate("window.germlineUI.timings")
            page.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log("the CLI, for the same questions")
    cli_show = [cli(lake, "show", m) for m in picks[: args.cli_runs]]
    cli_risk = [cli(lake, "at-risk", m) for m in picks[: args.cli_runs]]
    actions = {a: stats(v) for a, v in times.items() if v}
    # Where a click's time went, as the page measured it: the API calls, then drawing.
    split = {}
    for action in ("open", "at-risk"):
        rows = [t for t in inside if t["action"] == action and t["fetch_ms"] is not None]
        split[action] = {k: statistics.median(t[k] for t in rows) / 1000
                         for k in ("fetch_ms", "draw_ms")}  # fmt: skip
    return {"nodes": nodes, "start_s": started, "actions": actions,
            "worst_model": picks[0], "worst": worst, "split": split,
            "cli": {"show": stats(cli_show), "at-risk": stats(cli_risk)}}  # fmt: skip


def machine() -> dict[str, str]:
    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout
    return {"python": platform.python_version(), "cpus": str(os.cpu_count()),
            "machine": platform.machine(), "chromium": chromium.strip()}  # fmt: skip


def report(data: dict[str, Any]) -> None:
    print(f"\ngermline ui benchmark -- {', '.join(f'{k} {v}' for k, v in data['machine'].items())}")
    print(f"lake: {data['nodes']:,} nodes; `germline ui` answered after {data['start_s']:.1f} s")
    print(f"{'action':<12} {'n':>3} {'median':>8} {'p90':>8} {'max':>8}  target  result")
    for action, s in data["actions"].items():
        ok = "ok" if s["max"] < TARGET_S else "MISSED"
        print(f"{action:<12} {s['n']:>3} {s['median']:>7.3f}s {s['p90']:>7.3f}s {s['max']:>7.3f}s"
              f"  < {TARGET_S:g} s  {ok}")  # fmt: skip
    print(f"worst case ({data['worst_model']}): "
          + ", ".join(f"{a} {s:.3f} s" for a, s in data["worst"].items()))  # fmt: skip
    for action, split in data["split"].items():
        print(
            f"{action}, medians in the page: API calls {split['fetch_ms']:.3f} s, "
            f"drawing {split['draw_ms']:.3f} s"
        )
    for question, action in (("show", "open"), ("at-risk", "at-risk")):
        c, u = data["cli"][question]["median"], data["actions"][action]["median"]
        print(
            f"baseline `germline lineage {question}`: median {c:.2f} s a call; "
            f"the explorer's {action} click {u:.3f} s ({u / c:.2f}x)"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lake", help="a lake with a lineage graph (default: bench/lineage.py's "
                   "100,000-node lake, built in a temp folder)")  # fmt: skip
    p.add_argument("--clicks", type=int, default=20, help="models clicked through")
    p.add_argument("--paints", type=int, default=5, help="first paints, each a fresh context")
    p.add_argument("--cli-runs", type=int, default=3, help="CLI calls per question")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)
    lake, made = args.lake, None
    if lake is None:
        made = lake = tempfile.mkdtemp(prefix="germline-bench-ui-")
        log(f"building the 100,000-node lake in {lake} (bench/lineage.py)")
        subprocess.run([sys.executable, str(REPO / "bench" / "lineage.py"), "--lake", lake,
                        "--queries", "1"], check=True, capture_output=True)  # fmt: skip
    try:
        data = run(args, lake)
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
    data["machine"] = machine()
    report(data)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    return 0 if all(s["max"] < TARGET_S for s in data["actions"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
