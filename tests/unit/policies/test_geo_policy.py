"""geo_filter: the config (paths, country codes, errors with file:line), the policy's decisions,
its cache and database handling, the client-header stripping, and the test MMDB writer read
back by the maxminddb readers."""

from __future__ import annotations

import dataclasses
import json
import os
from types import SimpleNamespace

import maxminddb
import pytest

from isekai._core.counters import Counters
from isekai.chains import PolicySet
from isekai.config.geo_policy import GATEWAY_REQUEST_FIELDS, GeoFilterConfig
from isekai.config.loader import load_config, load_config_text, read_document
from isekai.config.policies import REQUEST_MANAGED_HEADERS, PolicySpec
from isekai.errors import ConfigError
from isekai.gateway import build_policy, stripped_headers
from isekai.policies import BUILDERS
from isekai.policies.geo_filter import GeoFilter, country_of
from tests.support.mmdb_writer import MmdbWriter, country_database

NETWORKS = {
    "203.0.113.0/24": "XX",
    "198.51.100.0/24": "DE",
    "2001:db8::/32": "FR",
    "10.0.0.0/8": "AA",
    "10.1.0.0/16": "BB",  # inside the one before: takes its part
    "::1/128": "SE",
}


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "geo").mkdir()
    country_database(tmp_path / "geo" / "c.mmdb", NETWORKS)
    return tmp_path


def write_config(folder, policy: str, name: str = "gw.yaml") -> str:
    path = folder / name
    path.write_text(f"policies:\n  g: {policy}\n")
    return str(path)


def config_error(folder, policy: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(folder, policy))
    return str(caught.value)


# -- the test database writer ----------------------------------------------------------------


@pytest.mark.parametrize("record_size", [24, 28, 32])
@pytest.mark.parametrize(
    "mode", [maxminddb.MODE_MMAP_EXT, maxminddb.MODE_MMAP, maxminddb.MODE_FILE]
)
def test_mmdb_writer_reads_back_with_maxminddb(tmp_path, record_size, mode):
    path = country_database(tmp_path / "t.mmdb", NETWORKS, record_size)
    reader = maxminddb.open_database(str(path), mode)
    try:
        meta = reader.metadata()
        assert (meta.ip_version, meta.record_size) == (6, record_size)
        assert meta.database_type == "GeoLite2-Country"
        codes = {
            address: country_of(reader.get(address))
            for address in (
                "203.0.113.7",
                "198.51.100.255",
                "198.51.101.1",
                "2001:db8:1::1",
                "2001:db9::1",
                "10.2.3.4",
                "10.1.3.4",
                "::1",
                "127.0.0.1",
            )
        }
        assert codes == {
            "203.0.113.7": "XX",
            "198.51.100.255": "DE",
            "198.51.101.1": None,
            "2001:db8:1::1": "FR",
            "2001:db9::1": None,
            "10.2.3.4": "AA",
            "10.1.3.4": "BB",
            "::1": "SE",
            "127.0.0.1": None,
        }
        assert reader.get_with_prefix_len("10.1.3.4")[1] == 16
        assert reader.get("203.0.113.1")["country"]["names"] == {"en": "Land XX"}
    finally:
        reader.close()


def test_mmdb_writer_value_types(tmp_path):
    writer = MmdbWriter("Test-Types")
    record = {
        "s": "é" * 40,  # a size past 28 and multi-byte text
        "long": "x" * 300,
        "n": 7,
        "big": 70_000,
        "huge": 1 << 40,
        "yes": True,
        "no": False,
        "f": 1.5,
        "list": [1, "two", {"three": 3}],
    }
    writer.insert("192.0.2.0/24", record)
    reader = maxminddb.open_database(str(writer.write(tmp_path / "t.mmdb")))
    try:
        assert reader.get("192.0.2.9") == record
        assert reader.metadata().database_type == "Test-Types"
    finally:
        reader.close()


# -- the config -----------------------------------------------------------------------------------


def test_geo_config_path_is_relative_to_the_config_file(folder, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config = load_config(
        write_config(folder, "{type: geo_filter, database: geo/c.mmdb, deny: [xx]}")
    )
    options = config.policies["g"].options
    assert isinstance(options, GeoFilterConfig)
    assert options.database == "geo/c.mmdb"
    assert options.database_path == str(folder / "geo" / "c.mmdb")
    assert options.deny == ("XX",) and options.allow == ()
    assert options.unknown == "allow" and options.header == "X-Country-Code"
    info = os.stat(folder / "geo" / "c.mmdb")
    assert options.database_stamp == (info.st_ino, info.st_size, info.st_mtime_ns)
    # an absolute path stays; no file: relative to the working directory
    absolute = str(folder / "geo" / "c.mmdb")
    text = f"policies:\n  g: {{type: geo_filter, database: {absolute}, allow: [de, Fr]}}\n"
    options = load_config_text(text).policies["g"].options
    assert options.database_path == absolute
    assert options.allow == ("DE", "FR") and options.unknown == "deny"
    monkeypatch.chdir(folder)
    text = "policies:\n  g: {type: geo_filter, database: geo/c.mmdb}\n"
    assert load_config_text(text).policies["g"].options.database_path == absolute


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("{type: geo_filter}", "policies.g.database: missing required key 'database'"),
        (
            "{type: geo_filter, database: geo/c.mmdb, deny: [DEU]}",
            "gw.yaml:2: policies.g.deny[0]: 'DEU' is not an ISO 3166-1 alpha-2 country code",
        ),
        (
            "{type: geo_filter, database: geo/c.mmdb, allow: [DE, 'd1']}",
            "policies.g.allow[1]: 'd1' is not an ISO 3166-1 alpha-2 country code",
        ),
        (
            "{type: geo_filter, database: geo/c.mmdb, allow: [DE, de]}",
            "policies.g.allow[1]: country DE is listed twice",
        ),
        (
            "{type: geo_filter, database: geo/c.mmdb, allow: [DE], deny: [de]}",
            "policies.g.deny: DE both allowed and denied",
        ),
        (
            "{type: geo_filter, database: geo/c.mmdb, unknown: maybe}",
            "policies.g.unknown: 'maybe' is not one of: allow, deny",
        ),
        (
            "{type: geo_filter, database: geo/c.mmdb, header: X-Forwarded-For}",
            "policies.g.header: X-Forwarded-For is managed by the gateway",
        ),
        (
            "{type: geo_filter, database: geo/c.mmdb, header: 'X Country'}",
            "policies.g.header: bad header name",
        ),
        (
            "{type: geo_filter, database: geo/c.mmdb, cache_size: -1}",
            "policies.g.cache_size:",
        ),
        (
            "{type: geo_filter, database: geo/nope.mmdb}",
            "gw.yaml:2: policies.g.database: cannot open the GeoIP database",
        ),
        (
            "{type: geo_filter, database: geo}",
            "gw.yaml:2: policies.g.database: cannot open the GeoIP database",
        ),
        ("{type: geo_filter, database: gw.yaml}", "is not a MaxMind DB file"),
    ],
)
def test_geo_config_errors(folder, policy, message):
    assert message in config_error(folder, policy)


def test_geo_config_the_managed_fields_match_the_headers_family():
    assert GATEWAY_REQUEST_FIELDS == REQUEST_MANAGED_HEADERS


def test_geo_config_through_the_admin_api_needs_an_absolute_path(folder):
    doc = {"type": "geo_filter", "database": "geo/c.mmdb", "deny": ["XX"]}
    with pytest.raises(ConfigError) as caught:
        read_document(PolicySpec, doc, "policy", extra={"name": "g"})
    assert "policy.database: must be an absolute path" in str(caught.value)
    doc["database"] = str(folder / "geo" / "c.mmdb")
    spec = read_document(PolicySpec, doc, "policy", extra={"name": "g"})
    assert spec.options.database_path == doc["database"]
    assert spec.options.deny == ("XX",)


def test_geo_config_the_header_is_stripped_from_every_client_request(folder):
    path = write_config(
        folder,
        "{type: geo_filter, database: geo/c.mmdb, header: X-Geo}\n"
        "routes:\n"
        "  - {name: r, match: {path: /}, respond: {status: 200},\n"
        "     policies: [{type: geo_filter, database: geo/c.mmdb}]}\n",
    )
    assert set(stripped_headers(load_config(path))) >= {
        b"x-geo",
        b"x-country-code",
        b"x-consumer-id",
    }


# -- the policy ---------------------------------------------------------------------------------


def geo(folder, **options) -> GeoFilter:
    values = {
        "database": "c.mmdb",
        "database_path": str(folder / "geo" / "c.mmdb"),
        "allow": (),
        "deny": (),
        "unknown": "allow",
        "header": "X-Country-Code",
        "cache_size": 100,
        **options,
    }
    return BUILDERS["geo_filter"](SimpleNamespace(**values))


class Req:
    def __init__(self, client_ip: str) -> None:
        self.client_ip = client_ip
        self.ctx: dict = {}
        self.headers: dict[str, str] = {}

    def set_header(self, name: str, value: str) -> None:
        self.headers[name] = value


def decide(policy: GeoFilter, address: str):
    req = Req(address)
    answer = policy.on_request(req)
    if answer is None:
        return "pass", req.headers, req.ctx
    body = json.loads(answer.body)
    return answer.status, body["error"], body["policy"]


def test_geo_policy_decisions(folder):
    deny = geo(folder, deny=("XX",))
    assert decide(deny, "203.0.113.9") == (403, "client country not allowed", "geo_filter")
    assert decide(deny, "198.51.100.1") == ("pass", {"X-Country-Code": "DE"}, {"country": "DE"})
    assert decide(deny, "192.0.2.1") == ("pass", {}, {})  # unknown, allowed
    allow = geo(folder, allow=("DE", "FR"), unknown="deny", header="X-Geo")
    assert decide(allow, "2001:db8::7") == ("pass", {"X-Geo": "FR"}, {"country": "FR"})
    assert decide(allow, "10.0.0.1")[0] == 403
    assert decide(allow, "192.0.2.1") == (403, "client country unknown", "geo_filter")
    both = geo(folder, allow=("AA", "BB"), deny=("BB",))
    assert decide(both, "10.1.0.1")[0] == 403 and decide(both, "10.9.0.1")[0] == "pass"


@pytest.mark.parametrize(
    "address",
    [
        "",
        "junk",
        "999.1.1.1",
        "1.2.3.4.5",
        "2001:db8::1::2",
        "::ffff:999.1.1.1",
        "\x00",
        "a" * 5000,
    ],
)
def test_geo_policy_garbage_addresses_are_unknown(folder, address):
    assert decide(geo(folder, unknown="deny"), address) == (
        403,
        "client country unknown",
        "geo_filter",
    )
    assert decide(geo(folder), address) == ("pass", {}, {})


def test_geo_policy_ipv4_mapped_addresses_are_ipv4(folder):
    policy = geo(folder)
    assert policy.country("::ffff:198.51.100.4") == "DE"
    assert policy.country("::1") == "SE"


def test_geo_policy_cache_is_bounded(folder):
    policy = geo(folder, cache_size=3)
    for i in range(10):
        policy.country(f"198.51.100.{i}")
    assert len(policy.cache) <= 3 and policy.lookups == 10
    policy.country("198.51.100.9")
    assert policy.lookups == 10  # a hit
    uncached = geo(folder, cache_size=0)
    uncached.country("198.51.100.1")
    uncached.country("198.51.100.1")
    assert uncached.lookups == 2 and uncached.cache == {}


def test_geo_policy_records_without_a_usable_code_are_unknown():
    assert country_of({"registered_country": {"iso_code": "DE"}}) == "DE"
    assert country_of({"country": {"names": {}}, "registered_country": {"iso_code": "FR"}}) == "FR"
    for record in (
        None,
        [],
        "DE",
        {"country": "DE"},
        {"country": {"iso_code": "de"}},
        {"country": {"iso_code": "D\r\nX-Evil: 1"}},
        {"country": {"iso_code": 49}},
    ):
        assert country_of(record) is None


def test_geo_policy_database_errors_name_the_file(tmp_path):
    for content in (None, b"", b"\xab\xcd\xefMaxMind.com" + b"\x00" * 10):
        path = tmp_path / "bad.mmdb"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ConfigError) as caught:
            geo(tmp_path, database_path=str(path))
        assert f"geo_filter: cannot open the GeoIP database {path}" in str(caught.value)
        path.unlink(missing_ok=True)


def test_geo_policy_reader_closed_and_replaced_file_makes_a_new_instance(folder):
    path = write_config(folder, "{type: geo_filter, database: geo/c.mmdb, deny: [XX]}")
    policies = PolicySet(Counters(), build_policy)
    config = load_config(path)
    chain = policies.chain(["g"], "routes.r", config.policies)
    # a reload that finds the file as it was: the same instance
    again = policies.chain(["g"], "routes.r", load_config(path).policies)
    assert again[0] is chain[0]
    policies.release(again)
    # the file replaced (as geoipupdate does: a new file renamed over it)
    fresh = folder / "geo" / "new.mmdb"
    country_database(fresh, {**NETWORKS, "203.0.113.0/24": "DE"})
    os.replace(fresh, folder / "geo" / "c.mmdb")
    replaced = load_config(path)
    assert replaced.policies["g"] != config.policies["g"]
    assert (
        dataclasses.replace(
            replaced.policies["g"].options,
            database_stamp=config.policies["g"].options.database_stamp,
        )
        == config.policies["g"].options
    )
    new_chain = policies.chain(["g"], "routes.r", replaced.policies)
    assert new_chain[0] is not chain[0]
    policies.release(chain)  # the old instance is closed: its reader too
    assert len(policies) == 1
    policies.close()


def test_geo_policy_after_close_answers_503(folder):
    policy = geo(folder, deny=("XX",))
    assert decide(policy, "198.51.100.1")[0] == "pass"
    policy.close()
    assert decide(policy, "198.51.100.1") == (503, "country database not available", "geo_filter")
