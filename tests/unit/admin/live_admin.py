"""The admin app served from a background thread (its own loop, a real SQLite store), so
that a synchronous client (schemathesis, in a subprocess) can test it over a real socket."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from admin_helpers import BASE_YAML, PASSWORD, ROUNDS, make_config

from isekai.admin.app import AdminServer
from isekai.admin.auth import hash_password, issue_token
from isekai.admin.context import AdminContext
from isekai.store import open_store

# a fuzzer sends many wrong logins from one address: with the default limits every login would
# soon be 429 with a Retry-After of minutes (the limits are tested in test_admin_security.py)
LIVE_YAML = BASE_YAML.replace(
    "jwt_expiry: 1h}",
    "jwt_expiry: 1h, login_limits: {per_user: 1000000, per_ip: 1000000}}",
)


class LiveAdmin:
    """``with LiveAdmin(tmp_path) as live:`` -> ``live.url`` and ``live.token`` (an admin's)."""

    def __init__(self, tmp_path: Any) -> None:
        self.tmp_path = tmp_path
        self.url = ""
        self.token = ""
        self.applied = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: AdminServer | None = None
        self._store: Any = None

    async def _start(self) -> None:
        config, text = make_config(LIVE_YAML)
        self._store = open_store(f"sqlite:///{self.tmp_path}/live.db")
        await self._store.open()
        await self._store.create_user("admin", hash_password(PASSWORD, ROUNDS), "admin")

        async def apply(new: Any, changes: Any) -> None:
            self.applied += 1

        ctx = AdminContext(
            store=self._store, config=config, config_text=text, apply=apply, bcrypt_rounds=ROUNDS
        )
        await ctx.load()
        self._server = AdminServer(ctx, "127.0.0.1", 0)
        await self._server.start()
        self.url = f"http://127.0.0.1:{self._server.port}"
        self.token = issue_token(ctx, "admin", "admin")[0]

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
        if self._store is not None:
            await self._store.close()

    def __enter__(self) -> LiveAdmin:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
