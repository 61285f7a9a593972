"""`make bench-full`: one species at full scale (`synth --scale 1`), built and queried, in one table.

    python -m build_db.tools.bench_full --out data/bench-full [--species Macaque]

Reports, measured in the same run: the build against a single-threaded read of the same raw h5ad (the
decompression floor), peak memory summed over the build's processes, peak disk of the staging folder, the
store's bytes per non-zero by part, warm medians of 7 for the questions of issue 13's table, and the h5ad
scan of the one-gene question. The release is generated once and reused (11.5 GB for Macaque, ~22 min);
Human needs ~2x the time and ~25 GB of release (check `df -h`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ..release import layout as R
from ..release.h5ad import CsrReader
from ..release.normalise import log2_cpm_sql
from ..store.paths import files_root, staging_dir
from .bench import _du, _median_ms, plain_read_seconds, run_measured

GENE = "DRD1"
HEATMAP = "DRD1,DRD2,PENK,TAC1,GAD1,SLC17A7,PLP1"


def measured_build(release: Path, store: Path, species: str) -> dict:
    """Run the build, sampling the process tree's resident memory (50 ms) and the staging folder (2 s)."""
    cmd = [sys.executable, "-m", "build_db", "build", str(release), str(store), "--species", species]
    took, rss, disk = run_measured([*cmd, "--quiet"], watch=staging_dir(store))
    info = json.loads((store / "build.json").read_text())
    return {"seconds": took, "peak_rss": rss, "peak_staging": disk, "info": info}


def _ms(fn) -> float:
    return _median_ms(fn)[0]  # warm median of 7 after one warm-up, as `make bench` measures


def queries(store: Path, species: str) -> list[tuple[str, float]]:
    """Warm medians of 7 (ms) for the questions of the table, on one connection each as a user has."""
    import build_db
    from build_db import analyses

    con = build_db.connect(store)
    densest = con.execute(
        "select g.gene_symbol from term_gene_sums s join genes g using (species, gene_index) "
        "where s.species = ? and s.level = 'Neighborhood' and g.gene_symbol is not null "
        "group by g.gene_symbol order by sum(s.n_expressing) desc limit 1",
        [species],
    ).fetchall()[0][0]
    index, bucket = con.execute(
        "select gene_index, gene_bucket from genes where species = ? and gene_symbol = ?", [species, GENE]
    ).fetchall()[0]
    out = [
        (
            f"mean_expression {GENE} x Group",
            _ms(lambda: analyses.mean_expression(con, species, [GENE])),
        ),
        (
            f"mean_expression densest gene ({densest}) x Group",
            _ms(lambda: analyses.mean_expression(con, species, [densest])),
        ),
    ]
    import duckdb

    # What a BI tool has: the catalog opened read-only by its own driver, none of connect()'s settings.
    bi = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    sqls = {
        f"plain SQL (a BI tool's connection): expression_annotated, {GENE} by gene_symbol, x group_name": (
            "select group_name, avg(log2_cpm), count(*) from expression_annotated "
            f"where species = '{species}' and gene_symbol = '{GENE}' group by group_name"
        ),
        "plain SQL: expression_counts + cells (log2 from cells.total_counts), literal gene_index": (
            f"select c.group_name, avg({log2_cpm_sql('e.raw_count', 'c.total_counts')}), count(*) "
            "from expression_counts e join cells c using (species, cell_index) "
            f"where e.species = '{species}' and e.gene_index = {index} group by c.group_name"
        ),
        "the same with a literal gene_bucket": (
            f"select c.group_name, avg({log2_cpm_sql('e.raw_count', 'c.total_counts')}), count(*) "
            "from expression_counts e join cells c using (species, cell_index) "
            f"where e.species = '{species}' and e.gene_bucket = {bucket} and e.gene_index = {index} "
            "group by c.group_name"
        ),
    }
    for label, sql in sqls.items():
        out.append((label, _ms(lambda sql=sql: bi.execute(sql).fetchall())))
    out.append(
        (
            f"gene_set_across_species ({len(HEATMAP.split(','))} genes x Group, {species} only)",
            _ms(lambda: build_db.run_query(con, "gene_set_across_species", genes=HEATMAP)),
        )
    )
    sizes = con.execute(
        "select group_name, count(*) from cells where species = ? and group_name is not null "
        "group by 1 order by 2 desc",
        [species],
    ).fetchall()
    largest = sizes[0][0]
    near_50k = min(sizes, key=lambda r: abs(r[1] - 50_793))[0]  # issue 13's Group had 50,793 cells
    cell_sql = (
        "select e.gene_index, sum(e.raw_count) from expression_by_cell e join cells c "
        f"using (species, cell_rank) where c.species = '{species}' and c.group_name = '{{}}' group by 1"
    )
    out.append(
        (
            f"plain SQL (a BI tool's connection): counts of every gene in the largest Group ({largest}), "
            "expression_by_cell joined to cells on cell_rank",
            _ms(lambda: bi.execute(cell_sql.format(largest)).fetchall()),
        )
    )
    for group, how, label in (
        (largest, "by_cell", "cold, once"),
        (largest, "by_cell", "warm, once more"),
        (near_50k, "by_cell", "cold, once"),
        (largest, "by_gene", "from the gene-major files, once"),
    ):
        t = time.perf_counter()
        adata = build_db.to_anndata(con, species, cells=f"group_name = '{group}'", read=how)
        out.append(
            (
                f"to_anndata of the Group {group} ({adata.n_obs:,} cells, "
                f"{adata.X.nnz / 1e6:.0f}M non-zeros), read={how}, {label}",
                (time.perf_counter() - t) * 1000,
            )
        )
        del adata
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m build_db.tools.bench_full", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/bench-full"))
    ap.add_argument("--species", default="Macaque", choices=R.SPECIES)
    ap.add_argument("--release", type=Path, help="an existing --scale 1 release (default: OUT/release)")
    ap.add_argument("--skip-build", action="store_true", help="query the store already built under OUT")
    ap.add_argument("--no-scan", action="store_true", help="skip the h5ad scan (67 s at full Macaque)")
    args = ap.parse_args(argv)
    species = args.species
    release = args.release or args.out / "release"
    store = args.out / "store"
    if not (release / R.manifest_path()).exists():
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "build_db",
                "synth",
                str(release),
                "--scale",
                "1",
                "--species",
                species,
                "--quiet",
            ],
            check=True,
        )
        print(f"synth --scale 1 --species {species}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rows: list[tuple[str, str]] = []
    if args.skip_build:  # the store's own count; the build's rows come from the run that built it
        nnz = json.loads((store / "build.json").read_text())["species"][species]["nnz"]
    else:
        floor = plain_read_seconds(release, (species,))
        with CsrReader(release / R.matrix_path(species, "raw")) as m:
            nnz = m.nnz
        rows.append(("single-threaded read of the raw h5ad (data + indices)", f"{floor:.1f} s"))
    rows.insert(0, ("non-zeros", f"{nnz:,}"))
    if not args.skip_build:
        b = measured_build(release, store, species)
        rows += [
            (
                "build, statistics included",
                f"{b['seconds']:.0f} s = {b['seconds'] / floor:.1f}x the read "
                f"({nnz / b['seconds'] / 1e6:.1f} M non-zeros/s)",
            ),
            (
                "  of which merging the statistics (their sums are taken in the sort workers)",
                f"{b['info']['statistics']['merge_seconds']:.0f} s",
            ),
            *(
                (f"  step: {step}", f"{seconds:.0f} s")
                for step, seconds in b["info"].get("step_seconds", {}).items()
            ),
            ("peak memory, all build processes", f"{b['peak_rss'] / 2**30:.2f} GiB"),
            (
                "peak staging disk",
                f"{b['peak_staging'] / 2**30:.1f} GiB ({b['peak_staging'] / nnz:.1f} B/non-zero)",
            ),
        ]
    root = files_root(store)
    for part in ("expression", "expression_by_cell", "aggregates", "tables"):
        size = _du(root / part)
        rows.append((f"store: {part}", f"{size / 2**30:.2f} GiB ({size / nnz:.2f} B/non-zero)"))
    whole = _du(root)
    rows.append(("store: whole snapshot", f"{whole / 2**30:.2f} GiB ({whole / nnz:.2f} B/non-zero)"))
    for label, ms in queries(store, species):
        rows.append((label, f"{ms:,.1f} ms"))
    if not args.no_scan:
        from .scan import mean_log2_by_term

        t = time.perf_counter()
        mean_log2_by_term(release, species, [GENE])
        rows.append(
            (
                f"h5ad scan of the {GENE} x Group question (as the notebooks do)",
                f"{time.perf_counter() - t:.1f} s",
            )
        )
    print(f"### bench-full: {species} at --scale 1\n\n| what | measured |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
