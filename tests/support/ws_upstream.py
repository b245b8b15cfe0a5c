"""A WebSocket echo upstream (aiohttp) in a thread of its own, on 127.0.0.1 port 0.

`/ws` echoes every text and binary message; `/ws-close` closes right after the handshake;
any other path answers 200 "plain" (so an Upgrade to it is refused with a normal response).
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import WSMsgType, web


class WebSocketUpstream:
    def __init__(self) -> None:
        self.port = 0
        self.handshakes = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.handshakes += 1
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def _close(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.handshakes += 1
        await ws.close()
        return ws

    async def _plain(self, request: web.Request) -> web.Response:
        return web.Response(text="plain")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/ws", self._echo)
        app.router.add_get("/ws-close", self._close)
        app.router.add_route("*", "/{tail:.*}", self._plain)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> WebSocketUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("websocket upstream did not start")
        return self

    def __exit__(self, *exc) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            fut.result(5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
