"""`germline ui`: the lineage explorer, a real server on 127.0.0.1 read over HTTP and in a real
headless browser (Debian's chromium, driven by Playwright).

The API tests run on `germline demo`'s lake (two seconds to make); the browser walk through
the whole page on the session's panel-small lake (conftest's `panel_small`) and, in `make
test-e2e`, on the lake owl-small left in an S3 bucket (the cluster job, tests/cluster_job.py);
the hostile-name test on a demo lake with nodes no API would name.
Where chromium is missing the browser tests skip, unless the run promises a browser
(GERMLINE_REQUIRE_BROWSER=1, as `make test` sets): then they fail.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import GERMLINE, free_port, germline
from deltalake import CommitProperties, DeltaTable, write_deltalake

from germline.lineage import Edge, EdgeKind, LineageStore, Node, NodeKind
from germline.storage import Lake, LakeFolders

KEY = "ui-test-key"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


@contextmanager
def ui_server(lake: Lake, *extra: str) -> Iterator[str]:
    """`germline ui` in its own process on a free port; its URL once it answers."""
    port = free_port()
    options = [
        arg for k, v in lake.storage_options.items() for arg in ("--storage-option", f"{k}={v}")
    ]
    proc = subprocess.Popen(
        [*GERMLINE, "--lake", lake.root, *options, "ui", "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while call(f"{url}/health")[0] != 200:
            assert proc.poll() is None, f"germline ui exited: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "germline ui did not answer within 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def call(url: str, key: str | None = None, opener: Any = None) -> tuple[int, Any, Any]:
    """(status, JSON body or text, headers) of a GET, 4xx and 5xx included."""
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=10) as reply:
            status, raw, headers = reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as exc:
        status, raw, headers = exc.code, exc.read(), exc.headers
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None, None
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw.decode(errors="replace"), headers


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake.resolve(tmp_path_factory.mktemp("ui") / "lake")
    germline("demo", lake=lake, check=True)
    return lake


@pytest.fixture(scope="module")
def server(demo_lake: Lake) -> Iterator[str]:
    with ui_server(demo_lake, "--api-key", KEY) as url:
        yield url


def test_search_neighbourhood_at_risk_and_details_answer_as_lineage_does(
    demo_lake: Lake, server: str
) -> None:
    graph = LineageStore(demo_lake).graph()
    teacher = graph.resolve("demo-owl-teacher")
    status, found, _ = call(f"{server}/api/search?q=OWL-TEACHER", KEY)
    assert status == 200 and found["hits"][0]["id"] == teacher
    status, found, _ = call(f"{server}/api/search?q=demo&kind=dataset", KEY)
    assert {h["kind"] for h in found["hits"]} == {"dataset"} and found["total"] >= 1

    status, drawn, _ = call(f"{server}/api/graph?id={teacher}&depth=6", KEY)
    expected = {n.id for n in graph.nodes()} & (
        {teacher}
        | {h.id for h in graph.ancestors(teacher)}
        | {h.id for h in graph.descendants(teacher)}
    )
    assert status == 200 and {n["id"] for n in drawn["nodes"]} == expected
    assert {(e["source"], e["target"], e["kind"]) for e in drawn["edges"]} == {
        (u, v, k) for u, v, k in graph.g.subgraph(expected).edges(data="kind")
    }
    status, capped, _ = call(f"{server}/api/graph?id={teacher}&depth=6&limit=3", KEY)
    assert len(capped["nodes"]) == 3 and capped["truncated"]

    status, risk, _ = call(f"{server}/api/at-risk?id=demo-owl-teacher", KEY)
    assert status == 200 and risk["at_risk_total"] == len(graph.at_risk(teacher))
    assert {h["id"] for h in risk["at_risk"]} == {h.id for h in graph.at_risk(teacher)}
    marked = {n["id"] for n in risk["nodes"] if n["at_risk"]}
    assert marked == {h.id for h in graph.at_risk(teacher)} & {n["id"] for n in risk["nodes"]}

    dataset = next(n for n in graph.nodes(NodeKind.DATASET))
    status, node, _ = call(f"{server}/api/node?id={dataset.id}", KEY)
    table = DeltaTable(dataset.uri, version=dataset.version)
    assert status == 200 and node["dataset"]["rows"] == table.to_pyarrow_table().num_rows
    assert [c["version"] for c in node["dataset"]["history"]] == [
        c["version"] for c in DeltaTable(dataset.uri).history()
    ]
    assert node["parents_total"] == len(graph.parents(dataset.id))


def test_the_key_is_required_and_signs_a_browser_in_once(server: str) -> None:
    assert call(f"{server}/api/summary")[0] == 401
    assert call(f"{server}/api/summary", "wrong")[0] == 401
    assert call(f"{server}/")[0] == 401
    assert call(f"{server}/health")[0] == 200
    status, summary, headers = call(f"{server}/api/summary", KEY)
    assert status == 200 and summary["kinds"]["model"] >= 4
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'self' rules
    assert headers["X-Content-Type-Options"] == "nosniff"
    # A browser: /?key=KEY once sets an HttpOnly cookie and redirects to the bare page.
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    assert call(f"{server}/?key=wrong", opener=browser)[0] == 401
    status, page, _ = call(f"{server}/?key={KEY}", opener=browser)
    assert status == 200 and "germline lineage" in page
    assert [c.name for c in jar] == ["germline_ui_key"] and jar_has_httponly(jar)
    assert call(f"{server}/api/summary", opener=browser)[0] == 200


def jar_has_httponly(jar: http.cookiejar.CookieJar) -> bool:
    return all(c.has_nonstandard_attr("HttpOnly") for c in jar)


def test_bad_requests_are_4xx_and_no_name_becomes_a_path(server: str) -> None:
    assert call(f"{server}/api/node?id=model:nothing", KEY)[0] == 404
    assert call(f"{server}/api/node", KEY)[0] == 400
    assert call(f"{server}/api/graph?id=demo-owl-teacher&depth=99", KEY)[0] == 400
    assert call(f"{server}/api/graph?id=demo-owl-teacher&depth=two", KEY)[0] == 400
    assert call(f"{server}/api/search?kind=planet", KEY)[0] == 400
    assert call(f"{server}/api/at-risk?id=demo-numbers-owl", KEY)[0] == 400  # not a model
    for run, name in [("..", "lineage"), ("demo-lineage.png", "x"), ("%2E%2E", "nodes"),
                      ("x", "..%2F..%2Fetc%2Fpasswd")]:  # fmt: skip
        assert call(f"{server}/api/report/{run}/{name}", KEY)[0] == 404, (run, name)


def test_a_lineage_commit_made_while_it_runs_shows_up(demo_lake: Lake, server: str) -> None:
    """The explorer keeps its snapshot and reloads in the background when lineage moves."""
    late = Node(id="run:late-arrival@000000000000", kind=NodeKind.RUN, name="late-arrival")
    LineageStore(demo_lake).add_nodes([late])
    deadline = time.monotonic() + 30
    while call(f"{server}/api/search?q=late-arrival", KEY)[1]["total"] == 0:
        assert time.monotonic() < deadline, "the new node did not show up within 30 s"
        time.sleep(0.5)
    assert call(f"{server}/api/node?id={late.id}", KEY)[1]["name"] == "late-arrival"


def test_a_taken_port_is_one_error_line_and_the_default_is_loopback(demo_lake: Lake) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        ran = germline("ui", "--port", str(port), lake=demo_lake, subprocess_=True)
    assert ran.returncode == 2 and ran.stderr.strip().count("\n") == 0
    assert ran.stderr.startswith("error: cannot listen on 127.0.0.1:")
    import psutil

    with ui_server(demo_lake) as url:
        port = int(url.rsplit(":", 1)[1])
        listening = [
            c.laddr for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
        ]
        assert listening and {a.ip for a in listening} == {"127.0.0.1"}


# -- in a browser -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("GERMLINE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"no browser at {CHROMIUM}: apt-get install chromium")
        pytest.skip(f"no browser at {CHROMIUM} (Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextmanager
def page_at(browser: Any, url: str) -> Iterator[Any]:
    """A fresh page signed in with the key; page errors collected on `page.errors`."""
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.goto(f"{url}/?key={KEY}")
    done(page, 1)
    try:
        yield page
    finally:
        context.close()


def done(page: Any, n: int) -> None:
    """Wait for the page's n-th finished action (the CSP forbids evaluated wait scripts)."""
    page.wait_for_selector(f'body[data-done="{n}"]', timeout=15_000)


def drawn(page: Any, selector: str = "node") -> set[str]:
    return set(page.evaluate(f"window.germlineUI.cy.$({selector!r}).map(n => n.id())"))


def test_hostile_names_and_values_render_as_text(browser: Any, tmp_path: Path) -> None:
    """Names in a lake's lineage tables need not have come through germline's API (the bulk
    API and other writers do not check them): a node named like markup, with markup in its
    attributes, linked to a dataset with markup in its commit metadata, shows as that text,
    and nothing in it runs."""
    lake = Lake.resolve(tmp_path / "lake")
    germline("demo", lake=lake, check=True)
    store = LineageStore(lake)
    graph = store.graph()
    dataset = next(n for n in graph.nodes(NodeKind.DATASET))
    note = CommitProperties(custom_metadata={"germline.note": HOSTILE})
    write_deltalake(dataset.uri, DeltaTable(dataset.uri).to_pyarrow_table().slice(0, 1),
                    mode="append", commit_properties=note)  # fmt: skip
    hostile = Node(id=f"run:{HOSTILE}", kind=NodeKind.RUN, name=HOSTILE, attrs={"param": HOSTILE})
    store.add_nodes([hostile])
    store.add_edges([Edge(dataset.id, hostile.id, EdgeKind.GENERATED_BY)])
    with ui_server(lake, "--api-key", KEY) as url, page_at(browser, url) as page:
        page.fill("#search", "<script>")
        page.click("#search-form button")
        done(page, 2)
        assert page.inner_text("#list li >> nth=0").startswith(HOSTILE)
        page.click("#list li >> nth=0")
        done(page, 3)
        assert page.inner_text("#details .node-name") == HOSTILE
        assert page.inner_text("#details pre") == json.dumps({"param": HOSTILE}, indent=2)
        assert drawn(page) >= {hostile.id, dataset.id}
        page.click(f"#details li[data-id='{dataset.id}']")
        done(page, 4)
        note = json.dumps({"germline.note": HOSTILE}, separators=(",", ":"))
        assert note in page.inner_text("#details table.history")
        assert page.evaluate("window.pwned === undefined")
        assert page.query_selector_all("#details script, #list script, #details img[src=x]") == []
        assert page.errors == []


@pytest.mark.slow
def test_the_explorer_on_panel_smalls_lake(
    browser: Any, panel_small: tuple[Lake, Any], tmp_path: Path
) -> None:
    """The main suite's walk through the whole page, on the lake of the session's panel-small
    run (a local lake; the walk on owl-small's lake in a bucket is in `make test-e2e`)."""
    lake, ran = panel_small
    assert ran.returncode == 0, ran.stderr[-2000:]
    walk_the_explorer(browser, lake, "panel-small", str(tmp_path / "ui.png"))


@pytest.mark.e2e
def test_the_explorer_on_owl_smalls_lake(browser: Any, owl_small_job: Any, tmp_path: Path) -> None:
    """The walk on the lake the cluster job left in its bucket; it also draws the README's
    picture (GERMLINE_UI_SCREENSHOT=docs/ui.png writes it into the repo)."""
    assert owl_small_job.status == "SUCCEEDED", owl_small_job.logs[-2000:]
    shot = os.environ.get("GERMLINE_UI_SCREENSHOT") or str(tmp_path / "ui.png")
    walk_the_explorer(browser, owl_small_job.lake, "owl-small", shot)


def walk_the_explorer(browser: Any, lake: Lake, experiment_name: str, shot: str) -> None:
    """Search a teacher, open it, open at-risk, open its dataset's history, its probe and the
    experiment's report: what is drawn and listed is what lineage says."""
    graph = LineageStore(lake).graph()
    teacher = next(n for n in graph.nodes(NodeKind.MODEL) if n.attrs.get("kind") == "teacher")
    at_risk = {h.id for h in graph.at_risk(teacher.id)}
    with ui_server(lake, "--api-key", KEY) as url, page_at(browser, url) as page:
        assert teacher.name in page.inner_text("#list")  # the summary lists the teachers
        page.fill("#search", teacher.name)
        page.select_option("#kind", "model")
        page.click("#search-form button")
        done(page, 2)
        page.click(f"#list li[data-id='{teacher.id}']")
        done(page, 3)
        near = graph.neighbourhood(teacher.id, 2)
        assert drawn(page) == set(near.nodes)
        assert page.inner_text("#details .node-name") == teacher.name

        page.click("#at-risk")
        done(page, 4)
        assert at_risk and drawn(page, "node.at-risk") == at_risk & set(near.nodes)
        listed = page.eval_on_selector_all("#list li", "items => items.map(i => i.dataset.id)")
        assert set(listed) == at_risk
        assert page.get_attribute("body", "data-mode") == "at-risk"

        data = next(c for c, k in graph.children(teacher.id) if k == EdgeKind.GENERATED_BY.value
                    and graph.node(c).kind is NodeKind.DATASET)  # fmt: skip
        page.click(f"#details li[data-id='{data}']")
        done(page, 5)
        # The table's commits, counted in its log (deltalake's own history() would wait on
        # the S3 server, which runs in this process, while holding the GIL).
        log = LakeFolders(lake).names(f"{graph.node(data).uri}/_delta_log")
        commits = [n for n in log if n.endswith(".json")]
        rows = page.eval_on_selector_all(
            "#details table.history tr", "rows => rows.map(r => r.innerText)"
        )
        assert commits and len(rows) == len(commits) + 1  # a header, then a row per commit
        assert any("germline.run_id" in r for r in rows)

        # The teacher's probe (its share with the interval) and the experiment's report.
        page.click(f"#details li[data-id='{teacher.id}']")
        done(page, 6)
        probe = next(graph.node(c) for c, k in graph.children(teacher.id) if k == "probed")
        page.click(f"#details li[data-id='{probe.id}']")
        done(page, 7)
        a = probe.attrs
        shown = f"{a['target']}: {a['share']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"
        assert page.inner_text("#details .probe-share").startswith(shown)
        experiment = graph.resolve(f"experiment/{experiment_name}")
        page.click(f"#details li[data-id='{teacher.id}']")
        done(page, 8)
        page.click(f"#details li[data-id='{experiment}']")
        done(page, 9)
        assert experiment_name in page.inner_text("#details pre")  # report.md, as text
        deadline = time.monotonic() + 15  # the pictures load after the panel is drawn
        while not all(images := page.eval_on_selector_all(
            "#details img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)"
        )) and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.1)
        assert len(images) >= 2 and all(images)  # the report's pictures, as served

        page.click(f"#details li[data-id='{teacher.id}']")
        done(page, 10)
        page.click("#at-risk")
        done(page, 11)
        page.screenshot(path=shot)
        assert page.errors == []
