"""RS256 tokens for the ``small_get_jwt_*`` scenarios: one RSA key per bench run (made here,
its public half written into the gateway's ``jwt`` policy by `variants`), a token for every
request of the cached scenario (always the same one) and a rotation of distinct tokens for the
uncached one (more than the policy's cache holds, so every request verifies a signature)."""

from __future__ import annotations

import time
from functools import cache

CACHE_SIZE = 1000  # the bench policy's cache_size
ROTATION = 4000  # distinct tokens cycled by the uncached scenario (4× the cache: all misses)


@cache
def _key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem() -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        _key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def token(n: int) -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": f"bench-{n}", "aud": "bench", "iat": now, "exp": now + 86400}
    return jwt.encode(claims, _key(), algorithm="RS256", headers={"kid": "bench"})


def policy_yaml() -> str:
    import json

    pem = json.dumps(public_pem())
    return (
        "policies:\n"
        f"  bench_jwt: {{type: jwt, keys: [{{public_key: {pem}, algorithms: [RS256], kid: bench}}],"
        f" audience: bench, cache_size: {CACHE_SIZE}}}\n"
    )


def rotation_lua() -> str:
    """A wrk script part: every request carries the next of ROTATION distinct tokens."""
    lines = ["local tokens = {"]
    lines += [f'  "{token(n)}",' for n in range(ROTATION)]
    lines += [
        "}",
        "local i = 0",
        "request = function()",
        "  i = i % #tokens + 1",
        '  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[i]})',
        "end",
        "",
    ]
    return "\n".join(lines)
