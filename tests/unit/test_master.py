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
