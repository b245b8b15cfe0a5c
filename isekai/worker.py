"""One worker: a uvloop loop, the listeners, the current snapshot, timers and shutdown.

`Worker` serves every listener of one config on the running loop and swaps snapshots. It runs
either inside the single-process gateway (`isekai.server`) or in a process forked by the
master (`run_worker`), where it takes new configs from the master over a control channel
instead of SIGHUP.

A worker keeps its own listening socket and hands asyncio a dup of it: closing the asyncio
server then stops accepting (when ``limits.max_connections`` is reached) while the socket keeps
listening, so new connections wait in the kernel backlog until the server is recreated from
another dup.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import uvloop

from isekai._core.counters import Counters
from isekai._core.protocol import CoreListener, DownstreamProtocol, ServerState
from isekai.chains import PolicySet
from isekai.config.changes import Change, apply_changes
from isekai.config.reload import config_from_message, keep_running
from isekai.config.schema import Config
from isekai.errors import ConfigError
from isekai.gateway import (
    Snapshot,
    build_policy,
    build_snapshot,
    release,
    stripped_headers,
    update_snapshot,
)
from isekai.observability import custom_metrics
from isekai.observability.consumer_metrics import ConsumerTally
from isekai.observability.request_log_feed import LogFeed
from isekai.observability.tracing import open_tracer
from isekai.policies.concurrency import throttle_stats
from isekai.policies.environment import PolicyEnvironment
from isekai.policies.metrics import REGISTRY
from isekai.policies.rate_limit import key_state
from isekai.process.channel import decode_changes, encode_stats, open_channel, send_message
from isekai.process.load_shedding import LoopLagMonitor
from isekai.process.signals import Signals
from isekai.process.sockets import BACKLOG, bind_sockets
from isekai.proxy import SlowPath
from isekai.store import StoreError, open_store
from isekai.upstream.clusters import ClusterRegistry
from isekai.upstream.health import HealthChecker

__all__ = ["Worker", "run_worker", "until_stopped"]

log = logging.getLogger("isekai.worker")

UPSTREAM_SWEEP_INTERVAL = 0.1  # seconds: granularity of connect/read timeouts
DOWNSTREAM_SWEEP_INTERVAL = 1.0  # seconds: granularity of keep-alive idle timeouts
DRAIN_POLL_INTERVAL = 0.05  # seconds: how often a drain looks for finished requests
CAPACITY_LOG_INTERVAL = 10.0  # seconds: at most one "at capacity" warning per interval


class Worker:
    """Serves every listener of one config on the running loop."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        *,
        version: int = 1,
        shared_memory: Any = None,
    ) -> None:
        self.loop = loop
        self.counters = Counters()
        self.registry = ClusterRegistry(loop, self.counters)
        # what policy instances share in this worker (consumers, HTTP and Redis clients, the
        # rate-limit table over the host's `shared_memory` when the master made one, else its
        # own of `limits.rate_limit_memory` bytes)
        self.policy_env = PolicyEnvironment(
            loop,
            workers=config.workers,
            shared_memory=shared_memory,
            rate_limit_memory=config.limits.rate_limit_memory,
        )
        # requests per resolved consumer, on routes with a credential policy
        self.consumer_tally = ConsumerTally(self.policy_env.consumers)
        self.policies = PolicySet(
            self.counters,
            functools.partial(build_policy, env=self.policy_env),
            self.consumer_tally,
        )
        self.snapshot: Snapshot = build_snapshot(
            config, self.registry, self.counters, version, self.policies
        )
        self.state = ServerState(self.snapshot.router, self.counters, loop)
        self.state.on_capacity = self._on_capacity
        self.slow_path = self.state.run_async = SlowPath(loop)
        # load shedding on event-loop lag (`limits.max_loop_lag`), measured once serving
        self.lag_monitor = LoopLagMonitor(loop, self.state)
        # one per listener for the life of the worker; each snapshot sets their chains
        self.listeners = {
            listener.name: CoreListener(listener.name) for listener in config.listeners
        }
        self._set_listener_chains(self.snapshot)
        self.access_log: Any = None  # the log feed's, once it runs (`hide_credential_params`)
        self._apply_limits(config)
        self.servers: list[asyncio.base_events.Server] = []
        self.addresses: list[tuple[str, str, int]] = []
        self.stopping = False
        self.capacity_pauses = 0  # times accepting stopped because max_connections was reached
        self._listening: list[tuple[str, socket.socket]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._full = False
        self._reconciling: asyncio.Task | None = None
        self._capacity_logged = -CAPACITY_LOG_INTERVAL
        # name -> callable returning JSON-compatible numbers: parts of this worker's statistics
        # that live outside `_core` (log writers, exporters, custom metrics); shipped with the
        # counters to whoever aggregates the workers (isekai.observability)
        # (the policy environment's dict: policy families add theirs to it)
        self.stats_providers: dict[str, Callable[[], Mapping[str, Any] | list[Any]]] = (
            self.policy_env.stats_providers
        )
        # the active health checks, in the one worker that runs them (`run_health_checks`)
        self.health: HealthChecker | None = None
        # spans of sampled requests; made here, in the serving process (after the fork)
        self.tracer = open_tracer(
            config.observability.tracing, self.state, lambda: self.snapshot.config
        )
        if self.tracer is not None:
            self.stats_providers["tracing"] = self.tracer.stats
        self.stats_providers["custom_metrics"] = functools.partial(custom_metrics.export, REGISTRY)
        self.stats_providers["consumers"] = self.consumer_tally.stats
        self.stats_providers["throttle"] = self._throttle_stats

    def _apply_limits(self, config: Config) -> None:
        limits = config.limits
        state = self.state
        # who requests belong to, for the credential policies; and the identity headers no
        # client may send (`stripped_headers`)
        self.policy_env.security = config.security
        self.policy_env.consumers.update(config.consumers)
        state.stripped = stripped_headers(config)
        if self.access_log is not None:
            self.access_log.hide_credential_params(config)
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
        self.counters.enabled = config.observability.metrics.enabled
        self.lag_monitor.configure(limits.max_loop_lag, limits.shed_retry_after)

    def swap(self, config: Config, version: int | None = None) -> Snapshot:
        """Build a snapshot of ``config`` aside, then make it current in one assignment.

        ``version`` defaults to the current one plus one. Listeners are not rebound: a changed
        ``listeners`` list takes effect on restart. Raises ConfigError if the routes conflict.
        """
        if version is None:
            version = self.snapshot.version + 1
        snapshot = build_snapshot(config, self.registry, self.counters, version, self.policies)
        old, self.snapshot = self.snapshot, snapshot
        self._apply_limits(config)
        self.state.router = snapshot.router
        self._set_listener_chains(snapshot)
        release(old)
        if self.health is not None:
            self.health.update(config.upstreams)
        return snapshot

    def _set_listener_chains(self, snapshot: Snapshot) -> None:
        for name, listener in self.listeners.items():
            listener.chain = snapshot.listeners.get(name, ())

    def apply_changes(self, changes: list[Change], version: int | None = None) -> Snapshot:
        """Apply validated changes (`isekai.config.changes`) to the current snapshot in place:
        in proportion to the change, so the loop is not held up by a large config."""
        if version is None:
            version = self.snapshot.version + 1
        config = apply_changes(self.snapshot.config, changes)
        try:
            snapshot = update_snapshot(
                self.snapshot, config, changes, self.registry, self.counters, version
            )
        except Exception:  # never expected: the changes were validated
            log.exception("applying %d changes in place failed: rebuilding", len(changes))
            return self.swap(config, version)
        self.snapshot = snapshot
        self._set_listener_chains(snapshot)
        self._apply_limits(config)
        if self.health is not None:
            self.health.update(config.upstreams)
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
                self._listening.append((listener.name, sock))
                sock.listen(BACKLOG)
                host, bound = sock.getsockname()[:2]
                self.addresses.append((listener.name, host, bound))
        await self._reconcile()
        self.lag_monitor.start()
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
                servers = [await self._server(name, sock) for name, sock in self._listening]
                if self._full or self.stopping:
                    for server in servers:
                        server.close()
                else:
                    self.servers = servers
        finally:
            self._reconciling = None

    async def _server(self, name: str, sock: socket.socket) -> asyncio.base_events.Server:
        dup = socket.socket(fileno=os.dup(sock.fileno()))
        factory = functools.partial(DownstreamProtocol, self.state, self.listeners[name])
        try:
            return await self.loop.create_server(factory, sock=dup, backlog=BACKLOG)
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
        for _, sock in self._listening:
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

    # -- active health checks ----------------------------------------------------------------

    def run_health_checks(self, report: Callable[[str, str, bool], None] | None = None) -> None:
        """Run the active health checks of the current (and every later) snapshot's upstreams
        in this worker: each verdict applies here, then goes to ``report`` (the master, which
        relays it to the other workers). Once per gateway: the master elects one worker."""
        if self.health is not None or self.stopping:
            return

        def on_verdict(upstream: str, target: str, healthy: bool) -> None:
            self.registry.set_health(upstream, target, healthy)
            if report is not None:
                report(upstream, target, healthy)

        # unhealthy verdicts of a checker that died: re-decided by the new one
        inherited = [
            (row["upstream"], row["target"])
            for row in self.registry.target_stats()
            if not row["healthy"]
        ]
        self.health = HealthChecker(self.loop, on_verdict, inherited)
        self.health.update(self.snapshot.config.upstreams)
        self.stats_providers["health_checks"] = self.health.rows

    def stop_health_checks(self) -> None:
        """Stop probing (the verdicts stay as they are)."""
        if self.health is not None:
            self.health.close()
            self.health = None
            self.stats_providers.pop("health_checks", None)

    # -- statistics --------------------------------------------------------------------------

    async def probe(self, query: Mapping[str, Any]) -> dict[str, Any] | None:
        """Live state the admin API asks about: ``{"what": "rate_limit", "policy", "tier",
        "key": [values]}`` -> that key's state (`isekai.policies.rate_limit.key_state`)."""
        if query.get("what") == "rate_limit":
            return await key_state(self.policy_env.rate_limits, query)
        return None

    def stats(self) -> dict[str, Any]:
        """This worker's numbers, JSON-compatible: what `isekai.observability.metrics` sums
        over the workers for ``/metrics`` and the status endpoints."""
        extra = {}
        for name, provider in self.stats_providers.items():
            try:
                value = provider()
                extra[name] = list(value) if isinstance(value, list) else dict(value)
            except Exception:  # statistics are best effort; the scrape goes on without them
                log.exception("statistics provider %r failed", name)
        return {
            "pid": os.getpid(),
            "config_version": self.snapshot.version,
            "counters": self.counters.export(),
            "pools": self.registry.pool_stats(),
            "targets": self.registry.target_stats(),
            "clusters": self.registry.cluster_stats(),
            "tunnels": self.state.tunnel_count,
            "in_flight": self.in_flight(),
            "capacity_pauses": self.capacity_pauses,
            "extra": extra,
        }

    def _throttle_stats(self) -> dict[str, Any]:
        # the throttling policies' rows (`concurrency_limit`, `adaptive_concurrency`) and load
        # shedding (`limits.max_loop_lag`)
        return {"policies": throttle_stats(self.policies.instances()), **self.lag_monitor.stats()}

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
        self.lag_monitor.stop()
        self.stop_health_checks()
        for proto in list(self.state.connections):
            proto.shutdown()
        self.registry.close()
        self.policies.close()
        if self.loop.is_running():  # shared HTTP and Redis clients of the policies
            self.loop.create_task(self.policy_env.aclose())
        if self.tracer is not None:
            self.tracer.shutdown()  # exports what is queued, within the export timeout


async def until_stopped(worker: Worker, signals: Signals) -> int:
    """Wait for a stop signal, then drain (or stop at once on SIGQUIT); return the exit code."""
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


# -- a worker process forked by the master -----------------------------------------------------


def _apply_config(worker: Worker, message: dict, writer: asyncio.StreamWriter) -> None:
    version = message.get("version")
    try:
        if "changes" in message:  # validated once, by the admin process
            snapshot = worker.apply_changes(decode_changes(message["changes"]), version)
        else:
            new = config_from_message(message)
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


def _report_health(writer: asyncio.StreamWriter, upstream: str, target: str, healthy: bool) -> None:
    if not writer.is_closing():
        send_message(
            writer, {"type": "health", "upstream": upstream, "target": target, "healthy": healthy}
        )


async def _answer_probe(worker: Worker, message: dict, writer: asyncio.StreamWriter) -> None:
    try:
        data = await worker.probe(message.get("query") or {})
    except Exception:
        log.exception("probe %r failed", message.get("query"))
        data = None
    if not writer.is_closing():
        send_message(writer, {"type": "probe", "id": message.get("id"), "data": data})


async def _follow_master(
    worker: Worker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, signals: Signals
) -> None:
    try:
        while not signals.stop.is_set():
            line = await reader.readline()
            if not line:
                log.warning("the master is gone: shutting down")
                break
            message = json.loads(line)
            kind = message.get("type")
            if kind == "config" and not worker.stopping:
                _apply_config(worker, message, writer)
            elif kind == "stats":  # the master gathers every worker's numbers for a scrape
                data = encode_stats(worker.stats())
                send_message(writer, {"type": "stats", "id": message.get("id"), "data": data})
            elif kind == "probe":  # the admin API asks about live state (rate limit keys)
                asyncio.ensure_future(_answer_probe(worker, message, writer))
            elif kind == "health":  # a verdict of the elected worker's checks, relayed
                worker.registry.set_health(
                    message["upstream"], message["target"], bool(message["healthy"])
                )
            elif kind == "health_verdicts":  # every verdict so far (this worker is new)
                worker.registry.set_verdicts(
                    (upstream, target, bool(healthy))
                    for upstream, target, healthy in message["verdicts"]
                )
            elif kind == "health_checker":  # elected (or no longer) to run the active checks
                if message.get("on"):
                    log.info("running the active health checks for every worker")
                    worker.run_health_checks(functools.partial(_report_health, writer))
                else:
                    worker.stop_health_checks()
    except (ValueError, OSError) as exc:  # a broken channel: let the master fork a fresh worker
        log.error("control channel failed (%s): shutting down", exc)
    signals.stop.set()


async def _serve_worker(
    config: Config,
    ports: Mapping[str, int],
    control: socket.socket,
    version: int,
    shared_memory: Any,
) -> int:
    loop = asyncio.get_running_loop()
    signals = Signals(loop, reload=None)
    worker = Worker(config, loop, version=version, shared_memory=shared_memory)
    try:
        await worker.start(ports)
    except OSError as exc:
        log.error("%s", exc)
        worker.abort()
        return 1
    reader, writer = await open_channel(control)
    feed = await _log_feed(worker, config, signals)
    send_message(writer, {"type": "ready", "version": version})
    channel = asyncio.ensure_future(_follow_master(worker, reader, writer, signals))
    code = await until_stopped(worker, signals)
    channel.cancel()
    if feed is not None:
        await feed.stop()
    writer.close()
    return code


async def _log_feed(worker: Worker, config: Config, signals: Signals) -> LogFeed | None:
    """The access log, and the request log on a worker's own connection to the store (each
    worker purges past the retention: the delete is idempotent and runs once a minute)."""
    store = None
    if config.admin.enabled and config.admin.request_logs.enabled:
        store = open_store(config.store.url)
        try:
            await store.open()
        except StoreError as exc:
            log.error("request logs off in this worker: cannot open the store: %s", exc)
            store = None
    feed = LogFeed(worker.state, config, store, purge=True, close_store=True)
    if not feed.enabled:
        return None
    worker.access_log = feed.access_log
    await feed.start()
    signals.reopen.append(feed.reopen)
    worker.stats_providers["logs"] = feed.stats
    return feed


def run_worker(
    config: Config,
    ports: Mapping[str, int],
    control: socket.socket,
    version: int = 1,
    shared_memory: Any = None,
) -> int:
    """Serve as one of the master's workers until stopped; return the exit code.

    ``ports`` are the listener ports the master resolved; ``control`` is this worker's end
    of the master's control socket (newline-delimited JSON; EOF means the master is gone);
    ``shared_memory`` the region the master shares with every worker (rate limits).
    """
    return uvloop.run(_serve_worker(config, ports, control, version, shared_memory))
