"""security_headers: presets resolved into the fields sent, every override key and its grammar,
errors with file:line and config paths (YAML and admin API documents alike), and what the
builder makes of it."""

from __future__ import annotations

import textwrap

import pytest
from jsonschema import Draft202012Validator

from isekai._core.families import HeadersPolicy
from isekai.config import jsonschema
from isekai.config.loader import load_config_text, read_document
from isekai.config.policies import PolicySpec
from isekai.config.security_headers_policy import PRESETS, SecurityHeadersConfig
from isekai.errors import ConfigError
from isekai.policies import BUILDERS
from isekai.policies.security_headers import KeepUpstream


def options(body: str) -> SecurityHeadersConfig:
    text = f"policies:\n  s: {body}\n"
    return load_config_text(textwrap.dedent(text), "gw.yaml", env={}).policies["s"].options


def error(body: str) -> str:
    with pytest.raises(ConfigError) as caught:
        options(body)
    return str(caught.value)


def test_security_headers_presets_resolve_to_their_fields():
    strict = options("{type: security_headers}")
    assert strict.preset == "strict" and strict.override_upstream
    assert dict(strict.fields) == {
        "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
        "Content-Security-Policy": (
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": (
            "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
            "microphone=(), payment=(), usb=()"
        ),
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    moderate = options("{type: security_headers, preset: Moderate}")
    assert len(moderate.fields) == len(PRESETS["moderate"])
    assert dict(moderate.fields)["X-Frame-Options"] == "SAMEORIGIN"


def test_security_headers_overrides():
    found = options(
        "{type: security_headers, preset: none, hsts: {max_age: 730d}, "
        "csp: \"default-src 'self'\", "
        "frame_options: sameorigin, content_type_options: NOSNIFF, "
        "referrer_policy: 'no-referrer, Strict-Origin', permissions_policy: 'camera=()', "
        "cross_origin_opener_policy: Unsafe-None, cross_origin_resource_policy: same-site, "
        "cross_origin_embedder_policy: credentialless, override_upstream: false}"
    )
    assert dict(found.fields) == {
        "Strict-Transport-Security": "max-age=63072000",
        "Content-Security-Policy": "default-src 'self'",
        "X-Frame-Options": "SAMEORIGIN",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer, strict-origin",
        "Permissions-Policy": "camera=()",
        "Cross-Origin-Opener-Policy": "unsafe-none",
        "Cross-Origin-Resource-Policy": "same-site",
        "Cross-Origin-Embedder-Policy": "credentialless",
    }
    assert not found.override_upstream
    assert hash(found)  # frozen and hashable: the instance is kept while it is unchanged
    off = options("{type: security_headers, hsts: false, csp: false, frame_options: false}")
    names = dict(off.fields)
    assert "Strict-Transport-Security" not in names and "X-Frame-Options" not in names
    assert "Content-Security-Policy" not in names and names["Referrer-Policy"] == "no-referrer"
    hsts = options(
        "{type: security_headers, hsts: {max_age: 31536000, include_subdomains: true, "
        "preload: true}}"
    )
    assert dict(hsts.fields)["Strict-Transport-Security"] == (
        "max-age=31536000; includeSubDomains; preload"
    )
    written = options("{type: security_headers, hsts: 'max-age=600 ; Preload'}")
    assert dict(written.fields)["Strict-Transport-Security"] == "max-age=600 ; Preload"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{type: security_headers, preset: loose}", "policies.s.preset: 'loose' is not one of"),
        (
            "{type: security_headers, preset: none}",
            "gw.yaml:2: policies.s: sends no header: choose a preset or give header values",
        ),
        (
            "{type: security_headers, csp: \"default-src 'none'\\r\\nX-Evil: 1\"}",
            "gw.yaml:2: policies.s.csp: header values must not contain CR, LF or NUL",
        ),
        ("{type: security_headers, csp: true}", "policies.s.csp: expected a header value or false"),
        ("{type: security_headers, csp: ''}", "policies.s.csp: an empty Content-Security-Policy"),
        ("{type: security_headers, csp: 5}", "policies.s.csp: expected a header value or false"),
        (
            "{type: security_headers, frame_options: ALLOW-FROM x}",
            "policies.s.frame_options: 'ALLOW-FROM x' is not one of: DENY, SAMEORIGIN (or false)",
        ),
        (
            "{type: security_headers, content_type_options: sniff}",
            "policies.s.content_type_options: 'sniff' is not one of: nosniff",
        ),
        (
            "{type: security_headers, referrer_policy: no-referer}",
            "policies.s.referrer_policy: 'no-referer' is not a referrer policy",
        ),
        (
            "{type: security_headers, referrer_policy: [origin, bogus]}",
            "policies.s.referrer_policy: 'bogus' is not a referrer policy",
        ),
        (
            "{type: security_headers, referrer_policy: []}",
            "expected a list of referrer policy tokens",
        ),
        (
            "{type: security_headers, cross_origin_opener_policy: same}",
            "policies.s.cross_origin_opener_policy: 'same' is not one of",
        ),
        (
            "{type: security_headers, hsts: 'includeSubDomains'}",
            "policies.s.hsts: expected a Strict-Transport-Security value like",
        ),
        (
            "{type: security_headers, hsts: 'max-age=soon'}",
            "policies.s.hsts: expected a Strict-Transport-Security value like",
        ),
        ("{type: security_headers, hsts: {}}", "policies.s.hsts: needs max_age"),
        (
            "{type: security_headers, hsts: {max_age: soon}}",
            "policies.s.hsts.max_age: expected a duration like 365d or seconds, got 'soon'",
        ),
        (
            "{type: security_headers, hsts: {max_age: 1d, includeSubDomains: true}}",
            "policies.s.hsts.includeSubDomains: unknown key 'includeSubDomains'",
        ),
        (
            "{type: security_headers, hsts: {max_age: 1d, preload: yes please}}",
            "policies.s.hsts.preload: expected true or false",
        ),
        (
            "{type: security_headers, "
            "hsts: {max_age: 30d, include_subdomains: true, preload: true}}",
            "policies.s.hsts.preload: preload needs include_subdomains: true and max_age of at "
            "least a year",
        ),
        ("{type: security_headers, hsts: [1]}", "policies.s.hsts: expected a header value, false"),
        ("{type: security_headers, nonce: x}", "policies.s.nonce: unknown key"),
    ],
)
def test_security_headers_errors(body, message):
    assert message in error(body)


def test_security_headers_admin_documents_and_the_schema():
    doc = {"type": "security_headers", "preset": "strict", "csp": "default-src 'self'"}
    spec = read_document(PolicySpec, doc, "policy", extra={"name": "s"})
    assert dict(spec.options.fields)["Content-Security-Policy"] == "default-src 'self'"
    with pytest.raises(ConfigError) as caught:
        read_document(PolicySpec, {**doc, "csp": "a\nb"}, "policy", extra={"name": "s"})
    assert "policy.csp: header values must not contain CR, LF or NUL" in str(caught.value)
    schema = jsonschema.document_schema()
    validator = Draft202012Validator(
        schema["$defs"]["SecurityHeadersConfig"] | {"$defs": schema["$defs"]}
    )
    base = {"type": "security_headers"}
    good = {"preset": "strict", "csp": False, "hsts": {"max_age": 60}, "frame_options": "Deny"}
    assert not list(validator.iter_errors(base | good))
    assert not list(validator.iter_errors(base | {"referrer_policy": ["origin", "same-origin"]}))
    for bad in (
        {"csp": "a\nb"},
        {"csp": True},
        {"frame_options": "ALLOW-FROM x"},
        {"hsts": {"max_age": 60, "extra": 1}},
        {"hsts": "includeSubDomains"},
        {"referrer_policy": ["bogus"]},
    ):
        assert list(validator.iter_errors(base | bad)), bad


def test_security_headers_builder():
    policy = BUILDERS["security_headers"](options("{type: security_headers, csp: 'img-src $x'}"))
    assert isinstance(policy, HeadersPolicy) and policy.responses and not policy.requests
    keep = BUILDERS["security_headers"](
        options("{type: security_headers, preset: moderate, override_upstream: false}")
    )
    assert isinstance(keep, KeepUpstream)

    class Head:
        def __init__(self) -> None:
            self.fields = {"x-frame-options": "DENY"}

        def header(self, name):
            return self.fields.get(name.lower())

        def set_header(self, name, value):
            self.fields[name.lower()] = value

    head = Head()
    keep.on_response(None, head)
    assert head.fields["x-frame-options"] == "DENY"  # the upstream's stays
    assert head.fields["referrer-policy"] == "strict-origin-when-cross-origin"
