"""The live page of a state (GET /ui/{tenant}/{fsa}; app/api/ui.py, app/ui/).

Over plain HTTP: the page and its two files are served without a key and under a strict Content
Security Policy, and nothing else is served under /ui. In a real headless Chromium, against the
real service with API keys: the key entered in the page opens the state's tree; a delta from
another client appears without a reload; the version slider shows an earlier state; a change
shows its diff and a key its history; a slice shows its summary; a refused key asks again. No
test sees a violation of the page's policy. The first writes a screenshot to
test-artifacts/ui.png.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import PROBLEM_JSON, ROOT, serving
from playwright.async_api import Browser, Page, async_playwright, expect

from app.domain.keys import NewKey

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_INSTALLED = CHROMIUM.exists()
ARTIFACTS = ROOT / "test-artifacts"
T, F = "acme", "launch"
PAGE = f"/ui/{T}/{F}"
WAIT_MS = 10_000  # the most an expected text may take to show up; generous, for slow machines


# ---------------------------------------------------------------- plain HTTP


async def test_the_page_and_its_files_are_served_without_a_key_under_a_strict_policy(client, db):
    await db.create_key(NewKey.make([T], "read"))  # keys exist: the API wants one
    assert (await client.get(f"/state/{T}/{F}")).status_code == 401

    page = await client.get(PAGE)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    for directive in (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
    ):
        assert directive in policy
    assert "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    # no inline script or style (the policy would block them): every script is a file of the page
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/ui/ui.js" defer>']
    assert "style=" not in page.text and "<style" not in page.text

    for name, media_type in (("ui.js", "text/javascript"), ("ui.css", "text/css")):
        answer = await client.get(f"/ui/{name}")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith(media_type)
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert "innerHTML" not in (await client.get("/ui/ui.js")).text


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/ui/index.html", 404),  # the page only under a state's address
        ("/ui/ui.py", 404),
        ("/ui/__init__.py", 404),
        ("/ui/..%2Fapi%2Fui.py", 404),
        ("/ui/%2E%2E/api/ui.py", 404),
        ("/ui/t/f/ui.js", 404),
        ("/ui", 404),
        ("/ui/t/%2E%2E", 422),  # not a state id
        (f"/ui/{T}/{'x' * 200}", 422),
    ],
)
async def test_nothing_else_is_served_under_ui(client, url: str, status: int):
    answer = await client.get(url)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert answer.json()["success"] is False


# ---------------------------------------------------------------- in a browser


@dataclass
class Service:
    url: str
    read_key: NewKey  # what the page is given
    write_key: NewKey  # what the other client writes with

    async def write(self, delta: dict[str, Any], **params: str) -> int:
        """A delta applied by another client than the page; its version."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            answer = await http.post(f"/state/{T}/{F}/delta", json=delta, params=params, headers=bearer(self.write_key))
        assert answer.status_code == 200, answer.text
        return answer.json()["version"]


def bearer(key: NewKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.key}"}


@pytest.fixture
async def service(settings, db) -> AsyncIterator[Service]:
    """The service on a socket, with keys (made before it starts, so it wants one at once) and a
    state of two versions: v1 by DesignBot in lineage sprint-7, v2 by ImplBot in sprint-8."""
    read_key, write_key = NewKey.make([T], "read"), NewKey.make([T], "write")
    for key in (read_key, write_key):
        await db.create_key(key)
    async with serving(settings) as url:
        running = Service(url, read_key, write_key)
        await running.write(
            {"tasks.T1.status": "OPEN", "tasks.T1.owner": "DesignBot", "tasks.T2.status": "OPEN", "metrics.ctr": 0.1},
            actor="DesignBot",
            lineage_id="sprint-7",
        )
        await running.write(
            {"tasks.T1.status": "IN_PROGRESS", "metrics.ctr": {"$inc": 0.1}}, actor="ImplBot", lineage_id="sprint-8"
        )
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM_INSTALLED:
        pytest.skip(f"no Chromium at {CHROMIUM} to run the page in (Debian: apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh tab; the test fails if the page's policy blocked anything or a script threw."""
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    opened = await context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    opened.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if "Content Security Policy" in message.text or "Trusted Type" in message.text
            else None
        ),
    )
    try:
        yield opened
    finally:
        await context.close()
    assert problems == []


def leaf(page: Page, path: str):
    """The value shown for a dotted path of the state's tree."""
    return page.locator(f'#tree .leaf[data-path="{path}"] .value')


async def sign_in(page: Page, key: NewKey | str) -> None:
    """Answers the page's key dialog."""
    dialog = page.locator("#key-dialog")
    await expect(dialog).to_be_visible(timeout=WAIT_MS)
    await page.locator("#key-input").fill(key if isinstance(key, str) else key.key)
    await page.locator("#key-form button[type=submit]").click()


async def test_the_page_shows_the_state_and_a_change_by_another_client_without_reload(service: Service, page: Page):
    await page.goto(service.url + PAGE)
    await sign_in(page, service.read_key)
    await expect(leaf(page, "metrics.ctr")).to_have_text("0.2", timeout=WAIT_MS)
    await expect(page.locator("#status")).to_have_text("live", timeout=WAIT_MS)
    await expect(page.locator("#current-version")).to_have_text("2")
    # the change feed lists the log's changes, newest first, with who made them in which lineage
    await expect(page.locator("#feed .change")).to_have_count(2)
    newest = page.locator("#feed .change").first
    await expect(newest.locator(".ver")).to_have_text("v2")
    await expect(newest.locator(".actor")).to_have_text("ImplBot")
    await expect(newest.locator(".lineage")).to_have_text("sprint-8")

    version = await service.write(
        {"metrics.ctr": {"$inc": 0.5}, "tasks.T3.status": "OPEN"}, actor="Reviewer", lineage_id="review-1"
    )
    await expect(leaf(page, "metrics.ctr")).to_have_text("0.7", timeout=WAIT_MS)
    await expect(page.locator("#current-version")).to_have_text(str(version))
    await expect(page.locator("#feed .change").first.locator(".actor")).to_have_text("Reviewer")
    await expect(page.locator("#feed .change").first.locator(".lineage")).to_have_text("review-1")
    await expect(page.locator('#tree details[data-path="tasks"] > summary .count')).to_have_text("{3}")
    # the key stays in this tab only
    assert await page.evaluate("sessionStorage.getItem('sms-api-key')") == service.read_key.key
    assert await page.evaluate("localStorage.length") == 0

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "ui.png", full_page=True)


async def test_the_version_slider_shows_an_earlier_state(service: Service, page: Page):
    await page.goto(service.url + PAGE)
    await sign_in(page, service.read_key)
    await expect(leaf(page, "metrics.ctr")).to_have_text("0.2", timeout=WAIT_MS)

    await page.locator("#version-slider").fill("1")
    await expect(leaf(page, "metrics.ctr")).to_have_text("0.1", timeout=WAIT_MS)
    await expect(page.locator("#version-label")).to_have_text("v1 of 2")
    await expect(page.locator("#past-banner")).to_be_visible()

    await page.locator("#version-slider").fill("0")
    await expect(page.locator("#tree")).to_have_text("The state was empty at version 0.", timeout=WAIT_MS)

    # while an old version is shown, a new change arrives in the feed but leaves the tree alone
    await page.locator("#version-slider").fill("1")
    await expect(leaf(page, "metrics.ctr")).to_have_text("0.1", timeout=WAIT_MS)
    await service.write({"metrics.ctr": 5})
    await expect(page.locator("#version-label")).to_have_text("v1 of 3", timeout=WAIT_MS)
    await expect(leaf(page, "metrics.ctr")).to_have_text("0.1")

    await page.locator("#latest-button").click()
    await expect(leaf(page, "metrics.ctr")).to_have_text("5", timeout=WAIT_MS)
    await expect(page.locator("#past-banner")).to_be_hidden()


async def test_a_change_shows_its_diff_and_a_key_its_history(service: Service, page: Page):
    await page.goto(service.url + PAGE)
    await sign_in(page, service.read_key)
    await expect(page.locator("#feed .change")).to_have_count(2, timeout=WAIT_MS)

    await page.locator('#feed .change[data-version="2"] button').click()
    await expect(page.locator("#inspector-title")).to_have_text("Change v2")
    inspector = page.locator("#inspector")
    await expect(inspector).to_contain_text("ImplBot")
    await expect(inspector).to_contain_text("sprint-8")
    await expect(inspector).to_contain_text("Diff v1 → v2", timeout=WAIT_MS)
    patch = inspector.locator(".ops").last
    await expect(patch.locator("li")).to_have_count(2)
    await expect(patch).to_contain_text('replace/tasks/T1/status"IN_PROGRESS"')
    await expect(patch).to_contain_text("replace/metrics/ctr0.2")

    # a member is folded at first: unfold it, then ask for the history of one of its keys
    await page.locator('#tree details[data-path="tasks.T1"] > summary .count').click()
    await page.locator('#tree .leaf[data-path="tasks.T1.status"] .key').click()
    await expect(page.locator("#inspector-title")).to_have_text("History of tasks.T1.status")
    steps = inspector.locator(".history > li")
    await expect(steps).to_have_count(2, timeout=WAIT_MS)
    await expect(steps.nth(0)).to_contain_text("v2")
    await expect(steps.nth(0)).to_contain_text("ImplBot")
    await expect(steps.nth(0).locator(".step")).to_have_text('"OPEN"→"IN_PROGRESS"')
    await expect(steps.nth(1)).to_contain_text("DesignBot")
    await expect(steps.nth(1).locator(".step")).to_have_text('(none)→"OPEN"')

    # the history follows the feed: a new change to the path comes in at the top
    await service.write({"tasks.T1.status": "DONE"}, actor="ImplBot")
    await expect(steps).to_have_count(3, timeout=WAIT_MS)
    await expect(steps.nth(0).locator(".step")).to_have_text('"IN_PROGRESS"→"DONE"')


async def test_a_slice_shows_its_summary(service: Service, page: Page):
    await page.goto(service.url + PAGE)
    await sign_in(page, service.read_key)
    await page.locator("#slice-spec").fill("task:T1")
    await page.locator("#slice-form button[type=submit]").click()
    summary = page.locator("#slice .summary")
    await expect(summary).to_contain_text("T1: status=IN_PROGRESS", timeout=WAIT_MS)
    await expect(page.locator('#slice .node[data-path="tasks.T2"]')).to_have_count(0)

    await service.write({"tasks.T1.status": "DONE"})
    await expect(summary).to_contain_text("T1: status=DONE", timeout=WAIT_MS)


async def test_a_refused_key_asks_again(service: Service, page: Page):
    await page.goto(service.url + PAGE)
    await sign_in(page, NewKey.make([T], "admin").key)  # well formed, never made
    await expect(page.locator("#key-dialog")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#key-reason")).to_contain_text("The key was refused")
    await expect(page.locator("#status")).to_have_text("needs a key")
    await expect(page.locator("#tree .leaf")).to_have_count(0)

    await sign_in(page, service.read_key)
    await expect(leaf(page, "metrics.ctr")).to_have_text("0.2", timeout=WAIT_MS)
    await expect(page.locator("#key-dialog")).to_be_hidden()


@pytest.mark.parametrize("compat", ["default", "v2"])
async def test_without_any_key_a_loopback_page_reads_at_once(settings, page: Page, compat: str):
    """Without keys (the service's start, as for `sms serve` on one machine) nothing asks for one;
    under SMS_COMPAT=v2, whose GET /state is the state's members themselves, the page reads the
    same."""
    async with serving(replace(settings, compat=compat)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            written = await http.post(f"/state/{T}/{F}/delta", json={"greeting": "hello"})
            assert written.status_code == 200, written.text
        await page.goto(url + PAGE)
        await expect(leaf(page, "greeting")).to_have_text('"hello"', timeout=WAIT_MS)
        await expect(page.locator("#current-version")).to_have_text("1")
        await expect(page.locator("#tree .leaf")).to_have_count(1)  # not lineage_version
        await expect(page.locator("#key-dialog")).to_be_hidden()
