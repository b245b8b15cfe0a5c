"""The ``isekai`` command: ``run`` the gateway, ``validate`` a config file, ``reload`` it,
manage admin API ``users``, and ``sign`` a request for an ``hmac`` policy.

Every option has the name of the config key it sets (``--workers`` = ``workers``) and an
``ISEKAI_*`` environment variable used when the option is not given; the order of precedence
is option, then environment, then the config file.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import logging
import os
import signal
import sys
from collections.abc import Sequence

from isekai import __version__
from isekai.admin.roles import ROLES
from isekai.config.loader import load_config
from isekai.config.schema import Config
from isekai.errors import ConfigError

__all__ = ["main"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

log = logging.getLogger("isekai.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``isekai`` command line with ``argv`` (default ``sys.argv[1:]``).

    Returns the process exit code: 0 success, 1 a config error, 2 a usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sign"]:  # its own parser; imported only when used (it loads the policies)
        from isekai.policies.hmac_signing import main as sign

        try:
            return sign(argv[1:], prog="isekai sign")
        except SystemExit as exc:  # --help or a usage error, already printed
            return exc.code if isinstance(exc.code, int) else 2
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error, already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except _UsageError as exc:
        print(f"isekai {args.command}: {exc}", file=sys.stderr)
        return 2


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isekai", description="Isekai, an API gateway configured by one YAML file."
    )
    parser.add_argument("--version", action="version", version=f"isekai {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="start the gateway",
        description="Start the gateway. Options override the config file.",
    )
    run.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="the YAML config file (env ISEKAI_CONFIG; default: the bundled example)",
    )
    run.add_argument(
        "--workers",
        metavar="N",
        help="worker processes, a positive integer or 'auto' (env ISEKAI_WORKERS)",
    )
    run.add_argument(
        "--log-level",
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (env ISEKAI_LOG_LEVEL; default info)",
    )
    run.add_argument(
        "--pid-file",
        metavar="PATH",
        help="write the process id here while running (env ISEKAI_PID_FILE)",
    )
    run.set_defaults(handler=_run)

    reload = commands.add_parser(
        "reload",
        help="make a running gateway re-read its config file",
        description="Send SIGHUP to the gateway whose pid is in the pid file. With a config "
        "file, check it first (and take its pid_file); exit 1 if it is wrong or the gateway "
        "is not running.",
    )
    reload.add_argument(
        "-c", "--config", metavar="FILE", help="the config file to check (env ISEKAI_CONFIG)"
    )
    reload.add_argument(
        "--pid-file",
        metavar="PATH",
        help="the running gateway's pid file (env ISEKAI_PID_FILE; default: pid_file of FILE)",
    )
    reload.set_defaults(handler=_reload)

    validate = commands.add_parser(
        "validate",
        help="check a config file without starting anything",
        description="Check a config file with the same code `run` uses; exit 1 if it is wrong.",
    )
    validate.add_argument("file", metavar="FILE", nargs="?", help="the file (env ISEKAI_CONFIG)")
    validate.set_defaults(handler=_validate)

    schema = commands.add_parser(
        "schema",
        help="print the JSON Schema of config files",
        description="Print the JSON Schema (draft 2020-12) of a config file, made from the "
        "same description the loader reads by: `isekai schema > docs/isekai.schema.json`. "
        "With --reference, print the Markdown reference tables of docs/configuration.md "
        "instead.",
    )
    schema.add_argument(
        "--reference", action="store_true", help="print the Markdown key tables instead"
    )
    schema.set_defaults(handler=_schema)

    commands.add_parser(
        "sign",
        help="print the header fields that sign a request for an hmac policy (RFC 9421)",
        add_help=False,
    )

    users = commands.add_parser(
        "users",
        help="manage admin API users",
        description="Manage the users of the admin API, in the store named by the config.",
    )
    users.set_defaults(handler=lambda _args: _usage(users))
    actions = users.add_subparsers(dest="users_command", metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="create a user, or change its role and password",
        description="Create the user NAME in the store of the config file (store.url), or "
        "update its role and password if it exists. The password comes from --password, "
        "--password-stdin or the ISEKAI_USER_PASSWORD environment variable.",
    )
    add.add_argument("name", metavar="NAME", help="the username")
    add.add_argument("--role", required=True, choices=ROLES, help="what the user may do")
    add.add_argument("--password", metavar="P", help="the password (visible in `ps`)")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.add_argument(
        "-c", "--config", metavar="FILE", help="the config file (env ISEKAI_CONFIG) for store.url"
    )
    add.add_argument(
        "--store-url",
        metavar="URL",
        help="the store, overriding store.url (env ISEKAI_STORE_URL)",
    )
    add.set_defaults(handler=_users_add)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _setting(value: str | None, env: str) -> str | None:
    # the option's value if given, else the environment variable's if set and not empty
    return value if value is not None else (os.environ.get(env) or None)


def _workers(text: str) -> int:
    if text.strip() == "auto":
        return os.cpu_count() or 1
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise _UsageError(f"workers must be a positive integer or 'auto', got {text!r}")
    return workers


def _validate(args: argparse.Namespace) -> int:
    file = _setting(args.file, "ISEKAI_CONFIG")
    if file is None:
        raise _UsageError("give the FILE to check (or set ISEKAI_CONFIG)")
    try:
        config = load_config(file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"{file}: OK ({len(config.routes)} routes, {len(config.upstreams)} upstreams, "
        f"{len(config.listeners)} listeners)"
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    from isekai.config import jsonschema, reference

    if args.reference:
        sys.stdout.write(reference.render())
    else:
        sys.stdout.write(jsonschema.dumps(jsonschema.document_schema()))
    return 0


def _load(file: str | None) -> Config:
    if file is not None:
        return load_config(file)
    default = importlib.resources.files("isekai").joinpath("default.yaml")
    with importlib.resources.as_file(default) as path:
        log.info("no config file given (-c FILE or ISEKAI_CONFIG): using %s", path)
        return load_config(path)


def _run(args: argparse.Namespace) -> int:
    level = (_setting(args.log_level, "ISEKAI_LOG_LEVEL") or "info").lower()
    if level not in LOG_LEVELS:
        raise _UsageError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    workers = _setting(args.workers, "ISEKAI_WORKERS")
    worker_count = _workers(workers) if workers is not None else None
    pid_file = _setting(args.pid_file, "ISEKAI_PID_FILE")
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    try:
        config = _load(_setting(args.config, "ISEKAI_CONFIG"))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if worker_count is not None:
        config = dataclasses.replace(config, workers=worker_count)
    if pid_file is not None:
        config = dataclasses.replace(config, pid_file=pid_file)
    if config.pid_file is not None:
        try:
            _write_pid_file(config.pid_file)
        except _PidFileError as exc:
            print(f"isekai run: {exc}", file=sys.stderr)
            return 1
    from isekai.server import serve  # one process, or the master of several

    try:
        return serve(config)
    finally:
        if config.pid_file is not None:
            _remove_pid_file(config.pid_file)


class _PidFileError(Exception):
    pass


def _read_pid(path: str) -> int:
    # the pid in the file, if that process is running
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise _PidFileError(f"no pid file {path} (is the gateway running?)") from None
    except OSError as exc:
        raise _PidFileError(f"cannot read pid file {path}: {exc.strerror}") from None
    if not text.isdigit() or int(text) <= 0:
        raise _PidFileError(f"pid file {path} does not hold a process id: {text[:40]!r}")
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise _PidFileError(f"stale pid file {path}: process {pid} is not running") from None
    except PermissionError:
        pass  # it exists, owned by someone else
    return pid


def _write_pid_file(path: str) -> None:
    try:
        pid = _read_pid(path)
    except _PidFileError:
        pid = None
    if pid is not None and pid != os.getpid():
        raise _PidFileError(
            f"pid file {path} names process {pid}, which is running: is another gateway using "
            "it? (remove the file if that process is not isekai)"
        )
    try:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise _PidFileError(f"cannot write pid file {path}: {exc.strerror}") from None
    log.info("pid %d written to %s", os.getpid(), path)


def _remove_pid_file(path: str) -> None:
    # only if it still holds our pid: a newer gateway may have taken the file over
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


def _reload(args: argparse.Namespace) -> int:
    pid_file = _setting(args.pid_file, "ISEKAI_PID_FILE")
    file = _setting(args.config, "ISEKAI_CONFIG")
    if file is not None:
        try:
            config = load_config(file)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            print("isekai reload: not reloading: the config file has errors", file=sys.stderr)
            return 1
        if pid_file is None:
            pid_file = config.pid_file
    if pid_file is None:
        print(
            "isekai reload: no pid file: give --pid-file PATH, set ISEKAI_PID_FILE, or give a "
            "config file (-c FILE) that sets pid_file",
            file=sys.stderr,
        )
        return 1
    try:
        pid = _read_pid(pid_file)
        os.kill(pid, signal.SIGHUP)
    except _PidFileError as exc:
        print(f"isekai reload: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"isekai reload: cannot signal process {pid}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to isekai (pid {pid}); its log tells whether the config was accepted")
    return 0


def _user_password(args: argparse.Namespace) -> str:
    sources = [
        name
        for name, given in (
            ("--password", args.password is not None),
            ("--password-stdin", args.password_stdin),
        )
        if given
    ]
    if len(sources) > 1:
        raise _UsageError("give the password one way: --password or --password-stdin")
    if args.password is not None:
        return args.password
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = os.environ.get("ISEKAI_USER_PASSWORD")
    if not password:
        raise _UsageError(
            "no password: give --password P, --password-stdin or set ISEKAI_USER_PASSWORD"
        )
    return password


def _users_add(args: argparse.Namespace) -> int:
    from isekai.admin.auth import check_password_rules, check_username, hash_password

    password = _user_password(args)
    try:
        check_username(args.name)
        check_password_rules(password, args.name)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    file = _setting(args.config, "ISEKAI_CONFIG")
    try:
        config = load_config(file) if file is not None else Config()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    url = _setting(args.store_url, "ISEKAI_STORE_URL") or config.store.url
    password_hash = hash_password(password)
    import asyncio

    try:
        created = asyncio.run(_save_user(url, args.name, password_hash, args.role))
    except ConfigError as exc:  # a store URL no backend understands
        print(f"isekai users add: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from isekai.store import StoreError

        if not isinstance(exc, StoreError):
            raise
        print(f"isekai users add: the store failed: {exc}", file=sys.stderr)
        return 1
    print(f"user {args.name!r} {'created' if created else 'updated'} with role {args.role}")
    return 0


async def _save_user(url: str, username: str, password_hash: str, role: str) -> bool:
    # True if the user was created, False if it existed and was updated
    from isekai.store import AlreadyExists, open_store

    store = open_store(url)
    await store.open()
    try:
        try:
            await store.create_user(username, password_hash, role)
            return True
        except AlreadyExists:
            await store.set_user(username, password_hash, role)
            return False
    finally:
        await store.close()
