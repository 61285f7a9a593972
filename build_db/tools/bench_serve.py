"""`make bench` (and `make bench-full`): `hmba-db serve` measured from a client on the same machine.

Run as `python -m build_db.tools.bench_serve STORE [--release RELEASE] [--seconds 60] [--clients 32]`.
Warm latencies (p50/p95 over repeated requests on one keep-alive connection) of the dot plot of 10 genes x
Group x every species from the statistics, asked again (an answer the server keeps) and with new genes each
time (computed); gene autocomplete with new text each time; a 200,000-point UMAP with a gene (time and
bytes on the wire, gzip); then `wrk` with `--clients` connections for `--seconds` over a mix of those,
sampling the server's memory (its process tree) as it runs. Compared in the same run: the same dot plot
through `build_db.run_query` in-process (the server's overhead), and, with --release, the h5ad scan of the
same genes (the old way).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .bench import _tree_rss
from .served import Server

LEVEL = "Group"


def _percentiles(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]


class Client:
    """One keep-alive connection: the time of each answer, its bytes as sent (gzip when offered)."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str, gzip: bool = True) -> tuple[float, int, int]:
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers={"Accept-Encoding": "gzip"} if gzip else {})
        r = self.conn.getresponse()
        body = r.read()
        return (time.perf_counter() - t0) * 1000, r.status, len(body)


def _genes(store: Path, n: int, seed: int = 0) -> list[str]:
    """n gene symbols in a fixed random order: those every species has first (the real release shares most
    symbols across species; a synthetic one only its marker genes), then the first species' others."""
    import build_db

    con = build_db.connect(store)
    rows = con.execute(
        "select gene_symbol, "
        "count(distinct species) = (select count(distinct species) from genes) as shared, "
        "bool_or(species = (select min(species) from genes)) as first from genes "
        "where gene_symbol is not null group by 1 order by 1"
    ).fetchall()
    con.close()
    shared = [r[0] for r in rows if r[1]]
    others = [r[0] for r in rows if not r[1] and r[2]]
    random.Random(seed).shuffle(shared)
    random.Random(seed).shuffle(others)
    return (shared + others)[:n]


def measure(store: Path, release: Path | None, seconds: float, clients: int) -> dict:
    import build_db

    store = Path(store)
    info = build_db.store_info(store)
    species = [s["species"] for s in info["species"]]
    pool = _genes(store, 600)
    sets = [",".join(pool[i : i + 10]) for i in range(0, 600, 10)]
    first = sets[0]
    dot = f"/api/v1/query/dotplot?species={','.join(species)}&level={LEVEL}&genes="
    s = Server(store, "--log-level", "warning")
    out: dict = {"store": str(store), "species": species, "build_id": info["build_id"]}
    try:
        c = Client(s.port)
        for _ in range(5):
            c.get(dot + first)
        again = [c.get(dot + first)[0] for _ in range(50)]
        fresh = [c.get(dot + g)[0] for g in sets[1:51]]
        out["dotplot_again_ms"] = _percentiles(again)
        out["dotplot_new_genes_ms"] = _percentiles(fresh)
        con = build_db.connect(store)
        build_db.run_query(con, "dotplot", species=",".join(species), level=LEVEL, genes=first)
        inproc = []
        for g in sets[1:21]:
            t0 = time.perf_counter()
            build_db.run_query(con, "dotplot", species=",".join(species), level=LEVEL, genes=g)
            inproc.append((time.perf_counter() - t0) * 1000)
        out["dotplot_run_query_ms"] = _percentiles(inproc)
        con.close()
        prefixes = sorted({g[: random.Random(i).choice((2, 3, 4))].lower() for i, g in enumerate(pool[:200])})
        auto = [c.get(f"/api/v1/genes?q={p}&species=all&limit=20")[0] for p in prefixes[:100]]
        out["genes_autocomplete_ms"] = _percentiles(auto)
        big = max(species, key=lambda x: next(i["cells"] for i in info["species"] if i["species"] == x))
        umap = f"/api/v1/umap?species={big}&gene={pool[0]}&max_points=200000"
        c.get(umap)
        times, sizes = [], []
        for g in pool[1:6]:  # a new gene each time: computed, not a kept answer
            ms, status, n = c.get(umap.replace(pool[0], g))
            times.append(ms)
            sizes.append(n)
        _, status, raw = c.get(umap.replace(pool[0], pool[7]), gzip=False)
        status, u = s.json(f"/api/v1/umap?species={big}&max_points=200000")
        out["umap"] = {
            "species": big,
            "points": u["n_points"],
            "ms": statistics.median(times),
            "bytes_gzip": int(statistics.median(sizes)),
            "bytes_plain": raw,
        }
        out["load"] = _load(
            s,
            [dot + g for g in sets]
            + [f"/api/v1/genes?q={p}" for p in prefixes]
            + ["/api/v1/terms?level=Group", "/api/v1/health", umap],
            seconds,
            clients,
        )
    finally:
        s.stop()
    if release is not None:
        from .scan import mean_log2_by_term

        t0 = time.perf_counter()
        for sp in species:
            mean_log2_by_term(release, sp, first.split(","), LEVEL)
        out["h5ad_scan_s"] = time.perf_counter() - t0
    return out


WRK_SCRIPT = """
local paths = {%s}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n %% #paths) + 1], {["Accept-Encoding"] = "gzip"})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%.2f %%.2f %%.2f\\n", summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000))
end
"""


def _load(s: Server, paths: list[str], seconds: float, clients: int) -> dict:
    """wrk with `clients` connections on 2 threads for `seconds` over `paths` in turn; the server's memory
    sampled every half second."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: `make bench` installs it (Debian package wrk)")
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(WRK_SCRIPT % ", ".join(json.dumps(p) for p in paths))
    rss: list[int] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss.append(_tree_rss(s.proc.pid))
            time.sleep(0.5)

    t = threading.Thread(target=sample)
    t.start()
    try:
        r = subprocess.run(
            [wrk, "-t2", f"-c{clients}", f"-d{int(seconds)}s", "--timeout", "10s", "-s", str(script), s.url],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        stop.set()
        t.join()
        script.unlink()
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT"))
    n, status_errors, socket_errors, p50, p95, p99 = line.split()[1:]
    tenth = max(1, len(rss) // 10)
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": int(n),
        "errors": int(status_errors) + int(socket_errors),
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "rss_first_mib": statistics.mean(rss[:tenth]) / 2**20,
        "rss_last_mib": statistics.mean(rss[-tenth:]) / 2**20,
        "rss_peak_mib": max(rss) / 2**20,
    }


def table(m: dict) -> str:
    u, load = m["umap"], m["load"]
    rows = [
        (
            "dot plot, 10 genes x Group x " + ", ".join(m["species"]) + ", asked again (kept answer)",
            "{:.1f} / {:.1f} ms".format(*m["dotplot_again_ms"]),
            "p50 <= 15, p95 <= 40 ms",
        ),
        (
            "the same with new genes each time (computed from the statistics)",
            "{:.1f} / {:.1f} ms".format(*m["dotplot_new_genes_ms"]),
            "",
        ),
        (
            "the same new genes through build_db.run_query in-process",
            "{:.1f} / {:.1f} ms".format(*m["dotplot_run_query_ms"]),
            "",
        ),
        (
            "genes?q= autocomplete, new text each time",
            "{:.1f} / {:.1f} ms".format(*m["genes_autocomplete_ms"]),
            "p95 <= 20 ms",
        ),
        (
            f"umap of {u['points']:,} {u['species']} cells with a gene",
            f"{u['ms']:.0f} ms, {u['bytes_gzip'] / 2**20:.2f} MiB gzip "
            f"({u['bytes_plain'] / 2**20:.2f} MiB plain)",
            "<= 300 ms, <= 3 MB",
        ),
        (
            f"{load['clients']} clients for {load['seconds']:.0f} s (wrk), the mix",
            f"{load['requests']:,} requests, {load['errors']} errors, p50 {load['p50_ms']:.1f} / p95 "
            f"{load['p95_ms']:.1f} / p99 {load['p99_ms']:.1f} ms",
            "0 errors, p95 <= 250 ms",
        ),
        (
            "server memory (process tree) during the load: first tenth, last tenth, peak",
            f"{load['rss_first_mib']:.0f}, {load['rss_last_mib']:.0f}, {load['rss_peak_mib']:.0f} MiB",
            "flat",
        ),
    ]
    if "h5ad_scan_s" in m:
        rows.append(
            (
                "the same 10 genes x Group by the h5ad scan (the old way), every species",
                f"{m['h5ad_scan_s']:.1f} s",
                "",
            )
        )
    lines = ["| what | p50 / p95 or measured | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--release", type=Path, default=None, help="Also time the h5ad scan of the same genes.")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    a = ap.parse_args(argv)
    m = measure(a.store, a.release, a.seconds, a.clients)
    if a.json:
        a.json.write_text(json.dumps(m, indent=1))
    print(table(m))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
