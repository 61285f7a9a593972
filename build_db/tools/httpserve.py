"""A static file server with HTTP Range requests, counting what it sends: how the tests and `make bench`
serve a published store on 127.0.0.1 (what S3 or any static web server does for real readers).

    python -m build_db.tools.httpserve data/demo-store --port 8000
"""

from __future__ import annotations

import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Traffic:
    requests: int = 0
    bytes_sent: int = 0
    paths: list[str] = field(default_factory=list)
    bytes_by_path: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, n: int) -> None:
        with self.lock:
            self.requests += 1
            self.bytes_sent += n
            self.paths.append(path)
            self.bytes_by_path[path] = self.bytes_by_path.get(path, 0) + n

    def reset(self) -> None:
        with self.lock:
            self.requests, self.bytes_sent, self.paths, self.bytes_by_path = 0, 0, [], {}


class RangeServer:
    """Serves `root` on 127.0.0.1 (port 0: any free one) until stop(); `url` is its base, `traffic` counts."""

    def __init__(self, root: Path, port: int = 0, prefix: str = ""):
        self.root = Path(root).absolute()
        self.traffic = Traffic()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _file(self) -> Path | None:
                rel = self.path.split("?", 1)[0].lstrip("/")
                if prefix:
                    if not rel.startswith(prefix):
                        return None
                    rel = rel[len(prefix) :].lstrip("/")
                path = (server.root / rel).resolve()
                return path if path.is_file() and server.root.resolve() in path.parents else None

            def _send(self, body: bool) -> None:
                path = self._file()
                if path is None:
                    server.traffic.add(self.path, 0)
                    self.send_error(404)
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "") or "")
                if m and (m.group(1) or m.group(2)):
                    if m.group(1):
                        start = int(m.group(1))
                        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                    else:  # the last N bytes
                        start = max(size - int(m.group(2)), 0)
                    if start >= size or start > end:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.end_headers()
                        server.traffic.add(self.path, 0)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                n = end - start + 1
                self.send_header("Content-Length", str(n))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
                self.end_headers()
                sent = 0
                if body:
                    with path.open("rb") as f:
                        f.seek(start)
                        while sent < n:
                            chunk = f.read(min(1 << 20, n - sent))
                            if not chunk:
                                break
                            self.wfile.write(chunk)
                            sent += len(chunk)
                server.traffic.add(self.path, sent)

            def do_GET(self):  # noqa: N802
                self._send(body=True)

            def do_HEAD(self):  # noqa: N802
                self._send(body=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/" + (
            prefix.strip("/") + "/" if prefix else ""
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--port", type=int, default=8000)
    a = p.parse_args(argv)
    with RangeServer(Path(a.root), a.port) as s:
        print(f"serving {a.root} at {s.url} (Ctrl-C stops)", file=sys.stderr)
        try:
            s.thread.join()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
