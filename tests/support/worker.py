"""A `Worker` in this process, on a uvloop loop in a thread of its own: what it counts and
holds can be read from the test (through `call`, on the worker's loop)."""

from __future__ import annotations

import asyncio
import http.client
import threading

import uvloop

from isekai.config.loader import load_config_text
from isekai.worker import Worker


class ThreadedWorker:
    def __init__(self, yaml_text: str) -> None:
        self.config = load_config_text(yaml_text)
        self.loop = uvloop.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.worker = Worker(self.config, self.loop)
        self.loop.run_until_complete(self.worker.start())
        self.ready.set()
        self.loop.run_forever()

    def call(self, fn, *args):
        return asyncio.run_coroutine_threadsafe(self._call(fn, *args), self.loop).result(10)

    async def _call(self, fn, *args):
        return fn(*args)

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10)
        self.port = self.worker.addresses[0][2]
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.worker.drain(1.0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    resp = c.getresponse()
    return resp.status, resp.read()


def app_config(upstream_port: int, *, options: str = "", routes: str = "") -> str:
    """A listener on port 0, the upstream ``app`` (with ``options``, YAML flow-mapping items)
    and the route ``/app/*`` to it with the prefix stripped; ``routes`` adds more route lines."""
    extra = f", {options}" if options else ""
    return f"""
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
upstreams:
  app: {{targets: ["127.0.0.1:{upstream_port}"]{extra}}}
routes:
  - {{name: app, match: {{path: "/app/*"}}, upstream: app, strip_prefix: /app}}
{routes}"""
