"""Admin users, passwords, tokens and roles.

Passwords are kept as bcrypt hashes (salted, cost 12 by default). ``POST /api/auth/login``
trades a username and password for a JWT (claims ``sub``, ``role``, ``iat``, ``exp``) signed
with ``admin.auth.jwt_secret``; requests carry it as ``Authorization: Bearer <token>``. The
role is read from the store on every request, so a changed role applies at once.

Roles, each including the ones below it: ``viewer`` reads, ``editor`` also changes routes
and upstreams, ``admin`` also manages users.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import bcrypt
import jwt
from aiohttp import web

from isekai.admin.context import CTX, USER, AdminContext
from isekai.admin.http import ApiError, iso_time, ok, read_json
from isekai.admin.roles import MAX_PASSWORD_BYTES, MIN_PASSWORD, RANK, ROLES
from isekai.admin.schemas import USERNAME_PATTERN, first_error

__all__ = [
    "Permission",
    "check_password_rules",
    "check_username",
    "ensure_initial_admin",
    "hash_password",
    "issue_token",
    "verify_password",
]

log = logging.getLogger("isekai.admin")

ISSUER = "isekai-admin"
REALM = 'Bearer realm="isekai-admin"'


class Permission:
    """What an endpoint needs: the lowest role allowed, or nothing for public ones."""

    PUBLIC = None
    READ = "viewer"
    WRITE = "editor"
    USERS = "admin"


_USERNAME = re.compile(USERNAME_PATTERN)


def check_username(username: str) -> None:
    """``ValueError`` unless ``username`` is 1-64 letters, digits, '_', '.', '@' or '-'."""
    if not _USERNAME.fullmatch(username) or "\n" in username:
        raise ValueError(
            f"bad username {username!r}: use up to 64 letters, digits, '_', '.', '@' and '-', "
            "starting with a letter or digit"
        )


def check_password_rules(password: str) -> None:
    """``ValueError`` unless the password has 8 characters to 72 bytes."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password must be at most {MAX_PASSWORD_BYTES} bytes (UTF-8)")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")


def hash_password(password: str, rounds: int = 12) -> str:
    """A salted bcrypt hash of ``password`` (slow on purpose: call it off the event loop)."""
    check_password_rules(password)
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    """Whether ``password`` matches ``password_hash``; False for a malformed hash."""
    try:
        return bcrypt.checkpw(password.encode(), password_hash.encode("ascii"))
    except (ValueError, UnicodeError):
        return False


_dummy_hashes: dict[int, str] = {}


def _dummy_hash(rounds: int) -> str:
    # checked for unknown usernames, so that they take as long as wrong passwords
    if rounds not in _dummy_hashes:
        salt = bcrypt.gensalt(rounds)
        _dummy_hashes[rounds] = bcrypt.hashpw(os.urandom(16).hex().encode(), salt).decode()
    return _dummy_hashes[rounds]


def issue_token(ctx: AdminContext, username: str, role: str) -> tuple[str, int]:
    """A signed JWT for the user and its expiry in unix seconds."""
    auth = ctx.config.admin.auth
    now = int(time.time())
    expires = now + max(1, int(auth.jwt_expiry))
    claims = {"sub": username, "role": role, "iat": now, "exp": expires, "iss": ISSUER}
    return jwt.encode(claims, ctx.jwt_secret, algorithm=auth.jwt_algorithm), expires


def _unauthorized(message: str, error: str | None = None) -> ApiError:
    challenge = REALM if error is None else f'{REALM}, error="{error}"'
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


async def authenticate(ctx: AdminContext, request: web.Request) -> dict[str, Any]:
    """The user making ``request`` (``{"username", "role"}``), or 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if not header:
        raise _unauthorized("authentication required: send Authorization: Bearer <token>")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("use Authorization: Bearer <token>", "invalid_request")
    auth = ctx.config.admin.auth
    try:
        claims = jwt.decode(
            token.strip(),
            ctx.jwt_secret,
            algorithms=[auth.jwt_algorithm],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "role"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("the token has expired: log in again", "invalid_token") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("the token is not valid", "invalid_token") from None
    username = claims.get("sub")
    user = await ctx.store.get_user(username) if isinstance(username, str) else None
    if user is None:
        raise _unauthorized("the token's user does not exist", "invalid_token")
    return {"username": user["username"], "role": user["role"]}


def authorize(user: Mapping[str, Any], needed: str) -> None:
    """403 unless ``user``'s role is at least ``needed``."""
    if RANK.get(user.get("role", ""), 0) < RANK[needed]:
        raise ApiError(
            403,
            "forbidden",
            f"role {user.get('role')!r} may not do this: it needs {needed!r} or higher",
        )


async def _run(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# -- handlers ----------------------------------------------------------------------------------


async def login(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    body = await read_json(request)
    given = body.get("username") if isinstance(body, dict) else None
    if isinstance(given, str) and any(ord(c) < 0x20 or c == "\x7f" for c in given):
        # control characters never reach the store or the log
        raise ApiError(400, "bad_request", "bad username", path="body.username")
    problem = first_error("Login", body, "body")  # the username grammar of check_username
    if problem is not None:
        raise ApiError(422, "invalid", f"{problem[0]}: {problem[1]}", path=problem[0])
    username, password = body["username"], body["password"]
    user = await ctx.store.get_user(username)
    if user is None:
        await _run(verify_password, password, _dummy_hash(ctx.bcrypt_rounds))
        valid = False
    else:
        valid = await _run(verify_password, password, user["password_hash"])
    if not valid:
        log.info("admin login failed for %r from %s", username[:64], request.remote)
        raise _unauthorized("wrong username or password")
    token, expires = issue_token(ctx, user["username"], user["role"])
    log.info("admin login: %r (%s)", user["username"], user["role"])
    return ok(
        {
            "token": token,
            "token_type": "Bearer",
            "expires_in": max(0, expires - int(time.time())),
            "expires_at": iso_time(expires),
            "user": {"username": user["username"], "role": user["role"]},
        },
        headers={"Cache-Control": "no-store"},
    )


async def me(request: web.Request) -> web.Response:
    user = request.get(USER)
    if user is None:  # auth is off: everyone is admin
        return ok({"username": None, "role": "admin", "auth": False})
    return ok({**user, "auth": True})


def _user_view(user: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "username": user["username"],
        "role": user["role"],
        "created_at": iso_time(user.get("created_at")),
    }


async def create_user(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    body = await read_json(request)
    _check_body("UserCreate", body, "user")
    username = body["username"]
    _check(check_username, username, "user.username")
    _check(check_password_rules, body["password"], "user.password")
    password_hash = await _run(hash_password, body["password"], ctx.bcrypt_rounds)
    from isekai.store import AlreadyExists

    try:
        await ctx.store.create_user(username, password_hash, body["role"])
    except AlreadyExists:
        raise ApiError(409, "already_exists", f"user {username!r} already exists") from None
    log.info("admin user %r created with role %s", username, body["role"])
    user = await ctx.store.get_user(username)
    location = f"/api/users/{username}"
    return ok(_user_view(user), status=201, headers={"Location": location})


async def get_user(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    user = await ctx.store.get_user(request.match_info["username"])
    if user is None:
        raise ApiError(404, "not_found", f"no user {request.match_info['username']!r}")
    return ok(_user_view(user))


async def update_user(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    username = request.match_info["username"]
    body = await read_json(request)
    _check_body("UserUpdate", body, "user")
    user = await ctx.store.get_user(username)
    if user is None:
        if "password" not in body or "role" not in body:
            raise ApiError(404, "not_found", f"no user {username!r} (give password and role)")
        _check(check_username, username, "user.username")
    password_hash = user["password_hash"] if user is not None else None
    if "password" in body:
        _check(check_password_rules, body["password"], "user.password")
        password_hash = await _run(hash_password, body["password"], ctx.bcrypt_rounds)
    role = body.get("role", user["role"] if user is not None else None)
    assert password_hash is not None and role is not None
    await ctx.store.set_user(username, password_hash, role)
    log.info("admin user %r %s (role %s)", username, "updated" if user else "created", role)
    view = _user_view(await ctx.store.get_user(username))
    return ok(view, status=200 if user is not None else 201)


def _check_body(schema: str, body: Any, prefix: str) -> None:
    problem = first_error(schema, body, prefix)
    if problem is not None:
        raise ApiError(422, "invalid", f"{problem[0]}: {problem[1]}", path=problem[0])


def _check(rule: Any, value: str, path: str) -> None:
    try:
        rule(value)
    except ValueError as exc:
        raise ApiError(422, "invalid", f"{path}: {exc}", path=path) from None


# -- the first admin ---------------------------------------------------------------------------


async def ensure_initial_admin(
    store: Any, env: Mapping[str, str] | None = None, *, rounds: int = 12
) -> str | None:
    """Create the first admin user from ``ISEKAI_ADMIN_USERNAME``/``ISEKAI_ADMIN_PASSWORD``.

    Only when the store has no users at all; returns the username created, else None. With
    no users and no such variables it logs a warning (nobody can log in until a user is added
    with ``isekai users add``). Raises ``ValueError`` for a bad username or password.
    """
    env = os.environ if env is None else env
    if await store.count_users() > 0:
        return None
    username = env.get("ISEKAI_ADMIN_USERNAME") or ""
    password = env.get("ISEKAI_ADMIN_PASSWORD") or ""
    if not username or not password:
        log.warning(
            "the admin API has no users: set ISEKAI_ADMIN_USERNAME and ISEKAI_ADMIN_PASSWORD "
            "before starting, or add one with `isekai users add NAME --role admin`"
        )
        return None
    check_username(username)
    check_password_rules(password)
    password_hash = await _run(hash_password, password, rounds)
    from isekai.store import AlreadyExists

    try:
        await store.create_user(username, password_hash, "admin")
    except AlreadyExists:  # another process made it first
        return None
    log.info("created the initial admin user %r (from ISEKAI_ADMIN_USERNAME)", username)
    return username
