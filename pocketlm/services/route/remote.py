"""A remote tier: any OpenAI-compatible ``/chat/completions`` endpoint (a cloud API, vLLM,
llama.cpp's server, another ``pocketlm serve``).

Never a hang: every call has a connect and a read timeout (the tier's ``timeout_s``), a
refused, timed-out, rate-limited (429) or failing (5xx) call is retried with exponential
backoff (``Retry-After`` honoured up to a cap), and after the tier's ``retries`` it raises
``RemoteUnavailable`` so the caller can fall back to a local tier. Retries happen only
before the first byte of an answer: a stream that breaks halfway is an error, not a retry
(the user has already seen part of it).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from pocketlm.errors import PocketError
from pocketlm.services.route.tiers import Tier

BACKOFF_S = 0.5  # first wait; doubled per retry
MAX_WAIT_S = 8.0  # a Retry-After above this is cut to it
MAX_ANSWER_BYTES = 16 << 20  # a remote answer larger than this is refused (memory bound)
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class RemoteUnavailable(PocketError):
    """The tier did not answer (down, slow, rate-limited) after its retries."""

    http_status = 503


class RemoteRefused(PocketError):
    """The tier answered with an error that retrying will not fix (401, 400...)."""

    http_status = 502


@dataclass
class RemoteReply:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str = "stop"


@dataclass
class Delta:
    """A piece of a streamed answer; the last one carries the usage and finish reason."""

    text: str
    done: RemoteReply | None = None


class RemoteClient:
    """One shared HTTP client for every remote tier (connections reused)."""

    def __init__(self) -> None:
        self.http = httpx.AsyncClient(follow_redirects=False, trust_env=False)

    async def aclose(self) -> None:
        await self.http.aclose()

    def _request(self, tier: Tier, messages: list[dict], params: dict, stream: bool):
        headers = {"content-type": "application/json"}
        if tier.api_key_env:
            key = os.environ.get(tier.api_key_env)
            if not key:
                raise RemoteRefused(
                    f"tier '{tier.name}': the environment variable {tier.api_key_env} is not set",
                    f"export {tier.api_key_env}=... before starting pocketlm",
                )
            headers["authorization"] = f"Bearer {key}"
        body = {"model": tier.model, "messages": messages, "stream": stream, **params}
        if stream:
            body["stream_options"] = {"include_usage": True}
        timeout = httpx.Timeout(tier.timeout_s, connect=min(tier.timeout_s, 10.0))
        return self.http.build_request(
            "POST", f"{tier.url}/chat/completions", json=body, headers=headers, timeout=timeout
        )

    async def _send(self, tier: Tier, messages: list[dict], params: dict, stream: bool):
        """The response (status 200, body unread), after retries; raises RemoteUnavailable."""
        last, last_response = "no attempt", None
        for attempt in range(tier.retries + 1):
            if attempt:
                await asyncio.sleep(_wait(attempt, last_response))
            last_response = None
            try:
                response = await self.http.send(
                    self._request(tier, messages, params, stream), stream=True
                )
            except httpx.TimeoutException:
                last = f"no answer within {tier.timeout_s:g} s"
                continue
            except httpx.TransportError as e:
                last = f"cannot connect ({type(e).__name__}: {str(e)[:120]})"
                continue
            except PermissionError as e:  # the egress guard (a misconfigured allowlist)
                raise RemoteRefused(f"tier '{tier.name}': {e}") from None
            if response.status_code == 200:
                return response
            detail = await _error_text(response)
            if response.status_code not in RETRY_STATUS:
                raise RemoteRefused(
                    f"tier '{tier.name}' refused the request: HTTP {response.status_code} {detail}",
                    "check the tier's url, model and API key",
                )
            last, last_response = f"HTTP {response.status_code} {detail}", response
        raise RemoteUnavailable(
            f"tier '{tier.name}' ({tier.url}) did not answer after {tier.retries + 1} "
            f"attempt(s): {last}"
        )

    async def complete(self, tier: Tier, messages: list[dict], params: dict) -> RemoteReply:
        response = await self._send(tier, messages, params, stream=False)
        try:
            raw = await _read_capped(response, tier)
        except httpx.HTTPError as e:
            raise RemoteUnavailable(f"tier '{tier.name}': the answer broke off ({e})") from None
        return _parse_reply(raw, tier)

    async def stream(self, tier: Tier, messages: list[dict], params: dict) -> AsyncIterator[Delta]:
        """Text pieces as they arrive; the stream is opened (and retried) before the first
        piece is yielded, so a RemoteUnavailable comes before any output."""
        response = await self._send(tier, messages, params, stream=True)
        return _events(response, tier)


async def _events(response: httpx.Response, tier: Tier) -> AsyncIterator[Delta]:
    usage, reason, total, size = None, "stop", [], 0
    try:
        async for line in response.aiter_lines():
            size += len(line)
            if size > MAX_ANSWER_BYTES:
                raise RemoteRefused(f"tier '{tier.name}': the answer is over 16 MiB")
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                event = json.loads(data)
            except json.JSONDecodeError:
                raise RemoteRefused(f"tier '{tier.name}' sent an event that is not JSON") from None
            if "error" in event:
                raise RemoteRefused(f"tier '{tier.name}' failed: {str(event['error'])[:200]}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                reason = choice.get("finish_reason") or reason
                if text:
                    total.append(text)
                    yield Delta(text)
    except httpx.HTTPError as e:
        raise RemoteUnavailable(f"tier '{tier.name}': the stream broke off ({e})") from None
    finally:
        await response.aclose()
    text = "".join(total)
    tokens_in = int((usage or {}).get("prompt_tokens") or 0)
    tokens_out = int((usage or {}).get("completion_tokens") or 0)
    yield Delta("", RemoteReply(text, tokens_in, tokens_out, reason))


def _wait(attempt: int, response: httpx.Response | None) -> float:
    wait = BACKOFF_S * 2 ** (attempt - 1)
    if response is not None:
        try:
            wait = max(wait, float(response.headers.get("retry-after", 0)))
        except ValueError:
            pass
    return min(wait, MAX_WAIT_S)


async def _error_text(response: httpx.Response) -> str:
    try:
        raw = await response.aread()
    except httpx.HTTPError:
        return ""
    finally:
        await response.aclose()
    try:
        error = json.loads(raw).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return f"({str(message)[:200]})" if message else ""
    except (ValueError, AttributeError):
        return ""


async def _read_capped(response: httpx.Response, tier: Tier) -> bytes:
    chunks, size = [], 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise RemoteRefused(f"tier '{tier.name}': the answer is over 16 MiB")
            chunks.append(chunk)
    finally:
        await response.aclose()
    return b"".join(chunks)


def _parse_reply(raw: bytes, tier: Tier) -> RemoteReply:
    try:
        body = json.loads(raw)
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
        usage = body.get("usage") or {}
        return RemoteReply(
            text,
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            choice.get("finish_reason") or "stop",
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise RemoteRefused(
            f"tier '{tier.name}' answered something that is not an OpenAI chat completion",
            "check that its url ends with /v1",
        ) from None
