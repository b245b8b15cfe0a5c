"""Reading the config file again, and what a reload may change.

`read_config` reads the file once and validates it; `keep_running` keeps the keys a reload
cannot change (`RESTART_KEYS`) at their running values; `config_from_message` rebuilds the
effective config (file text plus the documents stored through the admin API) that the control
plane sends to workers.
"""

from __future__ import annotations

import dataclasses
import logging

from isekai.config.changes import add_consumers
from isekai.config.loader import load_config, load_config_text, validate_dynamic
from isekai.config.schema import Config, Listener
from isekai.errors import ConfigError

__all__ = [
    "RESTART_KEYS",
    "config_from_message",
    "keep_running",
    "read_config",
    "warn_restart_needed",
]

log = logging.getLogger("isekai.reload")

# config keys a reload cannot change
RESTART_KEYS = ("listeners", "workers", "pid_file", "admin", "store", "observability")


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
    """``new`` with the keys a reload cannot change kept at their running values.

    A listener's socket is kept, but its ``policies`` follow the new file (they name the new
    file's policies): the running listener of the same name takes the new one's list, and a
    listener the new file no longer has keeps none.
    """
    kept = {key: getattr(running, key) for key in RESTART_KEYS}
    fresh = {listener.name: listener.policies for listener in new.listeners}
    kept["listeners"] = tuple(
        dataclasses.replace(listener, policies=fresh.get(listener.name, ()))
        for listener in running.listeners
    )
    return dataclasses.replace(new, **kept)


def _sockets(listeners: tuple[Listener, ...]) -> tuple[Listener, ...]:
    # what of the listeners needs a restart to change: all but their policies
    return tuple(dataclasses.replace(listener, policies=()) for listener in listeners)


def warn_restart_needed(new: Config, running: Config, warned: dict[str, object]) -> None:
    """Warn about keys of ``new`` that differ from ``running`` and need a restart.

    ``warned`` remembers the values already warned about, so a file that keeps a changed value
    (or a value overridden by an option) is reported once, not at every reload.
    """
    changed = []
    for key in RESTART_KEYS:
        value, current = getattr(new, key), getattr(running, key)
        if key == "listeners":  # their policies apply at reload
            value, current = _sockets(value), _sockets(current)
        if value != current and warned.get(key) != value:
            changed.append(key)
        warned[key] = value
    if changed:
        log.warning(
            "%s changed in %s: restart to apply (the rest of the file is applied)",
            ", ".join(changed),
            new.source,
        )


def config_from_message(message: dict) -> Config:
    """The effective config carried by a control-plane change message (file text + stored
    documents: ``routes``, ``upstreams``, ``policies``, ``consumers``), or by a plain reload
    message (file text only). The control plane sends only stored consumers that validate
    against the file; one that does not (a file changed since) is left out, logged."""
    if "routes" not in message and "policies" not in message:
        return load_config_text(message["text"], message["source"])
    config = validate_dynamic(
        message["text"],
        message["source"],
        routes=message.get("routes") or (),
        upstreams=message.get("upstreams") or None,
        policies=message.get("policies") or None,
    )
    docs = {doc.get("name"): doc for doc in message.get("consumers") or ()}
    config, skipped = add_consumers(config, docs)
    for name, reason in skipped:
        log.error("stored consumer %r left out: %s", name, reason)
    return config
