"""The master process: forks the workers, keeps them running, reloads and stops them.

The master never serves traffic. It resolves each listener once (``:0`` becomes a concrete port)
by binding a socket with SO_REUSEPORT that it keeps bound but never listens on: the port stays
reserved for the gateway's lifetime and the kernel never queues a connection to the master.
Each worker binds and listens on the same address itself, so every worker has its own accept
queue and the kernel spreads connections across them.

The master runs a small select loop of its own (no asyncio: a forked child then inherits no
event loop state). Signal handlers only queue the signal; the loop wakes through
``signal.set_wakeup_fd`` and handles it:

  SIGHUP            re-read the config file; send it to every worker, or log why not
  SIGTERM, SIGINT   forward SIGTERM; wait up to shutdown_timeout + 5 s, then SIGKILL
  second SIGINT     like SIGQUIT (Ctrl-C twice)
  SIGQUIT           SIGKILL the workers and exit
  SIGCHLD           reap; a worker that died while not shutting down is replaced
  SIGUSR1           forward to the workers (they reopen their access-log files)

Each worker has a control socket (a socketpair) carrying newline-delimited JSON. Master to
worker: ``{"type": "config", "text", "source", "version"}``. Worker to master:
``{"type": "ready"}``, ``{"type": "reloaded", "version"}``, ``{"type": "rejected", ...}``.

Active health checks run once per host, not once per worker: the master elects ONE ready worker
as the checker and tells it ``{"type": "health_checker", "on": true}``; when that worker dies
(and so is replaced) another ready one is elected, or the first to become ready. The checker
probes every target of the upstreams with ``health`` (`isekai.upstream.health`), applies its
verdicts itself and sends each to the master as ``{"type": "health", "upstream", "target",
"healthy"}``. The master remembers the unhealthy verdicts (healthy is every target's default)
and relays each verdict to every other ready worker as the same message; a worker that becomes
ready (a new one, or a replacement) first gets ``{"type": "health_verdicts", "verdicts":
[[upstream, target, healthy], ...]}`` with every verdict remembered.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import selectors
import signal
import socket
import time
from typing import Any

from isekai.config.changes import apply_changes
from isekai.config.reload import (
    config_from_message,
    keep_running,
    read_config,
    warn_restart_needed,
)
from isekai.config.schema import Config
from isekai.control import run_admin_process
from isekai.errors import ConfigError
from isekai.process.channel import decode_changes, encode_message
from isekai.process.shared_memory import reserve as reserve_shared
from isekai.process.sockets import bind_sockets, format_address, raise_fd_limit
from isekai.worker import run_worker

__all__ = ["Master", "run"]

log = logging.getLogger("isekai.master")

KILL_GRACE = 5.0  # seconds past shutdown_timeout before stragglers are killed
CRASH_WINDOW = 10.0  # seconds: deaths counted over this window...
CRASH_LIMIT = 5  # ...more than this many means workers are crash-looping
CRASH_BACKOFF = 1.0  # seconds between restarts while crash-looping
STATS_TIMEOUT = 1.0  # seconds a scrape waits for the workers; the late ones are left out
HANDLED_SIGNALS = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGCHLD,
    signal.SIGUSR1,
)


def exit_description(status: int) -> str:
    """``exited with status 1`` or ``killed by SIGKILL`` for a raw ``waitpid`` status."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with status {code}"


class RestartPolicy:
    """When to start a replacement for a dead worker: at once, unless workers crash-loop.

    More than ``CRASH_LIMIT`` deaths within ``CRASH_WINDOW`` seconds spaces restarts
    ``CRASH_BACKOFF`` seconds apart.
    """

    def __init__(self) -> None:
        self.deaths: collections.deque[float] = collections.deque()
        self.last_start = float("-inf")

    def crash_looping(self, now: float) -> bool:
        while self.deaths and now - self.deaths[0] > CRASH_WINDOW:
            self.deaths.popleft()
        return len(self.deaths) > CRASH_LIMIT

    def schedule(self, died_at: float) -> float:
        """Record a death at ``died_at``; return when its replacement should start."""
        self.deaths.append(died_at)
        start = died_at
        if self.crash_looping(died_at):
            start = max(died_at, self.last_start + CRASH_BACKOFF)
        self.last_start = max(self.last_start, start)
        return start


class _Gather:
    """One scrape in progress: the workers asked, and what they answered so far."""

    def __init__(self, request_id: object, pids: list[int], deadline: float) -> None:
        self.request_id = request_id
        self.waiting = set(pids)
        self.answers: dict[int, dict] = {}
        self.deadline = deadline


class _WorkerHandle:
    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self.control = control
        self.ready = False
        self.version = 0
        self.inbox = bytearray()
        self.outbox = bytearray()


class Master:
    """Supervises ``config.workers`` worker processes serving ``config``."""

    def __init__(self, config: Config) -> None:
        self.config = config  # what workers run (listeners, workers, pid_file as started)
        self.version = 1
        self.ports: dict[str, int] = {}
        self.workers: dict[int, _WorkerHandle] = {}
        self.ready = False
        self.stopping = False
        self.exit_code = 0
        self._reserved: list[socket.socket] = []
        self._selector = selectors.DefaultSelector()
        self._signals: list[int] = []
        self._wakeup: tuple[int, int] | None = None
        self._restarts: list[float] = []
        self.admin: _WorkerHandle | None = None  # the admin-API process, when admin.enabled
        self._admin_restart_at: float | None = None
        self._workers_started = False
        self._policy = RestartPolicy()
        self._kill_at: float | None = None
        self._interrupts = 0
        self._warned: dict[str, object] = {}
        self.restarts = 0  # workers replaced after they died
        self.reloads = {"ok": 0, "failed": 0}  # SIGHUP reloads decided here
        self._gathers: dict[int, _Gather] = {}
        # a probe sent to a worker -> (its pid, the admin's id, when the admin stops waiting)
        self._probes: dict[int, tuple[int, object, float]] = {}
        self._gather_seq = 0
        self.checker: int | None = None  # pid of the worker running the active health checks
        self.verdicts: dict[tuple[str, str], bool] = {}  # (upstream, target) -> False (unhealthy)
        self.shared_memory: Any = None  # the workers' shared region (rate limits), from `run`

    # -- main loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Reserve the listeners, fork the workers, supervise until stopped; the exit code."""
        raise_fd_limit(self.config)
        # before any fork: every worker, a restarted one too, shares this region
        self.shared_memory = reserve_shared(self.config.limits.rate_limit_memory)
        try:
            self._reserve()
        except OSError as exc:
            log.error("%s", exc)
            self._close_reserved()
            return 1
        self._install_signals()
        metrics = self.config.observability.metrics
        try:
            if self.config.admin.enabled:
                self._spawn_admin()  # workers start once it sends the effective config
            else:
                if metrics.enabled and metrics.bind is not None:
                    self._spawn_admin()  # serves only the metrics listener
                self._spawn_workers()
            while self.workers or self.admin or (self._restarts and not self.stopping):
                self._step()
        finally:
            self._restore_signals()
            self._close_reserved()
            self._selector.close()
        log.info("stopped" if self.exit_code == 0 else "stopped with errors")
        return self.exit_code

    def _step(self) -> None:
        now = time.monotonic()
        deadlines = list(self._restarts)
        if self._admin_restart_at is not None:
            deadlines.append(self._admin_restart_at)
        if self._kill_at is not None:
            deadlines.append(self._kill_at)
        deadlines.extend(gather.deadline for gather in self._gathers.values())
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        for key, mask in self._selector.select(timeout):
            if isinstance(key.data, _WorkerHandle):
                self._io(key.data, mask)
            else:
                key.data(mask)
        self._handle_signals()
        self._reap()
        now = time.monotonic()
        for key in [k for k, gather in self._gathers.items() if gather.deadline <= now]:
            self._finish_gather(key)
        for probe in [k for k, (_, _, deadline) in self._probes.items() if deadline <= now]:
            del self._probes[probe]  # never answered: the admin process gave up on it
        if self._kill_at is not None and now >= self._kill_at:
            self._kill_at = None
            if self.workers:
                log.warning("workers %s still running: killing them", sorted(self.workers))
                self._kill_all()
        while self._restarts and self._restarts[0] <= now and not self.stopping:
            self._restarts.pop(0)
            self._spawn()
        if self._admin_restart_at is not None and now >= self._admin_restart_at:
            self._admin_restart_at = None
            if not self.stopping:
                self._spawn_admin()

    def _reserve(self) -> None:
        for listener in self.config.listeners:
            socks = bind_sockets(listener.host, listener.port)
            self._reserved.extend(socks)
            self.ports[listener.name] = socks[0].getsockname()[1]
            for sock in socks:
                host, port = sock.getsockname()[:2]
                log.info("listener %s on %s", listener.name, format_address(host, port))

    def _close_reserved(self) -> None:
        for sock in self._reserved:
            sock.close()
        self._reserved = []

    # -- signals -----------------------------------------------------------------------------

    def _install_signals(self) -> None:
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        self._wakeup = (rfd, wfd)
        self._selector.register(rfd, selectors.EVENT_READ, self._drain_wakeup)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        if self._wakeup is not None:
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _drain_wakeup(self, mask: int) -> None:
        assert self._wakeup is not None
        try:
            while os.read(self._wakeup[0], 4096):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self) -> None:
        pending, self._signals = self._signals, []
        if signal.SIGHUP in pending:  # several SIGHUPs at once reload once
            self.reload()
        if signal.SIGUSR1 in pending:
            for pid in self.workers:
                _signal(pid, signal.SIGUSR1)
        for sig in pending:
            if sig == signal.SIGINT:
                self._interrupts += 1
            if sig == signal.SIGQUIT or (sig == signal.SIGINT and self._interrupts > 1):
                self.stop(graceful=False)
            elif sig in (signal.SIGTERM, signal.SIGINT):
                self.stop(graceful=True)

    # -- workers -----------------------------------------------------------------------------

    def _spawn_workers(self) -> None:
        self._workers_started = True
        for _ in range(self.config.workers):
            self._spawn()

    def _spawn_admin(self) -> None:
        parent, child = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            parent.close()
            self._become_child(child, admin=True)  # never returns
        child.close()
        parent.setblocking(False)
        self.admin = _WorkerHandle(pid, parent)
        self._selector.register(parent, selectors.EVENT_READ, self.admin)
        log.debug("admin process %d forked", pid)

    def _spawn(self) -> None:
        parent, child = socket.socketpair()
        try:
            pid = os.fork()
        except OSError as exc:
            parent.close()
            child.close()
            log.error("cannot fork a worker (%s): retrying in %gs", exc, CRASH_BACKOFF)
            self._restarts.append(time.monotonic() + CRASH_BACKOFF)
            return
        if pid == 0:
            parent.close()
            self._become_child(child)  # never returns
        child.close()
        parent.setblocking(False)
        handle = _WorkerHandle(pid, parent)
        self.workers[pid] = handle
        self._selector.register(parent, selectors.EVENT_READ, handle)
        log.debug("worker %d forked", pid)

    def _become_child(self, control: socket.socket, *, admin: bool = False) -> None:
        code = 1
        try:
            for sig in HANDLED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            # until a worker's loop handles it (the admin process never does)
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            signal.set_wakeup_fd(-1)
            asyncio.set_event_loop(None)
            self._selector.close()  # closes the epoll fd only; the parent's stays registered
            if self._wakeup is not None:
                for fd in self._wakeup:
                    os.close(fd)
            for handle in self.workers.values():
                handle.control.close()
            if self.admin is not None:
                self.admin.control.close()
            self._close_reserved()
            if admin:
                code = run_admin_process(self.config, control)
            else:
                code = run_worker(
                    self.config, self.ports, control, self.version, self.shared_memory
                )
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            try:
                logging.shutdown()  # flush
            finally:
                os._exit(code)  # never return into the master's code

    def _io(self, handle: _WorkerHandle, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(handle)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = handle.control.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the worker is exiting; SIGCHLD follows
            self._forget_control(handle)
            return
        handle.inbox += data
        while b"\n" in handle.inbox:
            line, _, rest = bytes(handle.inbox).partition(b"\n")
            handle.inbox = bytearray(rest)
            try:
                self._on_message(handle, json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("bad message from worker %d: %s", handle.pid, exc)

    def _on_message(self, handle: _WorkerHandle, message: dict) -> None:
        kind = message["type"]
        if handle is self.admin:
            self._on_admin_message(message)
            return
        if kind == "stats":
            self._on_stats(handle, message)
        elif kind == "probe":
            self._on_probe(message)
        elif kind == "health":
            self._on_health(handle, message)
        elif kind == "ready":
            handle.ready = True
            handle.version = message["version"]
            if self.verdicts:
                verdicts = [[u, t, h] for (u, t), h in self.verdicts.items()]
                self._send(handle, {"type": "health_verdicts", "verdicts": verdicts})
            self._elect_checker()
            if not self.ready and all(h.ready for h in self.workers.values()):
                self.ready = True
                log.info("%d workers up: %s", len(self.workers), sorted(self.workers))
                log.info(
                    "isekai serving %d routes, %d upstreams (config %s)",
                    len(self.config.routes),
                    len(self.config.upstreams),
                    self.config.source,
                )
            elif self.ready:
                log.info("worker %d up", handle.pid)
        elif kind == "reloaded":
            handle.version = message["version"]
            if all(h.version == self.version for h in self.workers.values()):
                log.info("all %d workers on config version %d", len(self.workers), self.version)
        elif kind == "rejected":
            log.error(
                "worker %d kept its config: version %s rejected: %s",
                handle.pid,
                message.get("version"),
                message.get("error"),
            )

    # -- active health checks ----------------------------------------------------------------

    def _elect_checker(self) -> None:
        """Make one ready worker run the active health checks, unless one already does."""
        if self.stopping or self.checker in self.workers:
            return
        self.checker = None
        for pid, handle in self.workers.items():
            if handle.ready and handle.control.fileno() >= 0:
                self.checker = pid
                self._send(handle, {"type": "health_checker", "on": True})
                log.info("worker %d runs the active health checks", pid)
                return

    def _on_health(self, handle: _WorkerHandle, message: dict) -> None:
        if handle.pid != self.checker:
            return  # only the elected worker's verdicts count
        upstream, target, healthy = message["upstream"], message["target"], message["healthy"]
        if not isinstance(upstream, str) or not isinstance(target, str):
            raise TypeError("a health verdict names an upstream and a target")
        healthy = bool(healthy)
        if healthy:
            self.verdicts.pop((upstream, target), None)
        else:
            self.verdicts[(upstream, target)] = False
        relay = {"type": "health", "upstream": upstream, "target": target, "healthy": healthy}
        for pid, other in self.workers.items():
            if pid != handle.pid and other.ready:
                self._send(other, relay)

    # -- statistics for a scrape -------------------------------------------------------------

    def _start_gather(self, request_id: object) -> None:
        self._gather_seq += 1
        key = self._gather_seq
        pids = [pid for pid, handle in self.workers.items() if handle.ready]
        self._gathers[key] = _Gather(request_id, pids, time.monotonic() + STATS_TIMEOUT)
        for pid in pids:
            self._send(self.workers[pid], {"type": "stats", "id": key})
        if not pids:
            self._finish_gather(key)

    def _on_stats(self, handle: _WorkerHandle, message: dict) -> None:
        key = message.get("id")
        gather = self._gathers.get(key) if isinstance(key, int) else None
        if gather is None or handle.pid not in gather.waiting:
            return  # late: that scrape went on without this worker
        gather.waiting.discard(handle.pid)
        gather.answers[handle.pid] = message.get("data")  # encoded: relayed as it is
        if not gather.waiting:
            self._finish_gather(key)

    def _start_probe(self, message: dict) -> None:
        """The admin process asks about live state: one ready worker answers (the state asked
        about is the host's: shared memory or Redis); no ready worker, no answer."""
        ready = [handle for handle in self.workers.values() if handle.ready]
        if not ready:
            self._on_probe({"id": None, "data": None}, message.get("id"))
            return
        self._gather_seq += 1
        key = self._gather_seq
        self._probes[key] = (ready[0].pid, message.get("id"), time.monotonic() + STATS_TIMEOUT)
        self._send(ready[0], {"type": "probe", "id": key, "query": message.get("query")})

    def _on_probe(self, message: dict, request_id: object = None) -> None:
        if message.get("id") is not None:
            if message.get("id") not in self._probes:
                return
            request_id = self._probes.pop(message["id"])[1]
        if self.admin is not None:
            self._send(self.admin, {"type": "probe", "id": request_id, "data": message.get("data")})

    def _finish_gather(self, key: int) -> None:
        gather = self._gathers.pop(key)
        if gather.waiting:
            log.warning(
                "workers %s did not answer a statistics request within %gs",
                sorted(gather.waiting),
                STATS_TIMEOUT,
            )
        if self.admin is None:
            return
        self._send(
            self.admin,
            {
                "type": "stats",
                "id": gather.request_id,
                "workers": [data for data in gather.answers.values() if isinstance(data, str)],
                "restarts": self.restarts,
                "reloads": self.reloads,
                "expected": self.config.workers,
            },
        )

    def _on_admin_message(self, message: dict) -> None:
        kind = message["type"]
        if kind == "failed":
            log.error("the admin process could not start: stopping")
            self.exit_code = 1
            self.stop(graceful=False)
            return
        if kind == "stats":
            self._start_gather(message.get("id"))
            return
        if kind == "probe":
            self._start_probe(message)
            return
        if kind not in ("ready", "apply") or ("changes" not in message and "config" not in message):
            return  # (a metrics-only process says "ready" with no config)
        if "changes" in message:  # validated by the admin process: applied as they are
            self.config = apply_changes(self.config, decode_changes(message["changes"]))
            payload = {"type": "config", "changes": message["changes"]}
        else:
            try:
                new = config_from_message(message["config"])
            except ConfigError as exc:
                log.error("config from the admin process rejected: %s", exc)
                return
            warn_restart_needed(new, self.config, self._warned)
            self.config = keep_running(new, self.config)
            payload = dict(message["config"], type="config")
        if not self._workers_started:
            self._spawn_workers()  # they start on the running config (file + store)
            return
        self.version += 1
        log.info("config from the admin API: sending version %d to the workers", self.version)
        payload["version"] = self.version
        for worker in self.workers.values():
            self._send(worker, payload)

    def _send(self, handle: _WorkerHandle, message: dict) -> None:
        if handle.control.fileno() < 0:
            return
        handle.outbox += encode_message(message)
        self._flush(handle)

    def _flush(self, handle: _WorkerHandle) -> None:
        try:
            while handle.outbox:
                sent = handle.control.send(handle.outbox)
                del handle.outbox[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            handle.outbox.clear()  # the worker is gone; SIGCHLD follows
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if handle.outbox else 0)
        if handle.control.fileno() >= 0:
            self._selector.modify(handle.control, events, handle)

    def _forget_control(self, handle: _WorkerHandle) -> None:
        if handle.control.fileno() >= 0:
            self._selector.unregister(handle.control)
            handle.control.close()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.admin is not None and pid == self.admin.pid:
                self._admin_died(status)
                continue
            handle = self.workers.pop(pid, None)
            if handle is None:
                continue
            self._forget_control(handle)
            for key in [k for k, (asked, _, _) in self._probes.items() if asked == pid]:
                self._on_probe({"id": key, "data": None})  # it will never answer
            if pid == self.checker:
                self.checker = None
                if not self.stopping:
                    log.info("worker %d ran the active health checks: electing another", pid)
                    self._elect_checker()
            how = exit_description(status)
            if self.stopping:
                log.info("worker %d %s", pid, how)
            elif not self.ready:
                log.error("worker %d %s while starting: stopping", pid, how)
                self.exit_code = 1
                self.stop(graceful=False)
            else:
                now = time.monotonic()
                start = self._policy.schedule(now)
                if start > now:
                    log.warning(
                        "worker %d %s; workers are crashing repeatedly (more than %d deaths in "
                        "%gs): replacing it in %.1fs",
                        pid,
                        how,
                        CRASH_LIMIT,
                        CRASH_WINDOW,
                        start - now,
                    )
                else:
                    log.warning("worker %d %s; starting a replacement", pid, how)
                self.restarts += 1
                self._restarts.append(start)
                self._restarts.sort()

    def _admin_died(self, status: int) -> None:
        assert self.admin is not None
        self._forget_control(self.admin)
        pid, self.admin = self.admin.pid, None
        how = exit_description(status)
        if self.stopping:
            log.info("admin process %d %s", pid, how)
        elif not self._workers_started:
            log.error("admin process %d %s while starting: stopping", pid, how)
            self.exit_code = 1
            self.stop(graceful=False)
        else:
            log.warning("admin process %d %s; starting a replacement", pid, how)
            self._admin_restart_at = time.monotonic() + CRASH_BACKOFF

    # -- reload and stop ---------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file and send it to every worker; False if it was rejected."""
        if self.stopping:
            log.info("SIGHUP ignored: shutting down")
            return False
        source = self.config.source
        try:
            new, text = read_config(source)
        except ConfigError as exc:
            log.error("reload rejected: %s", exc)
            self.reloads["failed"] += 1
            return False
        if self.admin is not None and self.config.admin.enabled:
            # The admin process merges the file with the store and sends the result back.
            self._send(self.admin, {"type": "reload"})
            return True
        warn_restart_needed(new, self.config, self._warned)
        self.config = keep_running(new, self.config)
        self.version += 1
        self.reloads["ok"] += 1
        log.info("config %s read: sending version %d to the workers", source, self.version)
        message = {"type": "config", "text": text, "source": source, "version": self.version}
        for handle in self.workers.values():
            self._send(handle, message)
        return True

    def stop(self, *, graceful: bool) -> None:
        """Drain the workers (SIGTERM, then SIGKILL after the grace period) or kill them now."""
        self._restarts.clear()
        if not graceful:
            if self.workers:
                log.info("stopping immediately: killing workers %s", sorted(self.workers))
            self.stopping = True
            self._kill_all()
            return
        if self.stopping:
            return
        self.stopping = True
        timeout = self.config.shutdown_timeout
        log.info("shutting down: draining workers (up to %gs)", timeout)
        self._kill_at = time.monotonic() + timeout + KILL_GRACE
        for pid in self.workers:
            _signal(pid, signal.SIGTERM)
        if self.admin is not None:
            _signal(self.admin.pid, signal.SIGTERM)

    def _kill_all(self) -> None:
        if self.admin is not None:
            _signal(self.admin.pid, signal.SIGKILL)
        for pid in self.workers:
            _signal(pid, signal.SIGKILL)
        for pid, handle in list(self.workers.items()):
            try:
                _, status = os.waitpid(pid, 0)
                log.info("worker %d %s", pid, exit_description(status))
            except ChildProcessError:
                pass
            self._forget_control(handle)
            del self.workers[pid]


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def run(config: Config) -> int:
    """Run a master with ``config.workers`` workers until stopped; return the exit code."""
    return Master(config).run()
