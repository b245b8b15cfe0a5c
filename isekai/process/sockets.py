"""Listening sockets and process limits.

Listening sockets are bound with SO_REUSEPORT, so every worker has its own accept queue on the
same port and the kernel spreads connections across them; the master binds the same address
once to reserve the port without listening.
"""

from __future__ import annotations

import logging
import resource
import socket

from isekai.config.schema import Config

__all__ = ["BACKLOG", "bind_sockets", "format_address", "raise_fd_limit"]

log = logging.getLogger("isekai.process")

BACKLOG = 4096


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, not yet listening, non-blocking sockets for every address ``host`` resolves to.

    SO_REUSEADDR and SO_REUSEPORT are set, so several processes can bind the same address
    (each worker its own accept queue; the master one that only reserves the port). With
    port 0 the first address picks a free port and the others get the same one.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve listener host {host!r}: {exc.strerror}") from None
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address[:2]) in seen:
                continue
            seen.add((family, address[:2]))
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(socks) > 1:
                address = (address[0], socks[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as exc:
                shown = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
                raise OSError(
                    exc.errno, f"cannot bind {shown}:{address[1]}: {exc.strerror}"
                ) from None
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def format_address(host: str, port: int) -> str:
    """``http://host:port``, with IPv6 hosts in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def raise_fd_limit(config: Config) -> int:
    """Raise the open-file soft limit to the hard limit; log and return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the file descriptor limit to %d: %s", wanted, exc)
    log.info("file descriptor limit %d", soft)
    if soft < config.limits.max_connections:
        log.warning(
            "limits.max_connections is %d per worker but a process may open only %d files: "
            "raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower max_connections",
            config.limits.max_connections,
            soft,
        )
    return soft
