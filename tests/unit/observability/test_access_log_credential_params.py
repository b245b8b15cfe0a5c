"""The access log's request target never shows a credential read from the query: the
parameters the config's policies read keys and tokens from are found in every place a
policy can be written, and their values are redacted however the name is encoded."""

from __future__ import annotations

from isekai.config.loader import load_config_text
from isekai.observability.access_log import credential_params, hide_params

CONFIG = """
upstreams:
  app: {targets: ["127.0.0.1:9001"]}
policies:
  keys: {type: api_key, query: api_key}
  header_only: {type: api_key}
  tokens: {type: jwt, keys: [{secret: "0123456789abcdef0123456789abcdef", algorithms: [HS256]}],
           token: {query: access_token}}
routes:
  - name: inline
    match: {path: /inline}
    upstream: app
    policies:
      - {type: jwt, keys: [{secret: "0123456789abcdef0123456789abcdef", algorithms: [HS256]}],
         token: {header: Authorization, query: jwt}}
"""


def test_credential_params_come_from_named_and_inline_policies():
    config = load_config_text(CONFIG, "gw.yaml")
    assert credential_params(config) == {"api_key", "access_token", "jwt"}


def test_hide_params_redacts_values_whatever_the_name_encoding():
    names = frozenset({"api_key", "access_token"})
    assert hide_params("a=1&api_key=SECRET&b=2", names) == "a=1&api_key=[redacted]&b=2"
    assert hide_params("api%5Fkey=SECRET", names) == "api%5Fkey=[redacted]"
    assert hide_params("access_token=T1&access_token=T2", names) == (
        "access_token=[redacted]&access_token=[redacted]"
    )
    assert hide_params("api_key&x=1", names) == "api_key&x=1"  # no value, nothing to hide
    assert hide_params("other=1", names) == "other=1"
    assert hide_params("api_key=SECRET", frozenset()) == "api_key=SECRET"
