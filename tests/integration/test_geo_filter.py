"""The ``geo_filter`` policy through a real gateway in front of a real upstream, on a MaxMind
database the tests write themselves (tests/support/mmdb_writer.py).

Client addresses other than 127.0.0.1 are presented the way a proxy in front of the gateway
does: the loopback peer is a trusted proxy and names the client in ``X-Forwarded-For``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.support.gateway import REPO, start_from_yaml
from tests.support.mmdb_writer import country_database
from tests.support.upstream import Upstream

NETWORKS = {
    "127.0.0.1/32": "NL",
    "::1/128": "SE",
    "203.0.113.0/24": "XX",
    "198.51.100.0/24": "DE",
    "2001:db8::/32": "FR",
    "192.0.2.0/24": "JP",
}
# 10.0.0.0/8 is in no network of the database: an "unknown" client


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


IPV6 = _has_ipv6_loopback()


def config_text(upstream_port: int, database: str = "geo/GeoLite2-Country.mmdb") -> str:
    v6 = '\n  - {name: v6, bind: "[::1]:0"}' if IPV6 else ""
    return f"""
listeners:
  - {{name: public, bind: "127.0.0.1:0"}}{v6}
trusted_proxies: [127.0.0.1/32, "::1/128"]
upstreams: {{app: {{targets: ["127.0.0.1:{upstream_port}"]}}}}
policies:
  no_xx: {{type: geo_filter, database: {database}, deny: [XX]}}
  eu_only: {{type: geo_filter, database: {database}, allow: [de, FR, NL, SE]}}
  de_or_unknown: {{type: geo_filter, database: {database}, allow: [DE], unknown: allow}}
  strict_unknown: {{type: geo_filter, database: {database}, deny: [XX], unknown: deny}}
  custom: {{type: geo_filter, database: {database}, deny: [JP], header: X-Geo, cache_size: 0}}
routes:
  - {{name: deny, match: {{path: "/deny/*"}}, upstream: app, policies: [no_xx]}}
  - {{name: allow, match: {{path: "/allow/*"}}, upstream: app, policies: [eu_only]}}
  - {{name: unknown_ok, match: {{path: "/unknown-ok/*"}}, upstream: app,
      policies: [de_or_unknown]}}
  - {{name: unknown_deny, match: {{path: "/unknown-deny/*"}}, upstream: app,
      policies: [strict_unknown]}}
  - {{name: custom, match: {{path: "/custom/*"}}, upstream: app, policies: [custom]}}
  - {{name: plain, match: {{path: "/plain/*"}}, upstream: app}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("geo")
    (folder / "geo").mkdir()
    country_database(folder / "geo" / "GeoLite2-Country.mmdb", NETWORKS)
    with Upstream() as up:
        gw = start_from_yaml(folder, config_text(up.port))
        try:
            yield gw, up
        finally:
            gw.stop()


def call(setup, path: str, client: str | None = None, headers=None, listener: str = "public"):
    """(status, response headers lower-case, body, the upstream's header fields or None)."""
    gw, up = setup
    fields = dict(headers or {})
    if client is not None:
        fields["X-Forwarded-For"] = client
    host = "::1" if listener == "v6" else "127.0.0.1"
    before = len(up.requests)
    conn = http.client.HTTPConnection(host, gw.ports[listener], timeout=15)
    try:
        conn.request("GET", path, headers=fields)
        resp = conn.getresponse()
        body = resp.read()
        got = {name.lower(): value for name, value in resp.getheaders()}
    finally:
        conn.close()
    seen = up.requests[before:]
    assert len(seen) <= 1
    sent = None
    if seen:
        sent = {}
        for name, value in seen[0]["headers"]:
            sent.setdefault(name.lower(), []).append(value)
    return resp.status, got, body, sent


def refused(status: int, headers: dict, body: bytes, sent, message: str) -> None:
    assert status == 403 and sent is None
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "success": False,
        "error": message,
        "policy": "geo_filter",
        "request_id": headers["x-request-id"],
    }


def test_geo_filter_allowed_country_goes_upstream_with_its_code(setup):
    status, _, _, sent = call(setup, "/deny/a", "198.51.100.9")
    assert status == 200 and sent["x-country-code"] == ["DE"]
    status, _, _, sent = call(setup, "/deny/a")  # the peer itself: 127.0.0.1
    assert status == 200 and sent["x-country-code"] == ["NL"]


def test_geo_filter_denied_country_gets_403_json(setup):
    refused(*call(setup, "/deny/a", "203.0.113.7"), "client country not allowed")
    refused(*call(setup, "/allow/a", "192.0.2.1"), "client country not allowed")  # JP: not listed
    status, _, _, sent = call(setup, "/allow/a", "198.51.100.1")  # `de` in the file is DE
    assert status == 200 and sent["x-country-code"] == ["DE"]


def test_geo_filter_client_copies_of_the_header_never_reach_the_upstream(setup):
    forged = {"X-Country-Code": "DE", "x-country-code": "US"}
    status, _, _, sent = call(setup, "/deny/a", "2001:db8::5", forged)
    assert status == 200 and sent["x-country-code"] == ["FR"]
    # unknown client, allowed: no country to send, and the client's is gone
    status, _, _, sent = call(setup, "/deny/a", "10.0.0.5", forged)
    assert status == 200 and "x-country-code" not in sent
    # a route without any geo_filter: stripped too (only the gateway sets it)
    status, _, _, sent = call(setup, "/plain/a", None, forged)
    assert status == 200 and "x-country-code" not in sent
    status, _, _, sent = call(setup, "/custom/a", "198.51.100.2", {"X-Geo": "ZZ"})
    assert status == 200 and sent["x-geo"] == ["DE"] and "x-country-code" not in sent
    status, _, _, sent = call(setup, "/plain/a", None, {"X-Geo": "ZZ"})
    assert status == 200 and "x-geo" not in sent


def test_geo_filter_unknown_addresses_allow_or_deny(setup):
    # default: allowed by a deny-list filter, refused by an allow-list one
    status, _, _, sent = call(setup, "/deny/a", "10.1.2.3")
    assert status == 200 and "x-country-code" not in sent
    refused(*call(setup, "/allow/a", "10.1.2.3"), "client country unknown")
    status, _, _, sent = call(setup, "/unknown-ok/a", "10.1.2.3")
    assert status == 200 and "x-country-code" not in sent
    refused(*call(setup, "/unknown-ok/a", "2001:db8::1"), "client country not allowed")
    refused(*call(setup, "/unknown-deny/a", "10.1.2.3"), "client country unknown")
    status, _, _, sent = call(setup, "/unknown-deny/a", "198.51.100.3")
    assert status == 200 and sent["x-country-code"] == ["DE"]


def test_geo_filter_ipv6_clients(setup):
    status, _, _, sent = call(setup, "/allow/a", "2001:db8::1")
    assert status == 200 and sent["x-country-code"] == ["FR"]
    status, _, _, sent = call(setup, "/unknown-deny/a", "2001:db9::1")  # not in the database
    assert status == 403 and sent is None
    # an IPv4 client as a dual-stack proxy writes it
    status, _, _, sent = call(setup, "/deny/a", "::ffff:198.51.100.7")
    assert status == 200 and sent["x-country-code"] == ["DE"]
    refused(*call(setup, "/deny/a", "::ffff:203.0.113.8"), "client country not allowed")


@pytest.mark.skipif(not IPV6, reason="no IPv6 loopback on this machine")
def test_geo_filter_on_an_ipv6_listener(setup):
    status, _, _, sent = call(setup, "/allow/a", listener="v6")  # the peer ::1 is SE
    assert status == 200 and sent["x-country-code"] == ["SE"]
    refused(*call(setup, "/deny/a", "203.0.113.1", listener="v6"), "client country not allowed")
    status, _, _, sent = call(setup, "/deny/a", "2001:db8::9", listener="v6")
    assert status == 200 and sent["x-country-code"] == ["FR"]


def test_geo_filter_garbage_forwarded_addresses_fall_back_to_the_peer(setup):
    # what is not an address in X-Forwarded-For is skipped by trusted_proxies: the client is
    # then the peer (127.0.0.1, NL); never an error
    for client in ("junk", "999.1.1.1", "2001:db8::1%eth0", "1.2.3.4.5", "XX, ::zz"):
        status, _, _, sent = call(setup, "/unknown-deny/a", client)
        assert status == 200 and sent["x-country-code"] == ["NL"], client


def test_geo_filter_missing_database_is_a_startup_error(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(
        'listeners: [{name: public, bind: "127.0.0.1:0"}]\nadmin: {enabled: false}\n'
        "policies:\n  no_xx: {type: geo_filter, database: geo/missing.mmdb, deny: [XX]}\n"
        'routes: [{name: r, match: {path: "/"}, respond: {status: 200}, policies: [no_xx]}]\n'
    )
    missing = tmp_path / "geo" / "missing.mmdb"
    expected = (
        f"gateway.yaml:4: policies.no_xx.database: cannot open the GeoIP database {missing}: "
        "no such file"
    )
    with pytest.raises(RuntimeError) as failed:
        start_from_yaml(tmp_path, path.read_text())
    assert expected in str(failed.value)
    # a file that is not a database
    (tmp_path / "geo").mkdir()
    missing.write_bytes(b"not a database\n" * 100)
    run = subprocess.run(
        [sys.executable, "-m", "isekai", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )
    assert run.returncode == 1
    assert f"policies.no_xx.database: {missing} is not a MaxMind DB file" in run.stderr + run.stdout


def test_geo_filter_reload_opens_a_replaced_database(tmp_path):
    (tmp_path / "geo").mkdir()
    database = tmp_path / "geo" / "GeoLite2-Country.mmdb"
    country_database(database, NETWORKS)
    with Upstream() as up:
        gw = start_from_yaml(tmp_path, "workers: 2\n" + config_text(up.port))
        try:
            setup = (gw, up)
            refused(*call(setup, "/deny/a", "203.0.113.7"), "client country not allowed")
            # geoipupdate's way: a new file renamed over the old one
            fresh = tmp_path / "geo" / "new.mmdb"
            country_database(fresh, {**NETWORKS, "203.0.113.0/24": "DE"})
            os.replace(fresh, database)
            mark = gw.mark()
            gw.send_signal(signal.SIGHUP)
            assert gw.wait_for_log(r"all 2 workers on config version 2", 15, mark)
            for _ in range(6):  # new connections: whichever worker takes them
                status, _, _, sent = call(setup, "/deny/a", "203.0.113.7")
                assert status == 200 and sent["x-country-code"] == ["DE"]
            # a reload that finds the file broken keeps the running config
            database.write_bytes(b"\0" * 64)
            mark = gw.mark()
            gw.send_signal(signal.SIGHUP)
            assert gw.wait_for_log(r"reload rejected: .*is not a MaxMind DB file", 15, mark)
            status, _, _, sent = call(setup, "/deny/a", "203.0.113.7")
            assert status == 200 and sent["x-country-code"] == ["DE"]
        finally:
            gw.stop()
