"""The control channel between the master and its children: newline-delimited JSON.

Master to worker: ``{"type": "config", ...}`` (a whole config) or ``{"type": "config",
"changes", "version"}`` (validated changes to the current one); worker to master:
``{"type": "ready"}``, ``{"type": "reloaded", "version"}``, ``{"type": "rejected", ...}``; the
admin process sends ``{"type": "apply", "config" | "changes"}`` and receives
``{"type": "reload"}``. Active health checks (`isekai.master` has the details): master to
worker ``{"type": "health_checker", "on"}`` (elected to run them), ``{"type": "health",
"upstream", "target", "healthy"}`` (a verdict, relayed) and ``{"type": "health_verdicts",
"verdicts"}`` (every verdict so far, to a worker that became ready); worker to master the same
``{"type": "health", ...}`` from the elected worker. EOF means the peer is gone.
"""

from __future__ import annotations

import asyncio
import base64
import json
import marshal
import pickle
import socket

from isekai.config.changes import Change

__all__ = [
    "CONTROL_LINE_LIMIT",
    "decode_changes",
    "encode_changes",
    "encode_message",
    "decode_stats",
    "encode_stats",
    "open_channel",
    "send_message",
]

CONTROL_LINE_LIMIT = 64 * 1024 * 1024  # bytes: one control message (a whole config file)


async def open_channel(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Reader and writer over a control socket, taking messages up to `CONTROL_LINE_LIMIT`."""
    return await asyncio.open_connection(sock=sock, limit=CONTROL_LINE_LIMIT)


def encode_message(message: dict) -> bytes:
    """``message`` as one line of the channel."""
    return json.dumps(message).encode() + b"\n"


def send_message(writer: asyncio.StreamWriter, message: dict) -> None:
    """One newline-delimited JSON message on a control channel."""
    writer.write(encode_message(message))


def encode_stats(stats: dict) -> str:
    """A worker's statistics (`Worker.stats()`) for the channel: marshal, then base64, so the
    master relays one JSON string per worker without parsing it (several MB with 10,000 routes:
    marshal is ten times faster than JSON both ways). Both ends are this gateway's processes."""
    return base64.b64encode(marshal.dumps(stats)).decode()


def decode_stats(text: str) -> dict:
    return marshal.loads(base64.b64decode(text))


def encode_changes(changes: list[Change]) -> str:
    """Validated changes (their built routes and upstreams) for the channel: the receiving
    process applies them without validating again. Pickle is safe here: both ends are this
    gateway's own processes, on a socketpair nothing else can reach."""
    return base64.b64encode(pickle.dumps(changes, protocol=pickle.HIGHEST_PROTOCOL)).decode()


def decode_changes(text: str) -> list[Change]:
    return pickle.loads(base64.b64decode(text))  # noqa: S301 - our own processes only
