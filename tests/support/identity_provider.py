"""A real identity provider for tests: an aiohttp app on 127.0.0.1 port 0 in a thread of its
own, serving JWK Sets, OIDC discovery documents and an RFC 7662 introspection endpoint, and
counting every request by path (so a test can prove what was fetched, and what never was).

- ``GET {path}`` for each path in ``jwks``: ``{"keys": [...]}`` (the list may be changed by the
  test; ``failing`` paths answer 500);
- ``GET {prefix}/.well-known/openid-configuration`` for each prefix in ``discovery``: the
  document naming ``issuer`` and its ``jwks_uri``;
- ``POST /introspect``: HTTP Basic ``client``/``secret`` required (else 401); form ``token``;
  the answer is ``tokens[token]`` (``{"active": false}`` when unknown);
- anything else: 404 (still counted: a ``jku`` trap path proves it was never fetched).
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections import Counter
from typing import Any

from aiohttp import web

INTROSPECTION_CLIENT = ("gateway", "introspection-secret")


class IdentityProvider:
    def __init__(self) -> None:
        self.jwks: dict[str, list[dict[str, Any]]] = {}
        self.discovery: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.failing: set[str] = set()
        self.hits: Counter[str] = Counter()
        self.bad_auth = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        if path in self.failing:
            return web.json_response({"error": "down"}, status=500)
        if request.method == "GET" and path in self.jwks:
            return web.json_response({"keys": self.jwks[path]})
        suffix = "/.well-known/openid-configuration"
        if request.method == "GET" and path.endswith(suffix):
            document = self.discovery.get(path[: -len(suffix)])
            if document is not None:
                return web.json_response(document)
        if request.method == "POST" and path == "/introspect":
            expected = "Basic " + base64.b64encode(":".join(INTROSPECTION_CLIENT).encode()).decode()
            if request.headers.get("Authorization") != expected:
                self.bad_auth += 1
                return web.json_response({"error": "invalid_client"}, status=401)
            form = await request.post()
            token = form.get("token")
            return web.json_response(self.tokens.get(str(token), {"active": False}))
        return web.json_response({"error": "not found"}, status=404)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> IdentityProvider:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("identity provider did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
