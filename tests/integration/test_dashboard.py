"""The dashboard in a real browser (issue #9): headless Chromium driven by Playwright.

Debian's ``chromium`` is the browser (``scripts/ensure-chromium.sh`` installs it);
Playwright's own browser download is never used. The server and agent are the real
processes of ``conftest``, running real containers. The test takes the screenshot the
README shows; with GAMEPIPELINE_UPDATE_SCREENSHOT=1 it replaces ``docs/dashboard.png``,
otherwise it lands in the test's temporary folder so a test run leaves the tree clean.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.server.app import start_server

from .conftest import ROOT, Process, Server
from .server_peer import eventually, peer_factory

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "docs" / "dashboard.png"

GREETER = """\
name: greeter
description: Say hello and show the output of a commands step
args: [WHO]
envs: [GREETER_TOKEN]
steps:
  - name: hello
    container:
      image: gamepipeline/stand-in:busybox
      environment:
        TOKEN: ${{ envs.GREETER_TOKEN }}
      commands:
        - echo "hello from ${{ args.WHO }}"
        - echo "token is $TOKEN"
"""

SLEEPER = """\
name: sleeper
steps:
  - name: nap
    container:
      image: gamepipeline/stand-in:busybox
      commands:
        - sleep 60
  - name: never
    container:
      image: gamepipeline/stand-in:busybox
      commands:
        - echo unreachable
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "no /usr/bin/chromium: run scripts/ensure-chromium.sh"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(
        base_url=f"http://127.0.0.1:{server.http_port}",
        viewport={"width": 1280, "height": 800},
    )
    # The server wants a token (conftest): give the page one, as an operator would,
    # unless one was entered already.
    key, token = "'gamepipeline.token'", json.dumps(server.token)
    context.add_init_script(
        f"if (!localStorage.getItem({key})) localStorage.setItem({key}, {token})"
    )
    opened = context.new_page()
    opened.set_default_timeout(20_000)
    yield opened
    context.close()


def submit_document(page: Page, document: str, args: str = "", envs: str = "") -> str:
    page.goto("/#/submit")
    page.select_option("#template", "(a pipeline document)")
    page.fill("#document", document)
    page.fill("#doc-args", args)
    page.fill("#doc-envs", envs)
    page.click("#submit")
    page.wait_for_url(re.compile(r"#/pipelines/[0-9a-f]+$"))
    return page.url.rsplit("/", 1)[1]


def pipeline_state(page: Page) -> str:
    state = page.locator("#pipeline h2 .badge").get_attribute("data-state")
    return state or ""


def test_dashboard_submits_watches_cancels_and_shows_the_fleet(
    page: Page,
    server: Server,
    agent: Process,
    node_id: str,
    cleanup_containers: list[str],
    tmp_path: Path,
) -> None:
    page.goto("/")
    node_row = page.locator(f"tr[data-node='{node_id}']")
    expect(node_row.locator(".badge")).to_have_attribute("data-state", "online")

    # A pipeline submitted through the form runs to the end, live on its page.
    done = submit_document(
        page, GREETER, args="WHO=the dashboard", envs="GREETER_TOKEN=tok-s3cret-42"
    )
    expect(page.locator("#pipeline h2 .badge")).to_have_attribute(
        "data-state", "completed", timeout=120_000
    )
    # A finished pipeline has no cancel button, and nothing stands in its place
    # (replaceChildren once showed the missing button as the text "null").
    expect(page.locator("#cancel")).to_have_count(0)
    head_text = page.locator("#pipeline").inner_text()
    assert not re.search(r"\bnull\b", head_text), head_text
    output = page.locator("pre[data-output='0']")
    expect(output).to_contain_text("hello from the dashboard")
    expect(output).to_contain_text("token is ***")
    assert "tok-s3cret-42" not in page.content()

    # Another is canceled from its page while its first step sleeps.
    sleeper = submit_document(page, SLEEPER)
    expect(page.locator("tr[data-step='0'] .badge")).to_have_attribute(
        "data-state", "running", timeout=60_000
    )
    page.click("#cancel")
    expect(page.locator("#pipeline h2 .badge")).to_have_attribute(
        "data-state", "canceled", timeout=60_000
    )
    expect(page.locator("tr[data-step='1'] .badge")).to_have_attribute(
        "data-state", "skipped"
    )
    assert server.api.pipeline(sleeper)["state"] == "canceled"

    # The fleet view lists both, newest first, and filters by state.
    page.goto("/")
    rows = page.locator("#pipelines tbody tr")
    expect(rows).to_have_count(2)
    assert rows.nth(0).get_attribute("data-pipeline") == sleeper
    assert rows.nth(1).get_attribute("data-pipeline") == done
    expect(node_row.locator(".badge")).to_have_attribute("data-state", "online")
    shot = SCREENSHOT if os.environ.get("GAMEPIPELINE_UPDATE_SCREENSHOT") else None
    page.screenshot(path=str(shot or tmp_path / "dashboard.png"), full_page=True)
    page.select_option("#filter-state", "completed")
    expect(rows).to_have_count(1)
    assert rows.nth(0).get_attribute("data-pipeline") == done

    # The node goes into maintenance and back.
    node_row.locator("button[data-action='maintenance']").click()
    expect(node_row.locator(".badge")).to_have_attribute("data-state", "maintenance")
    assert server.api.nodes()[0]["state"] == "maintenance"
    node_row.locator("button[data-action='enable']").click()
    expect(node_row.locator(".badge")).to_have_attribute("data-state", "online")


def test_dashboard_sends_the_token_it_was_given_as_a_bearer_token(
    page: Page, server: Server
) -> None:
    seen: list[str | None] = []
    page.on(
        "request",
        lambda request: (
            seen.append(request.headers.get("authorization"))
            if "/api/" in request.url
            else None
        ),
    )
    page.goto("/")
    page.fill("#token", "operator-token")
    page.click("#token-form button")
    page.wait_for_load_state("networkidle")
    page.reload()
    page.wait_for_load_state("networkidle")

    assert "Bearer operator-token" in seen
    assert page.evaluate("localStorage.getItem('gamepipeline.token')") == (
        "operator-token"
    )


def test_dashboard_submits_a_shipped_template_through_the_form_built_from_its_args(
    page: Page,
    server: Server,
    agent: Process,
    node_id: str,
    cleanup_containers: list[str],
) -> None:
    """The form lists the server's templates and grows one field per arg and env."""
    root = Path("/data/gamepipeline-tests") / f"form-{uuid.uuid4().hex[:8]}"
    leftover = root / "volumes" / "old-1"
    leftover.mkdir(parents=True)
    page.goto("/#/submit")

    page.select_option("#template", "instance-recycle")
    expect(page.locator("#submit-form")).to_contain_text("Recycle a GameInstance")
    page.fill("input[data-field='args.INSTANCE']", "old-1")
    page.fill("input[data-field='envs.BEAGLE_WIND_ROOT']", str(root))
    page.select_option("#node", node_id)
    page.click("#submit")
    page.wait_for_url(re.compile(r"#/pipelines/[0-9a-f]+$"))

    try:
        expect(page.locator("#pipeline h2 .badge")).to_have_attribute(
            "data-state", "completed", timeout=120_000
        )
        pipeline_id = page.url.rsplit("/", 1)[1]
        stored = server.api.pipeline(pipeline_id)
        assert stored["model"] == "instance-recycle"
        assert stored["args"] == {"INSTANCE": "old-1"}
        assert not leftover.exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_dashboard_shows_an_agent_refused_for_a_node_another_holds(
    browser: Browser, tmp_path: Path
) -> None:
    """The fleet's node row says which agent was turned away and how often, as the
    API's node view does; the note goes once that agent gets in."""
    holder_instance = pb.AgentInstance(instance_id="holder", pid=4242)
    second_instance = pb.AgentInstance(instance_id="second", pid=5151)
    running = start_server(db_path=tmp_path / "server.db", offline_after_seconds=3)
    context = browser.new_context(base_url=f"http://127.0.0.1:{running.http_port}")
    try:
        with peer_factory(running) as peers:
            holder = peers("node-r")
            holder.register(instance=holder_instance)
            for _ in range(2):
                with pytest.raises(AssertionError):
                    peers("node-r").register(instance=second_instance)

            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto("/")
            note = page.locator("tr[data-node='node-r'] .refused")
            expect(note).to_have_attribute("data-refused", "2")
            expect(note).to_contain_text(
                "another agent (host node-r.test, pid 5151) refused 2 times, last "
            )
            assert (note.get_attribute("title") or "").startswith(
                "instance second from ipv4:127.0.0.1:"
            )

            holder.close()
            eventually(lambda: peers("node-r").register(instance=second_instance))
            page.reload()
            row = page.locator("tr[data-node='node-r']")
            expect(row.locator(".badge")).to_have_attribute("data-state", "online")
            expect(row.locator(".refused")).to_have_count(0)
    finally:
        context.close()
        running.stop()
