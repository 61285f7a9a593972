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
from pathlib import Path

from ..errors import HmbaError
from .app import ServeConfig

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def token_from(given: str | None, path: Path | None, env: str | None) -> str | None:
    """The server's token from --token, --token-file or HMBA_TOKEN (one of them), refused when empty: an
    empty token would switch authentication off, which is what `--token "$(cat FILE)"` gives for an empty
    file. A file's first line is the token (its newline and spaces around it dropped)."""
    named = [n for n, v in (("--token", given), ("--token-file", path), ("HMBA_TOKEN", env)) if v is not None]
    if len(named) > 1:
        raise HmbaError(f"{' and '.join(named)} both give a token; give one")
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise HmbaError(f"{path}: cannot read the token file ({e.strerror}); check --token-file") from e
        token = text.splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise HmbaError(
                f"{path}: the token file is empty; write a token in it (e.g. openssl rand -hex 32)"
            )
        return token
    value = given if given is not None else env
    if value is not None and not value.strip():
        where = "--token" if given is not None else "HMBA_TOKEN"
        raise HmbaError(
            f"{where} is empty: that would let anyone in; give a token, or leave {where} out for a server "
            "without one"
        )
    if given is not None:
        print(
            "warning: --token shows in `ps` to every user of this machine; use --token-file or HMBA_TOKEN",
            file=sys.stderr,
        )
    return value.strip() if value is not None else None


def hosts_for(host: str, allowed: str | None) -> list[str] | None:
    """The Host header values the server answers (DNS rebinding: a page on another site whose name resolves
    to this address must be refused): --allowed-hosts, else the address's own names; None (any) for a
    server listening on every address without --allowed-hosts."""
    if allowed is not None:
        names = [h.strip().lower() for h in allowed.split(",") if h.strip()]
        if not names:
            raise HmbaError("--allowed-hosts is empty; give host names, comma-separated, or * for any")
        return names
    if host in WILDCARDS:
        return None
    return sorted({*LOCAL_HOSTS, host.lower()})


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
            + ("" if config.token else " by anyone (no --token)")
            + (
                "; any Host header is answered (--allowed-hosts names yours)"
                if config.allowed_hosts is None
                else ""
            ),
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
