"""Close connections that hold a slot without sending a request.

uvicorn times out a keep-alive connection only until its first byte arrives, and a fresh connection
not at all: a client that connects and sends nothing, or half a request head, keeps its socket open
for as long as it likes. This protocol (uvicorn's own, h11 or httptools, whichever it would pick) arms
a timer when a connection opens and after every response; when it fires and no request is being
handled (no complete request head since), the connection is closed. A request whose head has arrived
is left alone here: its body has its own deadline (``body_timeout_s``, in ``guard.Guard``).
"""

from __future__ import annotations


def idle_timeout_protocol(timeout_s: float):
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class IdleTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        idle_timeout_s = timeout_s

        def _arm_idle(self) -> None:
            self._disarm_idle()
            self._idle_timer = self.loop.call_later(self.idle_timeout_s, self._idle_expired)

        def _disarm_idle(self) -> None:
            timer = getattr(self, "_idle_timer", None)
            if timer is not None:
                timer.cancel()
                self._idle_timer = None

        def _idle_expired(self) -> None:
            self._idle_timer = None
            cycle = getattr(self, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                return  # a request is being handled; it re-arms the timer when its response is done
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_idle()

        def connection_lost(self, exc) -> None:
            self._disarm_idle()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_idle()

    return IdleTimeoutProtocol
