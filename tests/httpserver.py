"""A local HTTP server for download tests: serves a release directory on 127.0.0.1 with Range support,
and injects faults on demand (HTTP errors, a connection cut mid-file, a stall, corrupted bytes)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Faults:
    """Per relative path, a list of faults consumed one per request: ("status", code), ("cut", n_bytes),
    ("stall", seconds), ("corrupt", None), ("ignore_range", None)."""

    def __init__(self):
        self.queue: dict[str, list] = defaultdict(list)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.bytes_sent: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()

    def add(self, path: str, *faults) -> None:
        with self.lock:
            self.queue[path].extend(faults)

    def next(self, path: str):
        with self.lock:
            return self.queue[path].pop(0) if self.queue[path] else None


S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def serve(root: Path):
    faults = Faults()

    class Handler(BaseHTTPRequestHandler):
        def _list(self):
            """S3's ListObjectsV2 of `prefix` with `delimiter=/`: the folders under it, as CommonPrefixes."""
            from urllib.parse import parse_qs, urlparse

            q = parse_qs(urlparse(self.path).query)
            prefix = q.get("prefix", [""])[0]
            folder = Path(root) / prefix
            subs = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{S3_NS}">'
                f"<Name>bucket</Name><Prefix>{prefix}</Prefix><IsTruncated>false</IsTruncated>"
                + "".join(f"<CommonPrefixes><Prefix>{prefix}{s}/</Prefix></CommonPrefixes>" for s in subs)
                + "</ListBucketResult>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802
            if self.path.startswith("/?") and "list-type=2" in self.path:
                return self._list()
            rel = self.path.lstrip("/")
            faults.requests.append((rel, self.headers.get("Range")))
            fault = faults.next(rel)
            if fault and fault[0] == "status":
                self.send_error(fault[1])
                return
            path = Path(root) / rel
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start = 0
            rng = self.headers.get("Range")
            if rng and not (fault and fault[0] == "ignore_range"):
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            if fault and fault[0] == "corrupt":
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault and fault[0] == "stall":
                time.sleep(fault[1])
            if fault and fault[0] == "cut":
                self.wfile.write(body[: fault[1]])
                faults.bytes_sent[rel] += fault[1]
                self.wfile.flush()
                self.connection.shutdown(2)  # the connection drops mid-file
                return
            self.wfile.write(body)
            faults.bytes_sent[rel] += len(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/", faults
