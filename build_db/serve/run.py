"""Starting `hmba-db serve` under uvicorn: checks first (the store opens, the port is free), one warning line
for a public address, worker processes that get their config from the environment, a clean stop on Ctrl-C."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
from dataclasses import asdict

from ..errors import HmbaError
from .app import ServeConfig

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_port(host: str, port: int) -> None:
    """A clear error now, not uvicorn's traceback later, when the address is taken or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise HmbaError(f"{host}:{port} is in use by another program; choose another --port") from e
            raise HmbaError(f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port") from e


def serve(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
) -> None:
    """Serve the store until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    from .app import create_app

    if host not in LOCAL_HOSTS:
        print(
            f"warning: listening on {host}: the store's data become reachable from the network"
            + ("" if config.token else " by anyone (no --token)"),
            file=sys.stderr,
        )
    check_port(host, port)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(message)s")
    app = create_app(config)  # opens the store now: a bad store is one line before the port opens
    target: object = app  # the app, or with workers the factory each worker process calls
    if workers > 1:  # each worker process makes its own app from the environment
        app.state.stores.close()
        os.environ["HMBA_SERVE_CONFIG"] = json.dumps(asdict(config))
        target = "build_db.serve.app:app_from_env"
    shown = "localhost" if host in LOCAL_HOSTS else host
    print(
        f"serving {config.store} at http://{shown}:{port}/ (API {shown}:{port}/api/v1, docs /api/docs); "
        "Ctrl-C stops",
        file=sys.stderr,
    )
    uvicorn.run(
        target,  # type: ignore[arg-type]  # an ASGI app or its import string, as uvicorn takes either
        host=host,
        port=port,
        workers=workers if workers > 1 else None,
        factory=workers > 1,
        log_level=log_level,
        access_log=log_level == "debug",
        timeout_graceful_shutdown=5,
    )
