"""The server protocol with AIPOWER_HTTP2=1: HTTP/1.1 as always, or HTTP/2 over cleartext (h2c) on a connection
that opens with HTTP/2's preface (prior knowledge: a balancer or client that knows the server speaks it).

Over HTTP/1.1 every call in flight holds a connection, so a gateway relaying N streams holds N callers' sockets and
N providers' sockets. Over HTTP/2 the callers' side is a few connections, however many streams they carry (10,000
slow streams held here within a 20,000-descriptor limit: docs/performance.md). uvicorn parses HTTP/2 with zttp
(`pip install -e '.[http2]'`), which is only imported here; the HTTP/1.1 side is `HeadWithBodyProtocol` either way.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol
from uvicorn.protocols.http.zttp_h2_impl import ZttpH2Protocol

from aipower.cli.http_protocol import HeadWithBodyProtocol


class Http1OrH2c(AutoZttpProtocol):
    """uvicorn's protocol that reads a connection's first bytes and hands it to HTTP/2 (the preface) or HTTP/1.1;
    here HTTP/1.1 is aipower's own protocol, not zttp's."""

    def _switch(self, http2: bool, initial_data: bytes = b"") -> None:
        protocol_class: type[asyncio.Protocol] = ZttpH2Protocol if http2 else HeadWithBodyProtocol
        protocol = protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.app_state, _loop=self.loop
        )
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if initial_data:
            protocol.data_received(initial_data)
