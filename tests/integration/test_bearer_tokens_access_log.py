"""A bearer token sent in the query never reaches the access log when the policy refuses it
(expired, for another audience, badly signed): the jwt policy takes the parameter out of
the query on every refusal, as ``hide_credentials`` does on acceptance."""

from __future__ import annotations

import time

import jwt as pyjwt

from tests.integration.test_api_keys import call
from tests.support.gateway import wait_for

SECRET = "query-token-secret-0123456789abcdef0123"


def _token(**claims) -> str:
    body = {"sub": "acme", "aud": "api", "exp": int(time.time()) + 600, **claims}
    return pyjwt.encode(body, SECRET, algorithm="HS256", headers={"kid": "local"})


def test_refused_query_tokens_are_not_in_the_access_log(start_gateway, upstream, tmp_path):
    access = tmp_path / "access.log"
    gw = start_gateway(
        f"""
        workers: 1
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        upstreams:
          app: {{targets: ["127.0.0.1:{upstream.port}"]}}
        policies:
          tokens:
            type: jwt
            keys: [{{secret: "{SECRET}", algorithms: [HS256], kid: local}}]
            audience: api
            token: {{query: access_token}}
        routes:
          - {{name: q, match: {{path: /q}}, upstream: app, policies: [tokens]}}
        observability:
          access_log: {{enabled: true, path: "{access}", format: combined}}
        """
    )
    good = _token()
    expired = _token(exp=int(time.time()) - 3600)
    elsewhere = _token(aud="billing")
    forged = _token()[:-4] + "AAAA"
    assert call(gw.port, f"/q?x=1&access_token={good}")[0] == 200
    for token in (expired, elsewhere, forged):
        status, _, body = call(gw.port, f"/q?access_token={token}&y=2")
        assert status == 401, body

    def lines() -> list[str]:
        return access.read_text().splitlines() if access.exists() else []

    assert wait_for(lambda: len(lines()) >= 4, timeout=10), lines()
    text = "\n".join(lines())
    for token in (good, expired, elsewhere, forged):
        assert token not in text, text
    assert text.count('"GET /q?y=2 HTTP/1.1" 401') == 3, text
