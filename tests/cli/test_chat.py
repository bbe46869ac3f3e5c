"""The interactive chat, driven through a real pseudo-terminal (stdin is a TTY)."""

from __future__ import annotations

import os
import sys

import pexpect
import pytest

from tests.conftest import REPO

PROMPT = ">>> "


def spawn(*args: str, env: dict | None = None) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pocketlm", "run", *args],
        cwd=str(REPO),
        env=dict(os.environ, **(env or {})),
        encoding="utf-8",
        timeout=60,
    )
    child.expect_exact(PROMPT)
    return child


def ask(child: pexpect.spawn, text: str) -> str:
    child.sendline(text)
    child.expect_exact(PROMPT)
    return child.before


def test_chat_commands_and_history(tiny_gguf):
    child = spawn(str(tiny_gguf), "--ctx", "512", "--max-tokens", "6", "--seed", "1")
    ask(child, "the cat sat")
    stats = ask(child, "/stats")
    assert "tok/s" in stats and "prompt" in stats
    # the second turn continues the conversation: its prompt starts with the cached first turn
    ask(child, "and then?")
    assert "cached" in ask(child, "/stats")
    assert "system prompt set" in ask(child, "/system you are a cat")
    assert "cleared" in ask(child, "/clear")
    assert "/bye" in ask(child, "/help")
    assert "unknown command" in ask(child, "/frob")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(tiny_gguf):
    # A tiny random model with a huge context keeps talking for many seconds.
    child = spawn(str(tiny_gguf), "--ctx", "32768", "--seed", "3")
    child.sendline("tell me everything")
    child.expect_exact("everything\r\n")  # the terminal's echo of the message
    child.expect(r"\S{3}")  # the answer is streaming
    child.sendintr()
    child.expect_exact("(stopped)")
    child.expect_exact(PROMPT)
    out = ask(child, "/stats")
    assert "generated" in out
    child.sendcontrol("c")  # at the prompt: a hint, not an exit
    child.expect_exact("/bye")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_multiline_message(tiny_gguf):
    child = spawn(str(tiny_gguf), "--ctx", "512", "--max-tokens", "2", "--seed", "1")
    child.sendline('"""')
    child.sendline("line one")
    child.sendline("line two")
    child.sendline('"""')
    child.expect_exact(PROMPT)
    assert "prompt" in ask(child, "/stats")
    child.sendline("/bye")
    child.expect(pexpect.EOF)


@pytest.mark.slow
def test_chat_with_the_real_default_model(default_model):
    child = spawn(str(default_model), "--temperature", "0", "--max-tokens", "60", "--threads", "1")
    child.timeout = 180  # a real model on a possibly busy 2-core machine
    answer = ask(child, "What is the capital of France?")
    assert "Paris" in answer
    child.sendline("/bye")
    child.expect(pexpect.EOF)
