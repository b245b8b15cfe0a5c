"""The master's restart policy and exit descriptions (the processes are in integration/)."""

from __future__ import annotations

import signal

from isekai.master import CRASH_BACKOFF, CRASH_LIMIT, CRASH_WINDOW, RestartPolicy, exit_description


def test_restart_policy_replaces_at_once_until_workers_crash_loop():
    policy = RestartPolicy()
    for i in range(CRASH_LIMIT):
        assert policy.schedule(i * 0.1) == i * 0.1
    looping_at = CRASH_LIMIT * 0.1
    first = policy.schedule(looping_at)
    assert first == (CRASH_LIMIT - 1) * 0.1 + CRASH_BACKOFF
    second = policy.schedule(looping_at + 0.01)  # another death meanwhile: spaced, not together
    assert second == first + CRASH_BACKOFF


def test_restart_policy_forgets_deaths_older_than_the_window():
    policy = RestartPolicy()
    for i in range(CRASH_LIMIT + 3):
        policy.schedule(i * 0.1)
    later = 100.0 + CRASH_WINDOW
    assert policy.schedule(later) == later


def test_exit_description_names_status_or_signal():
    # raw waitpid statuses: exit code in the high byte, or the signal number
    assert exit_description(0) == "exited with status 0"
    assert exit_description(3 << 8) == "exited with status 3"
    assert exit_description(signal.SIGKILL) == "killed by SIGKILL"


def _handle(master, pid):
    import selectors
    import socket

    from isekai.master import _WorkerHandle

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    handle = _WorkerHandle(pid, ours)
    master._selector.register(ours, selectors.EVENT_READ, handle)
    return handle, theirs


def test_master_forgets_a_probe_whose_worker_died():
    """A probe sent to a worker that dies before it answers is dropped (and answered empty to
    the admin process) when the worker is reaped: ``_probes`` must not grow for ever."""
    import json
    import os

    from isekai.config.loader import load_config_text
    from isekai.master import Master

    config = load_config_text(
        'workers: 2\nadmin: {enabled: false}\nlisteners: [{name: p, bind: "127.0.0.1:0"}]\n'
        'upstreams: {app: {targets: ["127.0.0.1:9"]}}\n'
        "routes: [{name: a, match: {path: /a}, upstream: app}]\n"
    )
    master = Master(config)
    master.stopping = True  # no replacement is forked
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    worker, worker_end = _handle(master, pid)
    worker.ready = True
    master.workers[pid] = worker
    master.admin, admin_end = _handle(master, -1)
    try:
        master._start_probe({"id": 41, "query": {"what": "rate_limit"}})
        assert json.loads(worker_end.recv(1 << 16))["type"] == "probe"
        assert len(master._probes) == 1
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
        master._reap()
        assert pid not in master.workers
        assert master._probes == {}
        answer = json.loads(admin_end.recv(1 << 16))
        assert answer == {"type": "probe", "id": 41, "data": None}
    finally:
        worker_end.close()
        admin_end.close()
        master._selector.close()
