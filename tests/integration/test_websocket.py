"""WebSocket through the gateway: Upgrade relayed on `websocket: true` routes, then a tunnel."""

from __future__ import annotations

import asyncio
import base64
import os
import time

import aiohttp
import pytest

from tests.support.client import connect
from tests.support.ws_upstream import WebSocketUpstream


@pytest.fixture
def ws_upstream():
    with WebSocketUpstream() as up:
        yield up


@pytest.fixture
def gw(start_gateway, ws_upstream):
    return start_gateway(
        f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        limits: {{websocket_idle_timeout: 1s}}
        upstreams:
          ws: {{targets: ["127.0.0.1:{ws_upstream.port}"]}}
        routes:
          - {{name: ws, match: {{path: "/ws"}}, upstream: ws, websocket: true}}
          - {{name: ws-close, match: {{path: "/ws-close"}}, upstream: ws, websocket: true}}
          - {{name: idle, match: {{path: "/idle/*"}}, upstream: ws, websocket: true,
              strip_prefix: /idle, limits: {{websocket_idle_timeout: 300ms}}}}
          - {{name: plain, match: {{path: "/plain"}}, upstream: ws}}
        """
    )


async def _echo(port: int, path: str, messages: list) -> list:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}{path}") as ws:
            replies = []
            for message in messages:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message)
                reply = await asyncio.wait_for(ws.receive(), 5)
                replies.append(reply.data)
            return replies


def test_websocket_echo_through_tunnel(gw, ws_upstream):
    big = os.urandom(300_000)
    messages = ["hello", b"\x00\x01binary", big, "last"]
    assert asyncio.run(_echo(gw.port, "/ws", messages)) == messages
    assert ws_upstream.handshakes == 1


def test_websocket_many_messages_both_ways(gw):
    messages = [f"message {i}" for i in range(500)]
    assert asyncio.run(_echo(gw.port, "/ws", messages)) == messages


def test_websocket_upstream_close_closes_client(gw):
    async def run() -> int:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{gw.port}/ws-close") as ws:
                msg = await asyncio.wait_for(ws.receive(), 5)
                return msg.type

    assert asyncio.run(run()) in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


def _handshake(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), key)
    )


def test_websocket_idle_tunnel_is_closed(gw):
    with connect(gw.port) as sock:
        sock.sendall(_handshake("/idle/ws"))
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: websocket" in head.lower()
        started = time.monotonic()
        sock.settimeout(5)
        assert sock.recv(4096) == b""  # closed by the gateway, not by us
        assert time.monotonic() - started < 3


def test_websocket_upgrade_on_plain_route_is_served_as_http(gw, ws_upstream):
    with connect(gw.port) as sock:
        sock.sendall(_handshake("/plain"))
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"plain")
    assert ws_upstream.handshakes == 0


def test_websocket_refused_upgrade_closes_after_response(gw, ws_upstream, start_gateway):
    """The upstream answers an Upgrade with a plain 200: relayed, then the connection closes."""
    other = start_gateway(
        f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        upstreams:
          ws: {{targets: ["127.0.0.1:{ws_upstream.port}"]}}
        routes:
          - {{name: ws, match: {{path: "/*"}}, upstream: ws, websocket: true}}
        """,
        name="other.yaml",
    )
    with connect(other.port) as sock:
        sock.sendall(_handshake("/not-a-socket"))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in data.lower()
    assert data.endswith(b"plain")


@pytest.mark.parametrize("workers", [1, 2])
def test_websocket_tunnel_survives_reload(start_gateway, ws_upstream, workers):
    import signal

    text = f"""
    listeners: [{{name: public, bind: "127.0.0.1:0"}}]
    workers: {workers}
    upstreams:
      ws: {{targets: ["127.0.0.1:{ws_upstream.port}"]}}
    routes:
      - {{name: ws, match: {{path: "/ws"}}, upstream: ws, websocket: true}}
    """
    gw = start_gateway(text)

    async def run() -> list:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{gw.port}/ws") as ws:
                await ws.send_str("before")
                first = (await asyncio.wait_for(ws.receive(), 5)).data
                gw.config_path.write_text(
                    text + '  - {name: new, match: {path: "/new"}, respond: {body: new}}\n'
                )
                mark = gw.mark()
                gw.send_signal(signal.SIGHUP)
                reloaded = await asyncio.to_thread(
                    gw.wait_for_log, r"config reloaded \(version 2\)", 5.0, mark
                )
                assert reloaded, gw.output()
                await ws.send_str("after")
                second = (await asyncio.wait_for(ws.receive(), 5)).data
                return [first, second]

    assert asyncio.run(run()) == ["before", "after"]
