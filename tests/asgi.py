"""One request through an ASGI app in this process, as uvicorn would pass it: for the server's tests that
need a pool of one connection, a patched route or a client that goes away mid-request."""

from __future__ import annotations

import asyncio
import time


async def call(app, method: str, path: str, body: bytes = b"", *, disconnect_after: float | None = None):
    """(status, body) of one request; with `disconnect_after`, the client goes away after that many seconds
    (as a closed browser tab does), and the status is None when it went away before an answer."""
    sent: list = []
    requested = False
    start = time.monotonic()

    async def receive():  # as uvicorn's: a disconnect is there at once when it happened
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        if disconnect_after is not None and time.monotonic() - start > disconnect_after:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    p, _, q = path.partition("?")
    scope = {
        "type": "http",
        "method": method,
        "path": p,
        "raw_path": p.encode(),
        "query_string": q.encode(),
        "headers": [(b"content-type", b"application/json")] if body else [],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("t", 1),
        "root_path": "",
        "asgi": {"version": "3.0"},
    }
    await app(scope, receive, send)
    first = next((m for m in sent if m["type"] == "http.response.start"), None)
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return (first["status"] if first else None), answer
