"""pocketlm run [MODEL] [PROMPT]: answer a prompt, or chat when there is none."""

from __future__ import annotations

import argparse
import difflib
import json
import sys

from pocketlm import config
from pocketlm.cli.flags import add_flags, collect
from pocketlm.errors import ModelNotFoundError, UsageError
from pocketlm.params import GenerationParams, LoadParams

HELP = "answer a prompt with a model (streamed), or chat when no prompt is given"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "words",
        nargs="*",
        metavar="[MODEL] PROMPT",
        help="model name or GGUF path (default: $POCKETLM_MODEL, or the largest model this "
        "machine runs well: docs/models.md), then the prompt; piped stdin is appended",
    )
    p.add_argument("-m", "--model", help="model name or GGUF path (instead of the first word)")
    p.add_argument("-s", "--system", help="system prompt")
    p.add_argument(
        "--raw",
        action="store_true",
        help="send the prompt as is, without the model's chat template",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object: model, text, stats")
    p.add_argument(
        "--tiers",
        metavar="FILE",
        help="route between local and remote tiers (docs/hybrid.md); MODEL may then be a "
        "tier's name or 'auto' (the default)",
    )
    p.add_argument("--router", metavar="FILE", help="the trained router (with --tiers)")
    p.add_argument("-v", "--verbose", action="store_true", help="print timings after the answer")
    add_flags(p, GenerationParams)
    add_flags(p, LoadParams)


def split_model_and_prompt(words: list[str], model: str | None) -> tuple[str, str | None]:
    """``[MODEL] PROMPT...`` -> (model, prompt or None): the first word is a model if it names
    one (a store or catalog name, or a GGUF path)."""
    from pocketlm.store import catalog
    from pocketlm.store.pull import looks_like_path
    from pocketlm.store.store import Store

    if not model and words:
        first = words[0]
        store = Store()
        if first in catalog.entries(store.root) or store.find(first) or looks_like_path(first):
            model, words = first, words[1:]
        elif len(words) > 1 and first and " " not in first:
            store.get(first)  # an unknown model name: fails naming the closest ones
        elif len(words) == 1 and " " not in first:
            close = difflib.get_close_matches(first, known_names(store), n=1, cutoff=0.8)
            if close:  # `pocketlm run smolm2`: a typo, not a one-word prompt
                raise ModelNotFoundError(
                    f"unknown model '{first}'",
                    f"did you mean '{close[0]}'? (to send '{first}' as the prompt: "
                    f"pocketlm run {config.default_model()} {first})",
                )
    return model or default_model(), " ".join(words) if words else None


def default_model() -> str:
    """The model to use when none is named (pocketlm.services.ladder); the first time the
    ladder picks it for this store, a note on stderr says which and why."""
    from pocketlm.services import ladder

    choice = ladder.default_model()
    note = ladder.announce(choice)
    if note:
        print(f"note: using {note}", file=sys.stderr)
    return choice.name


def known_names(store) -> list[str]:
    from pocketlm.store import catalog

    return sorted(set(store.names()) | set(catalog.entries(store.root)))


def read_stdin() -> str:
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"standard input is not UTF-8 text (byte {e.start})", "pipe text, not binary data"
        ) from None


def check_text(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"the {what} is not valid UTF-8 text") from None
    if "\x00" in text:
        raise UsageError(f"the {what} contains a NUL byte")
    return text


def main(args: argparse.Namespace) -> int:
    gen = collect(args, GenerationParams)
    load = collect(args, LoadParams)
    if args.tiers:
        return routed(args, gen)
    model_ref, prompt = split_model_and_prompt(args.words, args.model)
    if not sys.stdin.isatty():
        piped = read_stdin()
        if piped.strip() or prompt is None:
            prompt = f"{prompt}\n\n{piped}" if prompt else piped
    if prompt is not None:
        check_text(prompt, "prompt")
        if not prompt.strip():
            raise UsageError("the prompt is empty", 'give a prompt, e.g. pocketlm run "Hello"')
    if args.system is not None:
        check_text(args.system, "system prompt")

    from pocketlm.progress import RichProgress
    from pocketlm.services.runtime import LoadedModel

    progress = RichProgress()
    try:
        model = LoadedModel(model_ref, progress=progress, **load)
    finally:
        progress.close()
    with model:
        if prompt is None:
            from pocketlm.cli.chat import chat_loop

            return chat_loop(model, system=args.system, params=gen, verbose=args.verbose)
        return answer(model, prompt, args, gen)


def routed(args: argparse.Namespace, gen: dict) -> int:
    """``run --tiers FILE [auto|TIER] PROMPT``: one answer through the tiers."""
    from pocketlm.services.route import tiers as tiers_mod
    from pocketlm.services.route.session import HybridSession

    words = list(args.words)
    tiers = tiers_mod.load(args.tiers)
    names = {t.name for t in tiers.tiers} | {"auto"}
    model = args.model or (words.pop(0) if words and words[0] in names else "auto")
    prompt = " ".join(words) or None
    if not sys.stdin.isatty():
        piped = read_stdin()
        if piped.strip() or prompt is None:
            prompt = f"{prompt}\n\n{piped}" if prompt else piped
    if not prompt or not prompt.strip():
        raise UsageError(
            "run --tiers answers one prompt", 'pocketlm run --tiers FILE "..." (chat: serve)'
        )
    check_text(prompt, "prompt")
    from pocketlm.cli.serve import guard_egress

    out = sys.stdout
    with HybridSession(tiers, args.router) as session:
        guard_egress(session.hybrid)

        def show(piece: str) -> None:
            if not args.json:
                out.write(piece)
                out.flush()

        a = session.chat(prompt, model=model, system=args.system, on_text=show, **gen)
    route = a.route
    if args.json:
        stats = {"prompt_tokens": a.tokens_in, "completion_tokens": a.tokens_out}
        stats.update({"tier": route["tier"], "route_reason": route["reason"], "route": route})
        doc = {"model": route["tier"], "text": a.text, "finish_reason": a.finish_reason}
        print(json.dumps({**doc, "stats": stats}, ensure_ascii=False))
    else:
        if a.text and not a.text.endswith("\n"):
            out.write("\n")
        out.flush()
        extra = " (fallback)" if route.get("fallback") else ""
        print(
            f"note: answered by tier '{route['tier']}'{extra}: {route['reason']}", file=sys.stderr
        )
    return 0


def answer(model, prompt: str, args: argparse.Namespace, gen: dict) -> int:
    stream = model.generate(prompt, system=args.system, raw=args.raw, stream=True, **gen)
    out = sys.stdout
    if args.json:
        for _ in stream:
            pass
    else:
        for piece in stream:
            out.write(piece)
            out.flush()
    done = stream.completion
    if args.json:
        print(
            json.dumps(
                {
                    "model": model.name,
                    "text": done.text,
                    "finish_reason": done.finish_reason,
                    "stats": done.stats.to_dict(),
                },
                ensure_ascii=False,
            )
        )
    else:
        if done.text and not done.text.endswith("\n"):
            out.write("\n")
        out.flush()
    report(done, model, verbose=args.verbose)
    return 0


def report(done, model, *, verbose: bool) -> None:
    """Notes on stderr: what truncation dropped, a full context, and (verbose) the timings."""
    s = done.stats
    if s.truncated_tokens:
        what = f"{s.truncated_messages} earliest messages" if s.truncated_messages else "the start"
        print(
            f"note: dropped {what} ({s.truncated_tokens} tokens) to fit the "
            f"{model.n_ctx}-token context",
            file=sys.stderr,
        )
    if done.finish_reason == "context":
        print(
            f"note: stopped because the context window ({model.n_ctx} tokens) is full; "
            "raise it with --ctx",
            file=sys.stderr,
        )
    if verbose:
        print(format_stats(s), file=sys.stderr)


def format_stats(s) -> str:
    return (
        f"load {s.load_s:.2f} s | first token {s.ttft_s * 1000:.0f} ms | "
        f"prompt {s.prompt_tokens} tokens ({s.cached_tokens} cached) "
        f"at {s.prefill_tps:.1f} tok/s | "
        f"generated {s.completion_tokens} tokens at {s.decode_tps:.1f} tok/s | "
        f"peak RSS {s.peak_rss_bytes / 2**20:.0f} MiB | seed {s.seed}"
    )
