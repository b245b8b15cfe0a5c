"""The control channel between the master and its children: newline-delimited JSON.

Master to worker: ``{"type": "config", ...}``; worker to master: ``{"type": "ready"}``,
``{"type": "reloaded", "version"}``, ``{"type": "rejected", ...}``; the admin process sends
``{"type": "apply", "config"}`` and receives ``{"type": "reload"}``. EOF means the peer is gone.
"""

from __future__ import annotations

import asyncio
import json
import socket

__all__ = ["CONTROL_LINE_LIMIT", "encode_message", "open_channel", "send_message"]

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
