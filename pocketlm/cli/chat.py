"""The interactive chat behind ``pocketlm run`` with no prompt (stdin a terminal).

History is kept between turns (and the KV cache reuses it: only new text is
evaluated). Ctrl-C stops an answer and keeps the chat; Ctrl-D or /bye quits.
"""

from __future__ import annotations

import sys

from pocketlm.cli.run import check_text, format_stats, report
from pocketlm.errors import PocketError

COMMANDS = """commands:
  /bye, /exit, /quit     leave (or Ctrl-D)
  /clear                 forget the conversation (keeps the system prompt)
  /system TEXT           set the system prompt and start over (/system alone clears it)
  /stats                 timings of the last answer
  /help                  this list
  \"\"\"                    start or end a multi-line message
Ctrl-C stops an answer."""


def chat_loop(model, *, system: str | None, params: dict, verbose: bool) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    history: list[dict[str, str]] = []
    last = None
    if not model.template:
        print(
            f"note: '{model.name}' has no chat template; each message is completed as raw text",
            file=sys.stderr,
        )
    print(f"chatting with {model.name} (/help for commands, /bye to leave)", file=sys.stderr)
    while True:
        text = _read_message()
        if text is None:
            print(file=sys.stderr)
            return 0
        if not text.strip():
            continue
        if text.startswith("/"):
            cmd, _, arg = text.strip().partition(" ")
            if cmd in ("/bye", "/exit", "/quit"):
                return 0
            if cmd == "/clear":
                history.clear()
                print("(conversation cleared)", file=sys.stderr)
            elif cmd == "/system" or (cmd == "/set" and arg.startswith("system")):
                system = (arg[len("system") :] if cmd == "/set" else arg).strip() or None
                history.clear()
                print(
                    "(system prompt set; conversation cleared)"
                    if system
                    else "(system prompt cleared)",
                    file=sys.stderr,
                )
            elif cmd == "/stats":
                print(format_stats(last.stats) if last else "(no answer yet)", file=sys.stderr)
            elif cmd in ("/help", "/?"):
                print(COMMANDS, file=sys.stderr)
            else:
                print(f"unknown command {cmd} (/help lists them)", file=sys.stderr)
            continue
        try:
            check_text(text, "message")
        except PocketError as e:
            print(f"error: {e.render('cli')}", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        last = _answer(model, messages, params, verbose)
        if last is None:
            history.pop()
        else:
            history.append({"role": "assistant", "content": last.text})


def _read_message() -> str | None:
    """One message from the terminal; None at end of input. Handles \"\"\" blocks and Ctrl-C."""
    while True:
        try:
            line = input(">>> ")
            if line.strip() != '"""':
                return line
            lines = []
            while (more := input("... ")).strip() != '"""':
                lines.append(more)
            return "\n".join(lines)
        except EOFError:
            return None
        except KeyboardInterrupt:
            print("\n(use /bye or Ctrl-D to leave)", file=sys.stderr)


def _answer(model, messages, params: dict, verbose: bool):
    """Stream one answer; on Ctrl-C keep what was said so far. None if it failed to start."""
    try:
        if model.template:
            stream = model.chat(messages, stream=True, **params)
        else:
            stream = model.generate(messages[-1]["content"], raw=True, stream=True, **params)
    except PocketError as e:
        print(f"error: {e.render('cli')}", file=sys.stderr)
        return None
    except KeyboardInterrupt:
        print("\n(stopped)", file=sys.stderr)
        return None
    try:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()
        print("\n(stopped)", file=sys.stderr)
    done = stream.completion
    if done.text and not done.text.endswith("\n"):
        print()
    report(done, model, verbose=verbose)
    return done
