"""uvicorn's HTTP protocol with a deadline for a request's headers.

uvicorn times out idle keep-alive connections, but not a request whose headers never end:
300 clients that sent half a request line each held a connection (a socket and a parser)
for as long as they liked. Each connection here must finish a request's headers within
``header_timeout_s`` (``serve --header-timeout``) of opening, or of the request's first
byte (between requests, uvicorn's keep-alive timeout closes an idle connection); else it is
closed. The body has limits of its own (``app.Limits``), enforced where it is read.
"""

from __future__ import annotations

import asyncio


def guarded_protocol(header_timeout_s: float) -> type:
    """The protocol class to pass to ``uvicorn.run(http=...)``."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpToolsProtocol
