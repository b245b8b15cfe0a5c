"""One worker: a uvloop loop, the listeners, the current snapshot, timers, reload and shutdown.

`serve(config)` with ``workers: 1`` is the whole gateway in one process: it binds the listeners,
reloads the config file on SIGHUP and drains on SIGTERM/SIGINT. With more workers it hands over
to the master (`isekai.master`), which forks processes that call `run_worker`: the same `Worker`,
bound to the ports the master reserved, taking new configs from the master over a control
socket instead of SIGHUP.

Listening sockets are bound with SO_REUSEPORT, so every worker has its own accept queue on the
same port and the kernel spreads connections across them. A worker keeps its own listening
socket and hands asyncio a dup of it: closing the asyncio server then stops accepting (when
``limits.max_connections`` is reached) while the socket keeps listening, so new connections wait
in the kernel backlog until the server is recreated from another dup.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable, Mapping

import uvloop

from isekai._core.counters import Counters
from isekai._core.protocol import DownstreamProtocol, ServerState
from isekai.config.loader import load_config, load_config_text
from isekai.config.schema import Config
from isekai.errors import ConfigError
from isekai.gateway import Snapshot, build_snapshot
from isekai.store import StoreError
from isekai.upstream.clusters import ClusterRegistry

log = logging.getLogger("isekai.worker")

UPSTREAM_SWEEP_INTERVAL = 0.1  # seconds: granularity of connect/read timeouts
DOWNSTREAM_SWEEP_INTERVAL = 1.0  # seconds: granularity of keep-alive idle timeouts
DRAIN_POLL_INTERVAL = 0.05  # seconds: how often a drain looks for finished requests
BACKLOG = 4096
CONTROL_LINE_LIMIT = 64 * 1024 * 1024  # bytes: one control message (a whole config file)
CAPACITY_LOG_INTERVAL = 10.0  # seconds: at most one "at capacity" warning per interval
# config keys a reload cannot change
RESTART_KEYS = ("listeners", "workers", "pid_file", "admin", "store")


class Worker:
    """Serves every listener of one config on the running loop."""

    def __init__(
        self, config: Config, loop: asyncio.AbstractEventLoop, *, version: int = 1
    ) -> None:
        self.loop = loop
        self.counters = Counters()
        self.registry = ClusterRegistry(loop)
        self.snapshot: Snapshot = build_snapshot(config, self.registry, self.counters, version)
        self.state = ServerState(self.snapshot.router, self.counters, loop)
        self.state.on_capacity = self._on_capacity
        self._apply_limits(config)
        self.servers: list[asyncio.base_events.Server] = []
        self.addresses: list[tuple[str, str, int]] = []
        self.stopping = False
        self.capacity_pauses = 0  # times accepting stopped because max_connections was reached
        self._listening: list[socket.socket] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._full = False
        self._reconciling: asyncio.Task | None = None
        self._capacity_logged = -CAPACITY_LOG_INTERVAL

    def _apply_limits(self, config: Config) -> None:
        limits = config.limits
        state = self.state
        state.max_request_line = limits.max_request_line
        state.max_header_bytes = limits.max_header_bytes
        state.max_header_count = limits.max_header_count
        state.keepalive_timeout = limits.keepalive_timeout
        state.max_requests_per_connection = limits.max_requests_per_connection
        state.header_read_timeout = limits.header_read_timeout
        state.body_idle_timeout = limits.body_idle_timeout
        state.websocket_idle_timeout = limits.websocket_idle_timeout
        state.max_connections = limits.max_connections
        state.set_trusted_proxies(config.trusted_proxies)

    def swap(self, config: Config, version: int | None = None) -> Snapshot:
        """Build a snapshot of ``config`` aside, then make it current in one assignment.

        ``version`` defaults to the current one plus one. Listeners are not rebound: a changed
        ``listeners`` list takes effect on restart. Raises ConfigError if the routes conflict.
        """
        if version is None:
            version = self.snapshot.version + 1
        snapshot = build_snapshot(config, self.registry, self.counters, version)
        self.snapshot = snapshot
        self._apply_limits(config)
        self.state.router = snapshot.router
        return snapshot

    async def start(self, ports: Mapping[str, int] | None = None) -> None:
        """Bind and listen on every listener, then accept.

        ``ports`` maps listener names to the port to bind instead of the configured one (the
        master passes the ports it resolved for ``:0``). Raises OSError naming the address if
        a listener cannot be bound.
        """
        for listener in self.snapshot.config.listeners:
            port = listener.port if ports is None else ports.get(listener.name, listener.port)
            for sock in bind_sockets(listener.host, port):
                self._listening.append(sock)
                sock.listen(BACKLOG)
                host, bound = sock.getsockname()[:2]
                self.addresses.append((listener.name, host, bound))
        await self._reconcile()
        self._tick_upstream()
        self._tick_downstream()

    # -- accepting ---------------------------------------------------------------------------

    def _on_capacity(self, full: bool) -> None:
        # called by _core when client connections reach / drop below limits.max_connections
        self._full = full
        if full:
            if self.servers:
                self.capacity_pauses += 1
                now = self.loop.time()
                if now - self._capacity_logged >= CAPACITY_LOG_INTERVAL:
                    self._capacity_logged = now
                    log.warning(
                        "at capacity: %d client connections (limits.max_connections); new "
                        "connections wait in the listen backlog (%d pauses so far)",
                        len(self.state.connections),
                        self.capacity_pauses,
                    )
            self._close_servers()
        elif not self.stopping and self._reconciling is None:
            self._reconciling = self.loop.create_task(self._reconcile())

    async def _reconcile(self) -> None:
        # open servers on dups of the listening sockets unless full or stopping; a change of
        # state while a server is being created is caught by the loop condition
        try:
            while not (self._full or self.stopping) and not self.servers:
                servers = [await self._server(sock) for sock in self._listening]
                if self._full or self.stopping:
                    for server in servers:
                        server.close()
                else:
                    self.servers = servers
        finally:
            self._reconciling = None

    async def _server(self, sock: socket.socket) -> asyncio.base_events.Server:
        dup = socket.socket(fileno=os.dup(sock.fileno()))
        try:
            return await self.loop.create_server(
                functools.partial(DownstreamProtocol, self.state), sock=dup, backlog=BACKLOG
            )
        except BaseException:
            dup.close()
            raise

    def _close_servers(self) -> None:
        for server in self.servers:
            server.close()
        self.servers = []

    def stop_accepting(self) -> None:
        """Close the listening sockets for good; connections already accepted carry on."""
        self.stopping = True
        self._close_servers()
        for sock in self._listening:
            sock.close()
        self._listening = []

    # -- timers ------------------------------------------------------------------------------

    def _tick_upstream(self) -> None:
        self.registry.sweep()
        self._timers.append(self.loop.call_later(UPSTREAM_SWEEP_INTERVAL, self._tick_upstream))
        if len(self._timers) > 8:
            self._timers = self._timers[-2:]

    def _tick_downstream(self) -> None:
        self.state.sweep()
        self._timers.append(self.loop.call_later(DOWNSTREAM_SWEEP_INTERVAL, self._tick_downstream))

    # -- shutdown ----------------------------------------------------------------------------

    def in_flight(self) -> int:
        """Client connections with a request being read or answered."""
        return sum(1 for proto in self.state.connections if proto.busy)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let requests in flight finish (up to ``timeout``), close the rest.

        Keep-alive connections are closed as soon as they have no request in flight, after
        the response is written out; whatever is still open at the deadline is aborted.
        """
        self.stop_accepting()
        deadline = self.loop.time() + timeout
        while True:
            for proto in list(self.state.connections):
                proto.drain()
            if not self.state.connections or self.loop.time() >= deadline:
                break
            await asyncio.sleep(DRAIN_POLL_INTERVAL)
        self.abort()

    def abort(self) -> None:
        """Stop at once: close the listeners, abort every connection, close the pools."""
        self.stop_accepting()
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        for proto in list(self.state.connections):
            proto.shutdown()
        self.registry.close()


# -- sockets and process limits ----------------------------------------------------------------


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


# -- reload ------------------------------------------------------------------------------------


def read_config(path: str) -> tuple[Config, str]:
    """Read the config file at ``path`` once; return it validated, with its text.

    Raises ConfigError, as `load_config` does.
    """
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        load_config(path)  # raises the located error
        raise ConfigError("the file changed while it was read", file=path) from None
    return load_config_text(text, path), text


def keep_running(new: Config, running: Config) -> Config:
    """``new`` with the keys a reload cannot change kept at their running values."""
    return dataclasses.replace(new, **{key: getattr(running, key) for key in RESTART_KEYS})


def warn_restart_needed(new: Config, running: Config, warned: dict[str, object]) -> None:
    """Warn about keys of ``new`` that differ from ``running`` and need a restart.

    ``warned`` remembers the values already warned about, so a file that keeps a changed value
    (or a value overridden by an option) is reported once, not at every reload.
    """
    changed = []
    for key in RESTART_KEYS:
        value = getattr(new, key)
        if value != getattr(running, key) and warned.get(key) != value:
            changed.append(key)
        warned[key] = value
    if changed:
        log.warning(
            "%s changed in %s: restart to apply (the rest of the file is applied)",
            ", ".join(changed),
            new.source,
        )


# -- signals and the two ways of running a worker ----------------------------------------------


class _Signals:
    """SIGTERM/SIGINT: drain; SIGQUIT or a second SIGINT: stop at once; SIGHUP: ``reload``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reload: Callable[[], None] | None):
        self.stop = asyncio.Event()
        self.quit = asyncio.Event()
        self._interrupts = 0
        loop.add_signal_handler(signal.SIGTERM, self._terminate)
        loop.add_signal_handler(signal.SIGINT, self._interrupt)
        loop.add_signal_handler(signal.SIGQUIT, self._quit)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload)
        else:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the master reloads, not workers

    def _terminate(self) -> None:
        self.stop.set()

    def _interrupt(self) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            self._quit()
        self.stop.set()

    def _quit(self) -> None:
        self.quit.set()
        self.stop.set()


async def _until_stopped(worker: Worker, signals: _Signals) -> int:
    await signals.stop.wait()
    if not signals.quit.is_set():
        timeout = worker.snapshot.config.shutdown_timeout
        log.info("shutting down: draining requests in flight (up to %gs)", timeout)
        drain = asyncio.ensure_future(worker.drain(timeout))
        quit = asyncio.ensure_future(signals.quit.wait())
        await asyncio.wait({drain, quit}, return_when=asyncio.FIRST_COMPLETED)
        quit.cancel()
        drain.cancel()
    if signals.quit.is_set():
        worker.abort()
        log.info("stopped immediately")
    else:
        log.info("stopped")
    return 0


class _FileReloader:
    """SIGHUP in a single-process gateway: re-read the file and swap (merged with the store
    when the admin API runs)."""

    def __init__(self, worker: Worker, plane=None) -> None:
        self.worker = worker
        self.plane = plane
        self.warned: dict[str, object] = {}

    def __call__(self) -> None:
        worker = self.worker
        if worker.stopping:
            log.info("SIGHUP ignored: shutting down")
            return
        source = worker.snapshot.config.source
        try:
            new, text = read_config(source)
        except ConfigError as exc:
            log.error("reload rejected: %s", exc)
            return
        warn_restart_needed(new, worker.snapshot.config, self.warned)
        if self.plane is not None:
            asyncio.ensure_future(self._through_plane(new, text))
            return
        try:
            snapshot = worker.swap(keep_running(new, worker.snapshot.config))
        except ConfigError as exc:
            log.error("reload rejected: %s", exc)
            return
        except Exception:
            log.exception("reload failed; keeping config version %d", worker.snapshot.version)
            return
        log.info("config reloaded (version %d)", snapshot.version)

    async def _through_plane(self, new: Config, text: str) -> None:
        try:
            await self.plane.reload(new, text)
        except ConfigError as exc:
            log.error("reload rejected: %s", exc)
        except Exception:
            log.exception("reload failed; keeping config version %d", self.worker.snapshot.version)
        else:
            log.info("config reloaded (version %d)", self.worker.snapshot.version)


async def _serve(config: Config) -> int:
    loop = asyncio.get_running_loop()
    plane = None
    if config.admin.enabled:
        from isekai.control import ControlPlane

        try:
            plane = await ControlPlane.open(config, read_config(config.source)[1])
        except (ConfigError, StoreError) as exc:
            log.error("cannot start the control plane: %s", exc)
            return 1
        config = plane.config
    worker = Worker(config, loop)
    try:
        await worker.start()
    except OSError as exc:
        log.error("%s", exc)
        worker.abort()
        if plane is not None:
            await plane.close()
        return 1
    for name, host, port in worker.addresses:
        log.info("listener %s on %s", name, format_address(host, port))
    feed = None
    if plane is not None:
        plane.ctx.status = worker_status(worker)

        async def apply(new: Config, message: dict) -> None:
            snapshot = worker.swap(keep_running(new, worker.snapshot.config))
            log.info("config applied (version %d)", snapshot.version)

        try:
            await plane.start(apply)
        except OSError as exc:
            log.error("cannot start the admin API on %s: %s", config.admin.bind, exc)
            worker.abort()
            await plane.close()
            return 1
        if config.admin.request_logs.enabled:
            from isekai.observability.request_log import RequestLogFeed

            feed = RequestLogFeed(worker.state, plane.store, config.admin.request_logs, purge=True)
            await feed.start()
    signals = _Signals(loop, reload=_FileReloader(worker, plane))
    log.info(
        "isekai serving %d routes, %d upstreams (config %s)",
        len(config.routes),
        len(config.upstreams),
        config.source,
    )
    code = await _until_stopped(worker, signals)
    if feed is not None:
        await feed.stop()
    if plane is not None:
        await plane.close()
    return code


def worker_status(worker: Worker):
    """Status providers of the admin API for a single-process gateway."""
    from isekai.admin.context import StatusProviders

    return StatusProviders(
        workers=lambda: 1,
        config_version=lambda: worker.snapshot.version,
        load_balancer=lambda: worker.registry.status(),
        websockets=lambda: {"open_tunnels": worker.state.tunnel_count},
    )


def serve(config: Config) -> int:
    """Run the gateway for ``config`` until stopped; return the exit code.

    With ``workers: 1`` everything runs in this process and SIGHUP reloads ``config.source``;
    with more, this process becomes the master (`isekai.master`) and forks the workers.
    """
    if config.workers > 1:
        from isekai.master import run

        return run(config)
    raise_fd_limit(config)
    return uvloop.run(_serve(config))


# -- a worker process forked by the master -----------------------------------------------------


def send_message(writer: asyncio.StreamWriter, message: dict) -> None:
    """One newline-delimited JSON message on a control channel."""
    writer.write(json.dumps(message).encode() + b"\n")


def _apply_config(worker: Worker, message: dict, writer: asyncio.StreamWriter) -> None:
    version = message.get("version")
    try:
        if "routes" in message:  # the file plus what the admin API stored
            from isekai.control import config_from_message

            new = config_from_message(message)
        else:
            new = load_config_text(message["text"], message["source"])
        snapshot = worker.swap(keep_running(new, worker.snapshot.config), version)
    except Exception as exc:
        if isinstance(exc, ConfigError):
            log.error("reload rejected: %s", exc)
        else:
            log.exception("reload failed; keeping config version %d", worker.snapshot.version)
        send_message(writer, {"type": "rejected", "version": version, "error": str(exc)})
        return
    log.info("config reloaded (version %d)", snapshot.version)
    send_message(writer, {"type": "reloaded", "version": snapshot.version})


async def _follow_master(
    worker: Worker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, signals: _Signals
) -> None:
    try:
        while not signals.stop.is_set():
            line = await reader.readline()
            if not line:
                log.warning("the master is gone: shutting down")
                break
            message = json.loads(line)
            if message.get("type") == "config" and not worker.stopping:
                _apply_config(worker, message, writer)
    except (ValueError, OSError) as exc:  # a broken channel: let the master fork a fresh worker
        log.error("control channel failed (%s): shutting down", exc)
    signals.stop.set()


async def _serve_worker(
    config: Config, ports: Mapping[str, int], control: socket.socket, version: int
) -> int:
    loop = asyncio.get_running_loop()
    signals = _Signals(loop, reload=None)
    worker = Worker(config, loop, version=version)
    try:
        await worker.start(ports)
    except OSError as exc:
        log.error("%s", exc)
        worker.abort()
        return 1
    reader, writer = await asyncio.open_connection(sock=control, limit=CONTROL_LINE_LIMIT)
    feed = await _request_log_feed(worker, config)
    send_message(writer, {"type": "ready", "version": version})
    channel = asyncio.ensure_future(_follow_master(worker, reader, writer, signals))
    code = await _until_stopped(worker, signals)
    channel.cancel()
    if feed is not None:
        await feed.stop()
        await feed.writer.store.close()
    writer.close()
    return code


async def _request_log_feed(worker: Worker, config: Config):
    """A worker's own connection to the store for its request logs (the admin process purges)."""
    if not (config.admin.enabled and config.admin.request_logs.enabled):
        return None
    from isekai.observability.request_log import RequestLogFeed
    from isekai.store import open_store

    store = open_store(config.store.url)
    try:
        await store.open()
    except StoreError as exc:
        log.error("request logs off in this worker: cannot open the store: %s", exc)
        return None
    feed = RequestLogFeed(worker.state, store, config.admin.request_logs, purge=False)
    await feed.start()
    return feed


def run_worker(
    config: Config, ports: Mapping[str, int], control: socket.socket, version: int = 1
) -> int:
    """Serve as one of the master's workers until stopped; return the exit code.

    ``ports`` are the listener ports the master resolved; ``control`` is this worker's end
    of the master's control socket (newline-delimited JSON; EOF means the master is gone).
    """
    return uvloop.run(_serve_worker(config, ports, control, version))
