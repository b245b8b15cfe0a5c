"""Admin users, passwords, tokens and roles.

Passwords are kept as bcrypt hashes (salted, cost 12 by default) and must follow the policy
of `isekai.admin.passwords`. ``POST /api/auth/login`` trades a username and password for a JWT
(claims ``sub``, ``role``, ``ver``, ``iat``, ``exp``) signed with ``admin.auth.jwt_secret``;
requests carry it as ``Authorization: Bearer <token>``. Login attempts are counted in the
store per username and per client address (``admin.auth.login_limits``): past the limit the
answer is 429 with ``Retry-After``, whatever the password.

The user is read from the store on every request: its role applies at once, and a token whose
``ver`` is not the user's current ``token_version`` is refused. A password change, a role
change, deleting the user and ``POST /api/auth/logout`` bump that version, so every token
issued before stops working at once on every admin process and every gateway sharing the
store.

Roles, each including the ones below it: ``viewer`` reads, ``editor`` also changes routes
and upstreams, ``admin`` also manages users.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import bcrypt
import jwt
from aiohttp import web

from isekai.admin import audit
from isekai.admin.context import CTX, USER, AdminContext
from isekai.admin.http import ApiError, iso_time, ok, read_json
from isekai.admin.passwords import check_password
from isekai.admin.roles import RANK, ROLES
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


def check_password_rules(password: str, username: str | None = None) -> None:
    """``ValueError`` unless the password follows the policy (`passwords.check_password`:
    12 characters to 72 bytes, not a common password, not containing the username)."""
    check_password(password, username)


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")


def hash_password(password: str, rounds: int = 12) -> str:
    """A salted bcrypt hash of ``password`` (slow on purpose: call it off the event loop).

    The policy is checked here too, without the username (callers check it with the
    username first: `check_password_rules`)."""
    check_password(password)
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


def issue_token(ctx: AdminContext, username: str, role: str, version: int = 0) -> tuple[str, int]:
    """A signed JWT for the user (``version``: its current ``token_version``) and its expiry
    in unix seconds."""
    auth = ctx.config.admin.auth
    now = int(time.time())
    expires = now + max(1, int(auth.jwt_expiry))
    claims = {
        "sub": username,
        "role": role,
        "ver": version,
        "iat": now,
        "exp": expires,
        "iss": ISSUER,
    }
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
            options={"require": ["exp", "iat", "sub", "role", "ver"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("the token has expired: log in again", "invalid_token") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("the token is not valid", "invalid_token") from None
    username = claims.get("sub")
    user = await ctx.store.get_user(username) if isinstance(username, str) else None
    if user is None:
        raise _unauthorized("the token's user does not exist", "invalid_token")
    version = claims.get("ver")
    if type(version) is not int or version != user.get("token_version", 0):
        raise _unauthorized(
            "the token was revoked (the user's password or role changed, or it logged out): "
            "log in again",
            "invalid_token",
        )
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
    limits = ctx.config.admin.auth.login_limits
    # counted before the password is checked, whether the user exists or not: at most
    # per_user guesses per window however many arrive at once, and a locked known user
    # looks like a locked unknown one
    user_key, ip_key = f"user:{username.lower()}", f"ip:{request.remote or '-'}"
    wait = await ctx.store.take_login_attempt(
        [(user_key, limits.per_user), (ip_key, limits.per_ip)], limits.window
    )
    if wait is not None:
        retry = max(1, math.ceil(wait))
        log.warning(
            "admin login refused for %r from %s: too many attempts (%ds left)",
            username,
            request.remote,
            retry,
        )
        raise ApiError(
            429,
            "too_many_attempts",
            f"too many login attempts: try again in {retry} seconds",
            headers={"Retry-After": str(retry)},
            retry_after=retry,
        )
    user = await ctx.store.get_user(username)
    if user is None:
        await _run(verify_password, password, _dummy_hash(ctx.bcrypt_rounds))
        valid = False
    else:
        valid = await _run(verify_password, password, user["password_hash"])
    if not valid:
        log.info("admin login failed for %r from %s", username, request.remote)
        await audit.record(request, "login_failed", "user", username)
        raise _unauthorized("wrong username or password")
    await ctx.store.login_succeeded([user_key], [ip_key])
    token, expires = issue_token(ctx, user["username"], user["role"], user["token_version"])
    log.info("admin login: %r (%s)", user["username"], user["role"])
    await audit.record(request, "login", "user", user["username"])
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


async def logout(request: web.Request) -> web.Response:
    """End every token of the caller (its ``token_version`` is bumped)."""
    ctx: AdminContext = request.app[CTX]
    user = request.get(USER)
    if user is None:
        raise ApiError(409, "auth_disabled", "authentication is off: there is no token to end")
    from isekai.store import NotFound

    record = audit.entry(request, "logout", "user", user["username"])
    try:
        await ctx.store.bump_token_version(user["username"], audit=record)
    except NotFound:  # deleted meanwhile: its tokens are already refused
        pass
    audit.announce(record)
    return ok(message=f"logged out: every token of {user['username']!r} is revoked")


def _user_view(user: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "username": user["username"],
        "role": user["role"],
        "created_at": iso_time(user.get("created_at")),
    }


def _audit_view(user: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # what the audit log keeps of a user: never the hash
    return None if user is None else {"username": user["username"], "role": user["role"]}


def _last_admin(username: str) -> ApiError:
    return ApiError(
        409,
        "last_admin",
        f"{username!r} is the last admin: make another user admin first",
    )


async def list_users(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    return ok([_user_view(user) for user in await ctx.store.list_users()])


async def create_user(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    body = await read_json(request)
    _check_body("UserCreate", body, "user")
    username = body["username"]
    _check(check_username, username, "user.username")
    _check(lambda p: check_password_rules(p, username), body["password"], "user.password")
    password_hash = await _run(hash_password, body["password"], ctx.bcrypt_rounds)
    from isekai.store import AlreadyExists

    after = {"username": username, "role": body["role"]}
    record = audit.entry(request, "created", "user", username, None, after)
    try:
        await ctx.store.create_user(username, password_hash, body["role"], audit=record)
    except AlreadyExists:
        raise ApiError(409, "already_exists", f"user {username!r} already exists") from None
    audit.announce(record)
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
    # what the body does not name stays as stored when the update runs (None), not as read
    # here: a concurrent password reset or demotion is never written back
    password_hash = None
    if "password" in body:
        _check(lambda p: check_password_rules(p, username), body["password"], "user.password")
        password_hash = await _run(hash_password, body["password"], ctx.bcrypt_rounds)
    role = body.get("role")
    name = user["username"] if user is not None else username
    shown_role = role if role is not None else user["role"] if user is not None else None
    after = {"username": name, "role": shown_role, "password_changed": "password" in body}
    action = "replaced" if user is not None else "created"
    record = audit.entry(request, action, "user", name, _audit_view(user), after)
    from isekai.store import LastAdmin

    try:
        await ctx.store.set_user(username, password_hash, role, audit=record)
    except LastAdmin:
        raise _last_admin(name) from None
    except ValueError:  # deleted meanwhile, and the body cannot make it anew
        raise ApiError(404, "not_found", f"no user {username!r} (give password and role)") from None
    audit.announce(record)
    view = _user_view(await ctx.store.get_user(username))
    return ok(view, status=200 if user is not None else 201)


async def delete_user(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    username = request.match_info["username"]
    user = await ctx.store.get_user(username)
    if user is None:
        raise ApiError(404, "not_found", f"no user {username!r}")
    from isekai.store import LastAdmin, NotFound

    record = audit.entry(request, "deleted", "user", user["username"], _audit_view(user), None)
    try:
        await ctx.store.delete_user(username, audit=record)
    except NotFound:
        raise ApiError(404, "not_found", f"no user {username!r}") from None
    except LastAdmin:
        raise _last_admin(user["username"]) from None
    audit.announce(record)
    return ok(message=f"user {user['username']!r} deleted: its tokens no longer work")


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
    check_password_rules(password, username)
    password_hash = await _run(hash_password, password, rounds)
    from isekai.store import AlreadyExists

    try:
        await store.create_user(username, password_hash, "admin")
    except AlreadyExists:  # another process made it first
        return None
    log.info("created the initial admin user %r (from ISEKAI_ADMIN_USERNAME)", username)
    return username
