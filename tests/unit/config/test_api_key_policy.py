"""The api_key family's config and security.api_key_pepper: defaults, and every refusal with
its file:line and config path."""

from __future__ import annotations

import pytest

from isekai.config.api_key_policy import ApiKeyConfig
from isekai.config.loader import load_config_text
from isekai.errors import ConfigError


def test_api_key_config_defaults_and_full_form():
    config = load_config_text(
        """
security: {api_key_pepper: "0123456789abcdef"}
policies:
  plain: {type: api_key}
  full: {type: api_key, header: X-Key, query: api_key, hide_credentials: false, realm: partners,
         upstream_headers: {consumer: X-Who}}
"""
    )
    assert config.security.api_key_pepper == "0123456789abcdef"
    assert "0123456789abcdef" not in repr(config.security)
    plain = config.policies["plain"].options
    assert plain == ApiKeyConfig()
    assert (plain.header, plain.query, plain.hide_credentials, plain.realm) == (
        "X-API-Key",
        None,
        True,
        "isekai",
    )
    assert plain.upstream_headers.consumer == "X-Consumer-ID"
    full = config.policies["full"].options
    assert (full.header, full.query, full.hide_credentials, full.realm) == (
        "X-Key",
        "api_key",
        False,
        "partners",
    )
    assert full.upstream_headers.consumer == "X-Who"
    assert load_config_text("{}").security.api_key_pepper is None


def test_api_key_config_pepper_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEST_API_KEY_PEPPER", "from-the-environment-0123")
    config = load_config_text('security: {api_key_pepper: "${TEST_API_KEY_PEPPER}"}')
    assert config.security.api_key_pepper == "from-the-environment-0123"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "security: {api_key_pepper: short}",
            "<string>:1: security.api_key_pepper: must be at least 16 characters long, got 5",
        ),
        ("security: {pepper: x}", "security.pepper: unknown key 'pepper'"),
        (
            "policies:\n  k: {type: api_key, query: 'a b'}",
            "<string>:2: policies.k.query: not a query parameter name: 'a b'",
        ),
        (
            "policies:\n  k: {type: api_key, query: ''}",
            "policies.k.query: not a query parameter name: ''",
        ),
        (
            "policies:\n  k: {type: api_key, realm: 'a\"b'}",
            "policies.k.realm: not a realm",
        ),
        (
            "policies:\n  k: {type: api_key, header: 'X Key'}",
            "policies.k.header:",
        ),
        (
            "policies:\n  k: {type: api_key, header: X-Consumer-ID}",
            "policies.k.header: X-Consumer-ID cannot carry the key",
        ),
        (
            "policies:\n  k: {type: api_key, header: X-Who, upstream_headers: {consumer: X-Who}}",
            "policies.k.header: X-Who cannot carry the key",
        ),
        (
            "policies:\n  k: {type: api_key, header: Host}",
            "policies.k.header: Host cannot carry the key",
        ),
        (
            "policies:\n  k: {type: api_key, hide_credentials: maybe}",
            "policies.k.hide_credentials:",
        ),
        ("policies:\n  k: {type: api_key, keys: []}", "policies.k.keys: unknown key 'keys'"),
    ],
)
def test_api_key_config_refusals(text, message):
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    assert message in str(caught.value)
