"""A key sent in the query never reaches the access log: the api_key policy takes the
parameter out of the query whether it accepts the key or refuses it (an expired or revoked
key, a mistyped one), so the logged request target holds no key."""

from __future__ import annotations

from tests.integration.test_api_keys import ACME_KEY, OLD_KEY, call, yaml_config
from tests.support.gateway import wait_for

UNKNOWN_KEY = "isk_mistyped-or-revoked-key-0123456789"


def test_api_keys_in_the_query_are_not_in_the_access_log(start_gateway, upstream, tmp_path):
    access = tmp_path / "access.log"
    extra = f'observability:\n  access_log: {{enabled: true, path: "{access}", format: combined}}\n'
    gw = start_gateway(yaml_config(upstream.port, extra))
    assert call(gw.port, f"/q?x=1&api_key={ACME_KEY}")[0] == 200
    assert call(gw.port, f"/q?api_key={OLD_KEY}&y=2")[0] == 401
    assert call(gw.port, f"/q?api_key={UNKNOWN_KEY}")[0] == 401

    def lines() -> list[str]:
        return access.read_text().splitlines() if access.exists() else []

    assert wait_for(lambda: len(lines()) >= 3, timeout=10), lines()
    text = "\n".join(lines())
    for key in (ACME_KEY, OLD_KEY, UNKNOWN_KEY):
        assert key not in text, text
    assert '"GET /q?x=1 HTTP/1.1" 200' in text
    assert '"GET /q?y=2 HTTP/1.1" 401' in text
