"""The admin API application: ``create_app(ctx)``, and `AdminServer` to serve it.

Middleware, outermost first: a request id (``X-Request-Id``, echoed or made) on every
response; errors as the JSON envelope (``ApiError``, aiohttp's 404/405/413, store failures as
503, anything unexpected as 500 with the request id, logged with its traceback); then
authentication and the role check for the endpoint (``openapi.OPERATIONS`` says which role
each needs). With ``admin.auth.enabled: false`` every endpoint is open.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from isekai.admin import auth, openapi
from isekai.admin.context import CTX, REQUEST_ID, USER, AdminContext
from isekai.admin.http import ApiError, fail, listen
from isekai.admin.oauth import KEYS
from isekai.admin.oauth_keys import KeyRing
from isekai.admin.observe import SCRAPE, Scrape
from isekai.config.loader import is_loopback
from isekai.errors import ConfigError
from isekai.store import StoreError

__all__ = ["AdminServer", "create_app"]

log = logging.getLogger("isekai.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PERMISSIONS = web.AppKey("isekai_admin_permissions", dict)
MAX_BODY = 1024 * 1024  # bytes: the largest request body
MAX_HEADER_VALUE = 8 * 1024  # bytes: the longest header value answered (431 past it, JSON)
# what aiohttp's parser itself takes before it answers a plain-text 400: well above the limits
# checked here, so that the usual oversized request still gets the JSON envelope
PARSER_LIMITS = {"max_line_size": 64 * 1024, "max_field_size": 128 * 1024}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
}


@web.middleware
async def _request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        _check_request(request)
        return await handler(request)
    except ApiError as exc:
        return fail(exc.status, exc.code, exc.message, headers=exc.headers, **exc.details)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "location")}
        code = _STATUS_CODES.get(exc.status, "http_error")
        message = exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed here (allowed: {headers.get('Allow')})"
        return fail(exc.status, code, message, headers=headers)
    except StoreError as exc:
        log.error("admin API: %s %s: the store failed: %s", request.method, request.path, exc)
        return fail(
            503, "store_unavailable", "the store is not available; the gateway log has the details"
        )
    except Exception:
        request_id = request.get(REQUEST_ID, "-")
        log.exception(
            "admin API: %s %s failed (request id %s)", request.method, request.path, request_id
        )
        return fail(
            500,
            "internal",
            f"internal error (request id {request_id}); the gateway log has the details",
            request_id=request_id,
        )


def _check_request(request: web.Request) -> None:
    # before anything reads the request: no control characters in the path (they would reach
    # the store and the log), no header value over MAX_HEADER_VALUE
    if _CONTROL.search(request.path):
        raise ApiError(400, "bad_request", "the path must not contain control characters")
    for name, value in request.headers.items():
        if len(value) > MAX_HEADER_VALUE:
            raise ApiError(
                431,
                "header_too_large",
                f"header {name[:64]!r} is longer than {MAX_HEADER_VALUE} bytes",
            )


@web.middleware
async def _access(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx: AdminContext = request.app[CTX]
    needed = request.app[PERMISSIONS].get(request.match_info.route)
    if needed is not None and ctx.config.admin.auth.enabled:
        user = await auth.authenticate(ctx, request)
        auth.authorize(user, needed)
        request[USER] = user
    return await handler(request)


def create_app(ctx: AdminContext) -> web.Application:
    """The admin API as an aiohttp application, serving ``ctx``."""
    app = web.Application(middlewares=[_request_id, _errors, _access], client_max_size=MAX_BODY)
    app[CTX] = ctx
    app[SCRAPE] = Scrape(
        gather=lambda: ctx.status.gather(),
        config=lambda: ctx.current or ctx.config,
        store=ctx.store,
    )
    permissions: dict[Any, str | None] = {}
    for op in openapi.OPERATIONS:
        route = app.router.add_route(op.method, op.path, op.handler)
        permissions[route] = op.permission
    app.router.add_get("/openapi.json", openapi.openapi_json)
    app.router.add_get("/docs", openapi.docs_page)
    app.router.add_get("/docs/", openapi.docs_page)
    app.router.add_get("/docs/init.js", openapi.docs_init)
    app.router.add_get("/docs/openapi-3.0.json", openapi.openapi_30_json)
    app.router.add_static("/docs/static", openapi.swagger_ui_dir(), append_version=False)
    app[PERMISSIONS] = permissions
    app[KEYS] = KeyRing(ctx.store)  # the OAuth2 server's signing keys (admin.oauth)
    return app


class AdminServer:
    """The admin API listening on ``ctx.config.admin`` (``host``/``port``; port 0 = any).

    ``await server.start()`` binds and serves on the running loop; ``port`` is then the bound
    port; ``await server.stop()`` closes it.
    """

    def __init__(self, ctx: AdminContext, host: str | None = None, port: int | None = None):
        self.ctx = ctx
        self.host = ctx.config.admin.host if host is None else host
        self.port = ctx.config.admin.port if port is None else port
        self._runner: web.AppRunner | None = None
        if not ctx.config.admin.auth.enabled and not is_loopback(self.host):
            # checked here because every way of starting the admin API comes through here
            raise ConfigError(
                "auth can only be turned off when the admin API listens on a loopback "
                f"address (127.0.0.1, [::1] or localhost), not {self.host or 'every interface'!r}",
                path="admin.auth.enabled",
                file=ctx.config.source,
            )

    async def start(self) -> None:
        self._runner = web.AppRunner(create_app(self.ctx), access_log=None, **PARSER_LIMITS)
        self.port, url = await listen(self._runner, self.host, self.port)
        log.info("admin API on %s", url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
