"""`make bench`: measure synth and build along a scale ladder (time, peak memory of the process tree, disk).

Run as `python -m build_db.bench --out data/bench [--scales 0.01,0.1] [--full] [--reuse]`. `--full` adds
`--scale 1` (about 9 billion non-zeros: hours, ~40 GB of release and ~90 GB of staging disk). `--reuse`
keeps releases already generated under --out. Prints Markdown tables for docs/benchmarks.md.

The build is compared with the floor it cannot beat, measured in the same run on the same files: a plain
single-threaded read of every raw h5ad's `data` and `indices` (gzip decompression).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..defaults import NOTEBOOK_GENES
from ..release import layout as R
from ..release.h5ad import CsrReader
from ..store.paths import files_root


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run_measured(cmd: list[str], watch: Path | None = None) -> tuple[float, int, int]:
    """Wall seconds and peak resident bytes (whole process tree, sampled every 50 ms) of a command, and the
    peak size of the folder `watch` (sampled every 2 s, in a thread; 0 without one)."""
    import threading

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, disk = 0, 0

    def sample_disk():
        nonlocal disk
        while proc.poll() is None:
            try:
                disk = max(disk, _du(watch) if watch is not None and watch.exists() else 0)
            except OSError:  # files come and go while we count
                pass
            time.sleep(2)

    watcher = threading.Thread(target=sample_disk, daemon=True) if watch is not None else None
    if watcher:
        watcher.start()
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.05)
    took = time.perf_counter() - t0
    if watcher:
        watcher.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr.read() if proc.stderr else ''}")
    return took, peak, disk


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def synth_ladder(out: Path, scales: list[float], reuse: bool = False) -> list[dict]:
    rows = []
    exe = [sys.executable, "-m", "build_db"]
    for scale in scales:
        target = out / f"release-{scale:g}"
        if reuse and (target / R.manifest_path()).exists():
            continue
        cmd = [*exe, "synth", str(target), "--scale", str(scale), "--force", "--quiet"]
        took, peak, _ = run_measured(cmd)
        nnz = 0
        for s in R.SPECIES:
            with CsrReader(target / R.matrix_path(s, "raw")) as m:
                nnz += m.nnz
        t1 = time.perf_counter()
        subprocess.run([*exe, "check", str(target)], check=True, stdout=subprocess.DEVNULL)
        check_s = time.perf_counter() - t1
        rows.append(
            {
                "scale": scale,
                "cells": sum(round(R.REAL_CELLS[s] * scale) for s in R.SPECIES),
                "nnz": nnz,
                "seconds": took,
                "peak_bytes": peak,
                "disk_bytes": _du(target),
                "check_seconds": check_s,
            }
        )
        print(
            f"scale {scale:g}: {took:.1f} s, peak {peak / 2**30:.2f} GiB, "
            f"{_du(target) / 2**30:.2f} GiB on disk, "
            f"{nnz:,} non-zeros, check {check_s:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return rows


def plain_read_seconds(release: Path, species: tuple[str, ...] = R.SPECIES) -> float:
    """The decompression floor: read the species' raw matrices' data and indices once, one thread, 4M at
    a time."""
    t0 = time.perf_counter()
    for s in species:
        with CsrReader(release / R.matrix_path(s, "raw")) as m:
            for a in range(0, m.nnz, 4_000_000):
                m.data[a : a + 4_000_000]
                m.indices[a : a + 4_000_000]
    return time.perf_counter() - t0


def build_ladder(out: Path, scales: list[float]) -> list[dict]:
    """Build each scale; at the largest below 1, also with full-scale-sized buckets (~80M non-zeros each,
    as Human gets at --scale 1), which is what decides a full build's peak memory."""
    rows = []
    exe = [sys.executable, "-m", "build_db"]
    runs: list[tuple[float, str, str, list]] = [(s, f"{s:g}", "", []) for s in scales]
    small = [s for s in scales if s < 1]
    if small:
        s = max(small)
        runs.append(
            (
                s,
                f"{s:g}, full-size buckets",
                "-full-buckets",
                ["--bucket-genes", "65536", "--bucket-nnz", "80000000"],
            )
        )
    for scale, label, suffix, extra in runs:
        release, store = out / f"release-{scale:g}", out / f"store-{scale:g}{suffix}"
        shutil.rmtree(store, ignore_errors=True)
        floor = plain_read_seconds(release)
        took, peak, _ = run_measured([*exe, "build", str(release), str(store), "--quiet", *extra])
        info = json.loads((store / "build.json").read_text())
        nnz = sum(v["nnz"] for v in info["species"].values())
        size = _du(files_root(store) / "expression")
        rows.append(
            {
                "label": label,
                "nnz": nnz,
                "seconds": took,
                "peak_bytes": peak,
                "store_bytes": size,
                "floor_seconds": floor,
                "stats_seconds": info["statistics"]["merge_seconds"],
                "stats_bytes": _du(files_root(store) / "aggregates"),
            }
        )
        print(
            f"build {label}: {took:.1f} s ({nnz / took / 1e6:.1f} M nz/s), peak {peak / 2**30:.2f} GiB, "
            f"{size / nnz:.3f} B/nz, plain read {floor:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        if scale >= 0.5 or suffix:
            shutil.rmtree(store)
    return rows


def build_table(rows: list[dict]) -> str:
    lines = [
        "| scale | non-zeros | build time | non-zeros/s | plain read (1 thread) | build / read | peak memory "
        "| store | bytes per non-zero | of which merging the statistics | statistics files |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['nnz'] / 1e6:,.0f} M | {r['seconds']:.1f} s "
            f"| {r['nnz'] / r['seconds'] / 1e6:.1f} M | {r['floor_seconds']:.1f} s "
            f"| {r['seconds'] / r['floor_seconds']:.2f}x | {r['peak_bytes'] / 2**30:.2f} GiB "
            f"| {r['store_bytes'] / 2**20:,.0f} MiB | {r['store_bytes'] / r['nnz']:.3f} "
            f"| {r['stats_seconds']:.1f} s | {r['stats_bytes'] / 2**20:,.0f} MiB |"
        )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = [
        "| scale | cells | non-zeros | synth time | peak memory (all processes) | disk | non-zeros/s "
        "| check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scale']:g} | {r['cells']:,} | {r['nnz'] / 1e6:,.0f} M | {r['seconds']:.0f} s | "
            f"{r['peak_bytes'] / 2**30:.2f} GiB | {r['disk_bytes'] / 2**30:.2f} GiB | "
            f"{r['nnz'] / r['seconds'] / 1e6:.1f} M | {r['check_seconds']:.1f} s |"
        )
    if len(rows) >= 2 and rows[-1]["scale"] < 1:
        a, b = rows[-2], rows[-1]
        k = 1.0 / b["scale"]
        rate = (b["nnz"] - a["nnz"]) / max(1e-9, b["seconds"] - a["seconds"])
        nnz1 = b["nnz"] * k
        lines.append(
            f"| 1 (extrapolated) | {sum(R.REAL_CELLS.values()):,} | {nnz1 / 1e9:.1f} B | "
            f"~{nnz1 / rate / 3600:.1f} h | ~{b['peak_bytes'] / 2**30:.2f} GiB (flat) | "
            f"~{b['disk_bytes'] * k / 2**30:.0f} GiB | | |"
        )
    return "\n".join(lines)


SOMA_VENV = Path(".venv-soma")
QUERY_GENE = "DRD1"


def _median_ms(fn, repeat: int = 7) -> tuple[float, Any]:
    result = fn()  # the first run warms DuckDB's and the OS's caches; the targets are for warm queries
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000, result


def query_ladder(out: Path, scales: list[float], soma_scales: list[float]) -> list[dict]:
    """Warm latency of the one-gene and the notebook questions from the store, against, on the same data
    in the same run, the chunked h5ad scan (how abc_atlas_access reads genes) and TileDB-SOMA."""
    from ..access.analyses import mean_expression
    from ..access.connect import connect
    from .scan import mean_log2_by_term

    rows = []
    for scale in scales:
        release, store = out / f"release-{scale:g}", out / f"store-{scale:g}"
        con = connect(store)
        one_ms, answer = _median_ms(lambda con=con: mean_expression(con, "Human", [QUERY_GENE], "Group"))
        seven_ms, _ = _median_ms(
            lambda con=con: [mean_expression(con, s, NOTEBOOK_GENES, "Group") for s in R.SPECIES]
        )
        t0 = time.perf_counter()
        scanned = mean_log2_by_term(release, "Human", [QUERY_GENE], "Group")
        scan_s = time.perf_counter() - t0
        diff = float(np.abs(answer.loc[scanned.index, QUERY_GENE] - scanned[QUERY_GENE]).max())
        row = {
            "scale": scale,
            "cells": int(con.sql("select count(*) from cells where species = 'Human'").fetchall()[0][0]),
            "one_gene_ms": one_ms,
            "seven_genes_ms": seven_ms,
            "scan_s": scan_s,
            "scan_diff": diff,
        }
        if scale in soma_scales:
            row.update(_soma(out, scale, con, answer))
        rows.append(row)
        print(f"query {scale:g}: {row}", file=sys.stderr, flush=True)
        con.close()
    return rows


def _soma(out: Path, scale: float, con, answer) -> dict:
    from ..access.export import to_anndata

    python = SOMA_VENV / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} is missing: `make bench` creates it (pip install tiledbsoma)")
    script = str(Path(__file__).with_name("bench_soma.py"))
    uri = out / f"soma-{scale:g}"
    shutil.rmtree(uri, ignore_errors=True)
    h5ad = out / f"release-{scale:g}" / R.matrix_path("Human", "raw")
    ingest = json.loads(
        subprocess.run(
            [str(python), script, "ingest", str(h5ad), str(uri)], check=True, capture_output=True, text=True
        ).stdout
    )
    cells = out / f"soma-cells-{scale:g}.parquet"
    con.sql(
        "select cell_index, group_name, total_counts from cells where species = 'Human' "
        "and group_name is not null"
    ).write_parquet(str(cells))
    gene = int(
        con.execute(
            "select min(gene_index) from genes where species = 'Human' and gene_symbol = ?", [QUERY_GENE]
        ).fetchall()[0][0]
    )
    result = json.loads(
        subprocess.run(
            [str(python), script, "query", str(uri), str(cells), str(gene), "7"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    soma = {g: v[0] for g, v in result["answer"].items()}
    diff = max(abs(soma[g] - answer.loc[g, QUERY_GENE]) for g in soma)
    # The cell slice: every gene of the largest Group's cells, get_anndata with an obs filter against ours.
    group = con.execute(
        "select group_name from cells where species = 'Human' and group_name is not null "
        "group by 1 order by count(*) desc limit 1"
    ).fetchall()[0][0]
    picked = out / f"soma-slice-{scale:g}.parquet"
    con.sql(
        "select cell_index from cells where species = 'Human' and group_name = $g order by cell_index",
        params={"g": group},
    ).write_parquet(str(picked))
    sliced = json.loads(
        subprocess.run(
            [str(python), script, "slice", str(uri), str(picked), "3"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    ours_ms, ours = _median_ms(lambda: to_anndata(con, "Human", cells=f"group_name = '{group}'"), repeat=3)
    if [ours.n_obs, ours.n_vars] != sliced["shape"] or ours.X.nnz != sliced["nnz"]:
        sys.exit(f"the {group} slice differs: store {ours.shape}, {ours.X.nnz} non-zeros; SOMA {sliced}")
    return {
        "slice_group": group,
        "slice_cells": ours.n_obs,
        "slice_nnz": ours.X.nnz,
        "slice_ms": ours_ms,
        "soma_slice_ms": float(np.median(sliced["seconds"])) * 1000,
        "soma_ms": float(np.median(result["seconds"])) * 1000,
        "soma_diff": float(diff),
        "soma_ingest_s": ingest["seconds"],
        "soma_bytes": ingest["bytes"],
        "soma_peak": ingest["peak_rss"],
    }


def query_table(rows: list[dict]) -> str:
    lines = [
        "| scale | Human cells | 1 gene x Group (store) | 7 genes x Group x 3 species (store) "
        "| 1 gene, h5ad scan | scan / store | 1 gene, TileDB-SOMA | SOMA / store | SOMA ingest "
        "| a Group's cells, all genes: to_anndata | the same, SOMA get_anndata |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        soma = (
            f"{r['soma_ms']:.0f} ms | {r['soma_ms'] / r['one_gene_ms']:.0f}x | {r['soma_ingest_s']:.0f} s, "
            f"{r['soma_peak'] / 2**30:.1f} GiB peak | {r['slice_ms']:.0f} ms ({r['slice_group']}: "
            f"{r['slice_cells']:,} cells, {r['slice_nnz'] / 1e6:.1f}M non-zeros) "
            f"| {r['soma_slice_ms']:.0f} ms"
            if "soma_ms" in r
            else "not run | | | | "
        )
        lines.append(
            f"| {r['scale']:g} | {r['cells']:,} | {r['one_gene_ms']:.1f} ms | {r['seven_genes_ms']:.0f} ms "
            f"| {r['scan_s']:.2f} s | {r['scan_s'] * 1000 / r['one_gene_ms']:.0f}x | {soma} |"
        )
    return "\n".join(lines)


def analysis_ladder(out: Path, scales: list[float]) -> list[dict]:
    """Warm latency of the named analyses (render + run, as `hmba-db query` does) and of to_anndata."""
    from ..access.connect import connect
    from ..access.export import to_anndata
    from ..access.queries import run_query

    rows = []
    for scale in scales:
        con = connect(out / f"store-{scale:g}")
        row = {"scale": scale}
        row["heatmap_stats_ms"], a = _median_ms(
            lambda con=con: run_query(con, "gene_set_across_species", genes=NOTEBOOK_GENES)
        )
        row["heatmap_expression_ms"], b = _median_ms(
            lambda con=con: run_query(con, "gene_set_from_expression", genes=NOTEBOOK_GENES)
        )
        row["heatmap_diff"] = float(np.abs(a.mean_log2_cpm - b.mean_log2_cpm).max())
        row["markers_ms"], _ = _median_ms(lambda con=con: run_query(con, "markers"))
        t0 = time.perf_counter()
        adata = to_anndata(con, "Human", cells="cell_index < 10000")
        row["anndata_s"] = time.perf_counter() - t0
        row["anndata_shape"], row["anndata_nnz"] = adata.shape, adata.X.nnz
        rows.append(row)
        print(f"analyses {scale:g}: {row}", file=sys.stderr, flush=True)
        con.close()
    return rows


def analysis_table(rows: list[dict]) -> str:
    lines = [
        "| scale | 7-gene heatmap x Group x 3 species, statistics | same, expression store "
        "| largest difference | markers of a Group (all genes) | to_anndata of 10,000 Human cells |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scale']:g} | {r['heatmap_stats_ms']:.0f} ms | {r['heatmap_expression_ms']:.0f} ms "
            f"| {r['heatmap_diff']:.1e} | {r['markers_ms']:.0f} ms | {r['anndata_s']:.1f} s "
            f"({r['anndata_nnz'] / 1e6:.0f} M non-zeros) |"
        )
    return "\n".join(lines)


def startup_table() -> str:
    """How long a command takes to start (median of 5 runs each, a fresh process each time): the CLI
    imports lazily, so `--help` and `--version` load no DuckDB, pandas or Arrow (target: --help <= 0.3 s)."""
    import statistics
    import subprocess
    import sys
    import time

    rows = []
    for args in (["--help"], ["--version"], ["query", "--help"]):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "build_db", *args], capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        rows.append(f"| hmba-db {' '.join(args)} | {statistics.median(times):.2f} s |")
    return "| command | start-up (median of 5) |\n|---|---|\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m build_db.bench", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/bench"))
    ap.add_argument("--scales", default="0.01,0.1", help="comma-separated synth scales")
    ap.add_argument("--full", action="store_true", help="also run --scale 1 (hours, ~130 GB of disk)")
    ap.add_argument("--reuse", action="store_true", help="reuse releases already generated under --out")
    ap.add_argument(
        "--soma-scales",
        default="0.01",
        help="scales at which to ingest and query TileDB-SOMA (0.1 needs ~10 GiB and minutes)",
    )
    ap.add_argument("--skip-build", action="store_true", help="reuse stores already built under --out")
    args = ap.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")] + ([1.0] if args.full else [])
    args.out.mkdir(parents=True, exist_ok=True)
    print("### start-up\n\n" + startup_table() + "\n")
    synth_rows = synth_ladder(args.out, scales, args.reuse)
    if synth_rows:
        print("### synth\n\n" + table(synth_rows) + "\n")
    if not args.skip_build:
        print("### build\n\n" + build_table(build_ladder(args.out, scales)) + "\n")
    soma_scales = [float(x) for x in args.soma_scales.split(",") if x]
    print("### queries\n\n" + query_table(query_ladder(args.out, scales, soma_scales)) + "\n")
    print("### analyses\n\n" + analysis_table(analysis_ladder(args.out, scales)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
