"""The control channel between the master and its children: newline-delimited JSON.

Master to worker: ``{"type": "config", ...}`` (a whole config) or ``{"type": "config",
"changes", "version"}`` (validated changes to the current one); worker to master:
``{"type": "ready"}``, ``{"type": "reloaded", "version"}``, ``{"type": "rejected", ...}``; the
admin process sends ``{"type": "apply", "config" | "changes"}`` and receives
``{"type": "reload"}``. EOF means the peer is gone.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import socket

from isekai.config.changes import Change

__all__ = [
    "CONTROL_LINE_LIMIT",
    "decode_changes",
    "encode_changes",
    "encode_message",
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


def encode_changes(changes: list[Change]) -> str:
    """Validated changes (their built routes and upstreams) for the channel: the receiving
    process applies them without validating again. Pickle is safe here: both ends are this
    gateway's own processes, on a socketpair nothing else can reach."""
    return base64.b64encode(pickle.dumps(changes, protocol=pickle.HIGHEST_PROTOCOL)).decode()


def decode_changes(text: str) -> list[Change]:
    return pickle.loads(base64.b64decode(text))  # noqa: S301 - our own processes only
