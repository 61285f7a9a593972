"""`hmba-db serve` started as a user starts it (a subprocess on a free port of 127.0.0.1), for the tests and
the benchmarks, and called over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `hmba-db serve`; `get` and `post` return (status, headers, body bytes)."""

    def __init__(self, store, *args: str, python: str = sys.executable, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"hmba-serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [python, "-m", "build_db", "serve", str(store), "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "w"),  # noqa: SIM115 - the server's life
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not start: {self.log.read_text()}")

    def request(self, path: str, *, data: bytes | None = None, headers: dict | None = None, method=None):
        quoted = urllib.parse.quote(path, safe="/?&=,:;'()%*+!$@")  # spaces and the like, as a browser does
        req = urllib.request.Request(self.url + quoted, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def get(self, path: str, **headers):
        return self.request(path, headers=headers)

    def json(self, path: str, **headers):
        status, h, body = self.get(path, **headers)
        return status, json.loads(body) if body else None

    def post(self, path: str, payload: dict, **headers):
        return self.request(
            path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json", **headers}
        )

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
