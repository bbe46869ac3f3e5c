"""The web chat page (pocketlm/server/static), driven in Debian's Chromium by Playwright.

Each server is a real `pocketlm serve` process on a free loopback port. The fast tests
preload the tiny random model with a 32k context: it never writes an end token, so an
answer streams for many seconds unless it is stopped or given max tokens.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright import sync_api  # the dev extra; Chromium comes from scripts/install.sh --dev

from tests.conftest import shared_store_root
from tests.server.conftest import metric, serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

expect = sync_api.expect
expect.set_options(timeout=30_000)  # a loaded 2-core machine is slow

ANSWER = ".message.assistant .content"


# -- servers (tests/server/conftest.py runs them) ------------------------------------------

# One engine thread leaves the other core to the browser: llama.cpp's threads wait for each
# other at every token, and decode slows to a crawl when one of them is not running.
TINY_ARGS = ("--ctx", "32768", "--parallel", "2", "--threads", "1")


@pytest.fixture(scope="module")
def server(tiny_gguf) -> Iterator[str]:
    with serve("--preload", str(tiny_gguf), *TINY_ARGS) as url:
        yield url


def active_sequences(url: str) -> float:
    return metric(url, "pocketlm_active_sequences")


# -- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), "the browser tests need Debian's chromium: apt-get install chromium"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Tab:
    """A page of a fresh browser context, with every request and uncaught error it saw."""

    page: sync_api.Page
    origin: str  # with the trailing slash: ":8000/" is not a prefix of ":80001/..."
    requests: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    def chat_requests(self) -> list:
        return [r for r in self.requests if r.url.endswith("/v1/chat/completions")]

    def chat_bodies(self) -> list[dict]:
        return [json.loads(r.post_data) for r in self.chat_requests()]

    def ask(self, text: str, max_tokens: int | None = None) -> None:
        self.page.fill("#max-tokens", "" if max_tokens is None else str(max_tokens))
        self.page.fill("#input", text)
        self.page.evaluate(WATCH_ANSWER)
        self.page.press("#input", "Enter")


# Records in the page every length the answer being written takes (see grows): a fast
# answer can be complete before the test has read it once.
WATCH_ANSWER = """() => {
  window.__lengths = [];
  if (window.__watch) return;
  window.__watch = new MutationObserver(() => {
    const all = document.querySelectorAll(SELECTOR);
    const last = all[all.length - 1];
    const n = last ? last.textContent.length : 0, seen = window.__lengths;
    if (n > 0 && n !== seen[seen.length - 1]) seen.push(n);
  });
  window.__watch.observe(document.body, {subtree: true, childList: true, characterData: true});
}""".replace("SELECTOR", json.dumps(ANSWER))


@pytest.fixture
def open_page(browser):
    """open_page(url) -> Tab on the chat page at url; afterwards, checks that no request
    left the server's origin and no script error happened."""
    contexts, tabs = [], []

    def open_(url: str) -> Tab:
        context = browser.new_context()
        contexts.append(context)
        tab = Tab(context.new_page(), url + "/")
        tab.page.on("request", lambda r: tab.requests.append(r))
        tab.page.on("pageerror", lambda e: tab.errors.append(e))
        tab.page.set_default_timeout(30_000)  # a loaded 2-core machine is slow
        tab.page.goto(tab.origin)
        tabs.append(tab)
        return tab

    yield open_
    for context in contexts:
        context.close()
    for tab in tabs:
        assert not tab.errors, tab.errors
        elsewhere = [r.url for r in tab.requests if not r.url.startswith(tab.origin)]
        assert not elsewhere, f"requests left {tab.origin}: {elsewhere}"


def grows(page, selector: str, times: int = 3) -> str:
    """Wait until the answer being written (`selector`) has been seen at `times` different
    lengths since the question was asked (Tab.ask watches it from inside the page: read
    from here, an answer of the tiny model could be complete before the first look, and
    then never grow again); returns its text."""
    assert selector == ANSWER, "Tab.ask watches the answer only"
    page.wait_for_function("n => (window.__lengths || []).length >= n", arg=times)
    return page.text_content(selector) or ""


def wait_until(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- tests ----------------------------------------------------------------------------------


def test_page_loads_offline_and_lists_the_models(server, tiny_gguf, open_page):
    tab = open_page(server)
    page = tab.page
    expect(page).to_have_title("pocketlm chat")
    expect(page.locator("#model option")).to_have_text(["tiny"])
    for selector in ("#system", "#input", "#send", "#new-chat"):
        expect(page.locator(selector)).to_be_visible()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#error")).to_be_hidden()
    loaded = {r.url.removeprefix(tab.origin) for r in tab.requests}
    assert {"", "app.js", "style.css", "v1/models"} <= loaded, loaded

    page.select_option("#model", "tiny")
    assert page.evaluate("localStorage.getItem('pocketlm.model')") == "tiny"


def test_answer_streams_in_with_stats(server, tiny_gguf, open_page):
    tab = open_page(server)
    tab.ask("Hello, how are you?", max_tokens=1000)
    expect(tab.page.locator(".message.user .content")).to_have_text("Hello, how are you?")
    expect(tab.page.locator("#stop")).to_be_enabled()
    grows(tab.page, ANSWER)
    stats = tab.page.locator(".message.assistant .stats")
    expect(stats).to_have_text(
        re.compile(r"^1000 tokens · [\d.]+ tok/s · first token [\d.]+ s · reached max tokens$")
    )
    expect(tab.page.locator("#send")).to_be_enabled()
    expect(tab.page.locator("#stop")).to_be_disabled()
    [body] = tab.chat_bodies()
    assert body == {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Hello, how are you?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 1000,
    }


def test_stop_keeps_the_partial_answer_and_frees_the_server(server, open_page):
    tab = open_page(server)
    page = tab.page
    tab.ask("Tell me a story about the cat.")
    grows(page, ANSWER)
    assert "max_tokens" not in tab.chat_bodies()[0]
    page.click("#stop")

    expect(page.locator(".stats")).to_have_text(re.compile(r"\d+ tokens · [\d.]+ tok/s .*stopped"))
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    answer = page.text_content(ANSWER)
    assert answer
    page.wait_for_timeout(200)
    assert page.text_content(ANSWER) == answer, "the answer kept growing after Stop"
    wait_until(lambda: active_sequences(server) == 0.0)

    page.fill("#input", "And then?")  # the conversation goes on, with the partial answer
    page.click("#send")
    expect(page.locator(".message.assistant")).to_have_count(2)
    page.click("#stop")
    assert tab.chat_bodies()[1]["messages"][:2] == [
        {"role": "user", "content": "Tell me a story about the cat."},
        {"role": "assistant", "content": answer},
    ]


def test_follow_up_sends_the_conversation_and_new_chat_clears_it(server, open_page):
    tab = open_page(server)
    page = tab.page
    page.fill("#system", "You are a helpful assistant.")
    tab.ask("What is two plus two?", max_tokens=5)
    expect(page.locator(".stats")).to_have_count(1)
    first = page.text_content(ANSWER)
    tab.ask("And two plus three?", max_tokens=5)
    expect(page.locator(".stats")).to_have_count(2)
    system = {"role": "system", "content": "You are a helpful assistant."}
    assert tab.chat_bodies()[1]["messages"] == [
        system,
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And two plus three?"},
    ]

    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)
    tab.ask("Hello", max_tokens=5)
    expect(page.locator(".stats")).to_have_count(1)
    assert tab.chat_bodies()[2]["messages"] == [system, {"role": "user", "content": "Hello"}]


def test_new_chat_stops_a_running_answer(server, open_page):
    tab = open_page(server)
    tab.ask("Write a poem about the sea.")
    grows(tab.page, ANSWER, times=1)
    tab.page.click("#new-chat")
    expect(tab.page.locator(".message")).to_have_count(0)
    expect(tab.page.locator("#send")).to_be_enabled()
    wait_until(lambda: active_sequences(server) == 0.0)


def test_api_error_is_shown_and_the_question_kept(server, open_page):
    page = open_page(server).page
    expect(page.locator("#model option")).to_have_count(1)
    page.evaluate("document.querySelector('#model').add(new Option('no-such-model'))")
    page.select_option("#model", "no-such-model")
    page.fill("#input", "Hello")
    page.click("#send")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("unknown model 'no-such-model'")
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#input")).to_have_value("Hello")
    expect(page.locator("#send")).to_be_enabled()


def test_api_key_is_asked_for_and_sent(tiny_gguf, open_page):
    with serve("--preload", str(tiny_gguf), *TINY_ARGS, key="s3cret") as url:
        tab = open_page(url)
        page = tab.page
        expect(page.locator("#error")).to_contain_text("API key")
        expect(page.locator("#auth")).to_be_visible()
        page.fill("#api-key", "s3cret")
        page.click("#auth button")
        expect(page.locator("#auth")).to_be_hidden()
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator("#model option")).to_have_text(["tiny"])
        assert page.evaluate("localStorage.getItem('pocketlm.apiKey')") == "s3cret"

        tab.ask("Hello", max_tokens=5)
        expect(page.locator(".stats")).to_contain_text("5 tokens")
        assert tab.chat_requests()[0].headers["authorization"] == "Bearer s3cret"


def test_unreachable_server_is_reported(tiny_gguf, open_page):
    with serve("--preload", str(tiny_gguf), *TINY_ARGS) as url:
        page = open_page(url).page
        expect(page.locator("#model option")).to_have_count(1)
    page.fill("#input", "Hello")
    page.click("#send")
    expect(page.locator("#error")).to_contain_text("cannot reach the pocketlm server")
    expect(page.locator("#input")).to_have_value("Hello")


@pytest.mark.slow
def test_real_model_answers(default_model, open_page):
    env = {"POCKETLM_HOME": str(shared_store_root())}
    with serve("--preload", "smollm2-135m-instruct", "--threads", "1", env=env) as url:
        tab = open_page(url)
        page = tab.page
        expect(page.locator("#model option[value='smollm2-135m-instruct']")).to_have_count(1)
        page.select_option("#model", "smollm2-135m-instruct")
        # bounded: with no limit a rambling sample may run to the 4,096-token context, which
        # on a busy 2-core machine takes longer than the test waits
        tab.ask("What is the capital of France?", max_tokens=96)
        grows(page, ANSWER, times=2)
        expect(page.locator(".stats")).to_contain_text("tok/s", timeout=120_000)
        assert page.text_content(ANSWER).strip()
