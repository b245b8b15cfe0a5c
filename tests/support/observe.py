"""Reading a running gateway from a test: free ports, plain GETs, a whole /metrics scrape as
samples, and the admin API's JSON envelope."""

from __future__ import annotations

import http.client
import json
import socket

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def scrape(port: int) -> Samples:
    """Every sample of a scrape: (sample name, sorted labels) -> value."""
    status, body, headers = get(port, "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def admin_json(port: int, path: str) -> dict:
    """``data`` of a successful admin API answer."""
    status, body, _ = get(port, path)
    assert status == 200, body
    reply = json.loads(body)
    assert reply["success"] is True
    return reply["data"]
