"""``python -m isekai.admin -c FILE``: the admin API alone, without a data plane.

For tests and for trying the API: changes are validated and stored as usual, and "applying"
them only logs the new config's size. Prints ``admin API on http://HOST:PORT`` once serving;
stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from isekai.admin.app import AdminServer
from isekai.admin.auth import ensure_initial_admin
from isekai.admin.context import AdminContext
from isekai.config.reload import read_config
from isekai.config.schema import Config
from isekai.errors import ConfigError

log = logging.getLogger("isekai.admin")


async def _serve(path: str, host: str | None, port: int | None, rounds: int) -> int:
    from isekai.store import open_store

    config, text = read_config(path)
    store = open_store(config.store.url)
    await store.open()
    try:
        await ensure_initial_admin(store, rounds=rounds)

        async def apply(new: Config, changes: object) -> None:
            log.info("config applied: %d routes, %d upstreams", len(new.routes), len(new.upstreams))

        ctx = AdminContext(
            store=store, config=config, config_text=text, apply=apply, bcrypt_rounds=rounds
        )
        await ctx.load()
        server = AdminServer(ctx, host, port)
        await server.start()
        print(f"admin API on http://{server.host}:{server.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()
    finally:
        await store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m isekai.admin", description=__doc__)
    parser.add_argument("-c", "--config", required=True, metavar="FILE")
    parser.add_argument("--host", help="override admin.bind's host")
    parser.add_argument("--port", type=int, help="override admin.bind's port (0: any free)")
    parser.add_argument("--bcrypt-rounds", type=int, default=12, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_serve(args.config, args.host, args.port, args.bcrypt_rounds))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
