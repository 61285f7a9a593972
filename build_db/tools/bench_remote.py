"""Benchmarks beyond one machine: a published store read over HTTP (requests and bytes per question) and
the named queries on Spark against DuckDB. Part of `make bench`; alone:

    python -m build_db.tools.bench_remote data/demo-store [--spark]

The HTTP client runs in the side environment `make test` and `make bench` install (.venv-remote: DuckDB
1.5.5 with httpfs from PyPI), against a Range server on 127.0.0.1 (tools/httpserve.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REMOTE_PYTHON = ROOT / ".venv-remote" / "bin" / "python"
GENES = "DRD1,DRD2,PENK,TAC1,GAD1,SLC17A7,PLP1"

# Each step runs in the client, then waits for a line on stdin so the server's counters can be read.
CLIENT = r"""
import sys, time, build_db
from build_db import analyses, run_query
def step(label, fn):
    t = time.perf_counter(); fn(); ms = (time.perf_counter() - t) * 1000
    print(f"{label}\t{ms:.1f}", flush=True); sys.stdin.readline()
con = None
def open_():
    global con
    con = build_db.connect(sys.argv[1])
step("connect (ATTACH the published catalog)", open_)
step("one gene x Group, statistics (gene_set_by_level DRD1), first",
     lambda: run_query(con, "gene_set_by_level", genes="DRD1", species="Human"))
step("one gene x Group, statistics, another gene (DRD2)",
     lambda: run_query(con, "gene_set_by_level", genes="DRD2", species="Human"))
step("7-gene heatmap x Group x 3 species (gene_set_across_species)",
     lambda: run_query(con, "gene_set_across_species", genes=sys.argv[2]))
step("one gene x Group from the expression store (mean_expression_from_rows PENK), first",
     lambda: analyses.mean_expression_from_rows(con, "Human", ["PENK"]))
step("the same, another gene (TAC1)", lambda: analyses.mean_expression_from_rows(con, "Human", ["TAC1"]))
"""


def remote_rows(store: Path) -> tuple[list[dict], int]:
    """Publish a copy's catalog for a local URL, serve the store, and count what each question costs."""
    from ..store.publish import publish
    from .httpserve import RangeServer

    if not REMOTE_PYTHON.exists():
        raise SystemExit(f"{REMOTE_PYTHON}: missing; `make bench` installs it")
    store = Path(store).absolute()
    rows = []
    with RangeServer(store.parent) as server:
        url = f"{server.url}{store.name}/"
        record = publish(store, url)
        client = subprocess.Popen(
            [str(REMOTE_PYTHON), "-c", CLIENT, url, GENES],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdin and client.stdout
        for line in client.stdout:
            label, ms = line.rstrip("\n").split("\t")
            t = server.traffic
            rows.append({"question": label, "ms": float(ms), "requests": t.requests, "bytes": t.bytes_sent})
            t.reset()
            client.stdin.write("\n")
            client.stdin.flush()
        if client.wait() != 0:
            raise SystemExit("the HTTP client failed")
    return rows, record["bytes"]


def remote_table(rows: list[dict], store_bytes: int) -> str:
    lines = [
        f"Store served: {store_bytes / 2**20:,.0f} MiB (the published catalog and its files).\n",
        "| question | requests | bytes read | share of the store | time (127.0.0.1) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['question']} | {r['requests']} | {r['bytes'] / 2**20:.2f} MiB "
            f"| {100 * r['bytes'] / store_bytes:.2f}% | {r['ms']:.0f} ms |"
        )
    return "\n".join(lines)


def spark_rows(store: Path, repeat: int = 3) -> list[dict]:
    """Each named query (its example parameters) on DuckDB and on Spark local[2], warm medians."""
    from ..access.connect import connect
    from ..access.queries import list_queries, run_query
    from ..access.spark import local_session, register
    from .bench import _median_ms

    t0 = time.perf_counter()
    spark = local_session("hmba-db-bench")
    spark.sparkContext.setLogLevel("ERROR")
    started = time.perf_counter() - t0
    t0 = time.perf_counter()
    register(spark, store)
    registered = time.perf_counter() - t0
    con = connect(store)
    rows: list[dict[str, Any]] = [
        {"query": "(session start; register)", "duckdb_ms": None, "spark_ms": (started, registered)}
    ]
    for q in list_queries().values():
        out: dict[str, Any] = {"query": q.name}
        for engine, kw in (("duckdb", {}), ("spark", {"engine": "spark", "spark": spark})):
            target = con if engine == "duckdb" else store
            out[f"{engine}_ms"], _ = _median_ms(
                lambda target=target, kw=kw, q=q: run_query(target, q.name, **kw, **q.example), repeat
            )
        rows.append(out)
        print(f"spark vs duckdb: {out}", file=sys.stderr, flush=True)
    spark.stop()
    return rows


def spark_table(rows: list[dict]) -> str:
    lines = ["| named query (example parameters) | DuckDB | Spark local[2] | ratio |", "|---|---|---|---|"]
    for r in rows:
        if r["duckdb_ms"] is None:
            start, reg = r["spark_ms"]
            lines.append(f"| {r['query']} | | {start:.1f} s; {reg:.1f} s | |")
            continue
        lines.append(
            f"| `{r['query']}` | {r['duckdb_ms']:.0f} ms | {r['spark_ms']:.0f} ms "
            f"| {r['spark_ms'] / r['duckdb_ms']:.0f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m build_db.tools.bench_remote", description=__doc__)
    ap.add_argument("store", type=Path)
    ap.add_argument("--spark", action="store_true", help="also the named queries on Spark against DuckDB")
    args = ap.parse_args(argv)
    rows, size = remote_rows(args.store)
    print("### a published store over HTTP\n\n" + remote_table(rows, size) + "\n")
    if args.spark:
        print("### Spark against DuckDB\n\n" + spark_table(spark_rows(args.store)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
