"""The web client in a real headless Chromium (Debian's), against a real gateway, worker
and priority: two people chat in two pages while the gateway process is restarted; every
message shows up on both pages, in order, exactly once, and no page is ever reloaded."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import UNIT
from tests.integration.gateway_stack import Stack, running_stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
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
#: Rendered messages, in DOM order: [seq, text, state] (pending ones have no seq).
ROWS_JS = """() => [...document.querySelectorAll('#message-list .msg')].map(
  (li) => [li.dataset.seq ? Number(li.dataset.seq) : null,
           li.querySelector('.msg-text').textContent, li.dataset.state])"""


@pytest.fixture
def stack(redis_url: str, mongo_url: str, sql_url: str, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(redis_url, mongo_url, sql_url, tmp_path) as s:
        yield s


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, stack: Stack) -> Page:
    context = await browser.new_context(viewport={"width": 1100, "height": 720})
    page = await context.new_page()
    page.set_default_timeout(30_000 * UNIT)
    await page.goto(stack.base_url + "/")
    # Survives only if the page is never reloaded or navigated away.
    await page.evaluate("() => { window.__sameDocument = 'yes'; }")
    return page


async def sign_up(page: Page, name: str, email: str) -> None:
    await page.click("#tab-signup")
    await page.fill("#name", name)
    await page.fill("#email", email)
    await page.fill("#password", "correct horse battery")
    await page.click("#auth-submit")
    await page.wait_for_selector("#chat-view:not([hidden])")
    await page.wait_for_selector('#conn-state[data-state="online"]')


async def say(page: Page, text: str) -> None:
    await page.fill("#composer-text", text)
    await page.press("#composer-text", "Enter")


async def rows(page: Page) -> list[list[Any]]:
    result: list[list[Any]] = await page.evaluate(ROWS_JS)
    return result


async def wait_delivered(pages: list[Page], texts: list[str], wait_s: float) -> None:
    """Until every page shows exactly ``texts`` (any order), all delivered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        shown = [await rows(p) for p in pages]
        done = all(
            sorted(r[1] for r in s) == sorted(texts) and all(r[2] == "delivered" for r in s)
            for s in shown
        )
        if done:
            return
        if loop.time() > deadline:
            raise AssertionError(f"pages did not converge on {texts}: {shown}")
        await asyncio.sleep(0.1)


async def test_two_people_chat_through_a_gateway_restart_without_reloading(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    """Sign up in two pages, create a chat, talk, restart the gateway process (SIGTERM,
    start again on the same port) while both keep typing: both pages end with the same
    messages in seq order 1..N, each exactly once, senders' own order kept, no reload."""
    tag = secrets.token_hex(3)
    alice, bob = await open_page(browser, stack), await open_page(browser, stack)
    await sign_up(alice, "Alice", f"alice-{tag}@example.test")
    await sign_up(bob, "Bob", f"bob-{tag}@example.test")

    await alice.fill("#new-chat-title", "Lunch")
    await alice.fill("#new-chat-members", f"bob-{tag}@example.test")
    await alice.click("#new-chat-btn")
    await alice.wait_for_selector(".chat-item.active")
    await say(alice, "a1: lunch?")
    await bob.wait_for_selector(".chat-item")  # the chat appears for Bob by itself
    await bob.click(".chat-item")
    sent = {"Alice": ["a1: lunch?"], "Bob": []}
    await wait_delivered([alice, bob], sent["Alice"], 30 * UNIT)
    for who, page, text in [("Bob", bob, "b1: sure"), ("Alice", alice, "a2: noon?")]:
        await say(page, text)
        sent[who].append(text)
        await wait_delivered([alice, bob], sent["Alice"] + sent["Bob"], 30 * UNIT)

    # The gateway goes away mid-conversation; both keep typing while it is down.
    assert stack.stop_gateway() == 0
    await bob.wait_for_selector('#conn-state[data-state="offline"]')
    for who, page, text in [("Bob", bob, "b2: offline one"), ("Alice", alice, "a3: offline two"),
                            ("Bob", bob, "b3: offline three")]:  # fmt: skip
        await say(page, text)
        sent[who].append(text)
    stack.start_gateway()
    for who, page, text in [("Alice", alice, "a4: back"), ("Bob", bob, "b4: welcome back")]:
        await say(page, text)
        sent[who].append(text)
    everything = sent["Alice"] + sent["Bob"]
    await wait_delivered([alice, bob], everything, 60 * UNIT)

    shown_alice, shown_bob = await rows(alice), await rows(bob)
    await alice.screenshot(path=str(tmp_path / "alice.png"), full_page=True)
    await bob.screenshot(path=str(tmp_path / "bob.png"), full_page=True)
    assert shown_alice == shown_bob
    assert [r[0] for r in shown_alice] == list(range(1, len(everything) + 1))
    texts = [r[1] for r in shown_alice]
    assert sorted(texts) == sorted(everything)  # each exactly once
    for mine in sent.values():  # each person's messages in the order they were typed
        assert [t for t in texts if t in mine] == mine
    for page in (alice, bob):
        assert await page.evaluate("() => window.__sameDocument") == "yes"
        assert await page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
