"""`make bench-sql` (run by `make bench` and `make bench-full` too): ad hoc SQL from either side, timed.

    python -m build_db.tools.bench_sql STORE [--species Human] [--json OUT] [--no-chdb] [--release DIR]
        [--only TEXT ...]

A workload of questions written the obvious way on the documented views, half filtered on cells (a term
at each level, a region, a donor, a region within a term, a list of cells, cells gated on a gene's count),
half on genes, and whole-species scans. Each is timed, warm, through
  (a) a plain read-only DuckDB connection to catalog.duckdb, as a BI tool has (the views, as written);
  (b) our routed entry point (`build_db.sql`: the cell-major files or the statistics where they hold the
      answer), with the source it chose;
  (c) the floor: the same engine on the same Parquet files with integer keys, the labels joined after the
      aggregation (hand-written for each question);
  (d) chDB (ClickHouse in-process, PyPI `chdb`, in its own environment `.venv-chdb`) on the same files;
  (e) for the cell-side questions with --release: the h5ad read as a user does today (anndata, backed).
Every method's answer is compared with (a)'s (row count and sums); a difference fails the run (exit 1).
Times are warm medians of up to 5 runs after one warm-up, fewer when one run takes over 20 s (one run
when the warm-up did).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import duckdb

from ..store.paths import files_root

CHDB_ENV = Path(".venv-chdb")
RUNS = 5
SLOW_S = 20.0


@dataclass
class Question:
    name: str
    side: str  # "cells", "genes" or "scan"
    views: str  # as a person writes it on the documented views
    floor: str  # DuckDB on the files, integer keys ({root} is the snapshot folder)
    clickhouse: str  # chDB on the same files
    h5ad: dict | None = None  # the cells to read from the h5ad: {"column": ..., "value": ...}
    times: dict = field(default_factory=dict)
    answers: dict = field(default_factory=dict)
    route: str = ""


def _one(con, sql: str) -> str:
    return str(con.execute(sql).fetchall()[0][0])


def _names(con, species: str) -> dict:
    """The terms, regions, donors, cells and genes the questions ask about, chosen from the store: each
    level's largest term (the largest D1 Subclass), the largest region and donor, 200 cells, DRD1, DRD2,
    PENK, PLP1 and 50 other genes."""

    def first(sql: str) -> str:
        return _one(con, sql.replace("SP", f"species = '{species}'"))

    def most(column: str, extra: str = "") -> str:
        return first(
            f"select {column} from cells where SP and {column} is not null {extra} "
            "group by 1 order by count(*) desc, 1 limit 1"
        )

    q: dict = {level: most(f"{level}_name") for level in ("class", "group", "cluster")}
    q["msn"] = most("subclass_name", "and subclass_name like '%D1%'")
    q["region"] = most("region_of_interest_label")
    q["donor"] = most("donor_label")
    sp = [species]
    q["cells"] = [
        r[0]
        for r in con.execute(
            "select cell_label from cells where species = ? order by hash(cell_label) limit 200", sp
        ).fetchall()
    ]
    q["genes50"] = [
        r[0]
        for r in con.execute(
            "select gene_symbol from genes where species = ? and gene_symbol is not null "
            "group by 1 having count(*) = 1 order by hash(gene_symbol) limit 50",
            sp,
        ).fetchall()
    ]
    for g in ("DRD1", "PENK", "PLP1", "DRD2"):
        q[g] = int(first(f"select gene_index from genes where SP and gene_symbol = '{g}'"))
        q[g, "bucket"] = int(first(f"select gene_bucket from genes where SP and gene_symbol = '{g}'"))
    return q


def _list(values) -> str:
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)


def questions(con, species: str) -> list[Question]:
    """The workload; `{root}` in the floor and chDB forms is the snapshot's folder."""
    n = _names(con, species)
    sp = f"species = '{species}'"
    # the files, for DuckDB (the floor) and for chDB
    by_cell = "{root}/expression_by_cell/species=" + species + "/*/*.parquet"
    by_gene = "{root}/expression/species=" + species + "/*/*.parquet"
    bc, bg = f"read_parquet('{by_cell}')", f"read_parquet('{by_gene}')"
    cells, genes = (
        "read_parquet('{root}/tables/cells.parquet')",
        "read_parquet('{root}/tables/genes.parquet')",
    )
    ch_bc, ch_bg = f"file('{by_cell}', Parquet)", f"file('{by_gene}', Parquet)"
    ch_cells = "file('{root}/tables/cells.parquet', Parquet)"
    ch_genes = "file('{root}/tables/genes.parquet', Parquet)"
    out = []

    def top_of(level: str, name: str) -> Question:
        where = f"{sp} and {level}_name = '{name}'"
        return Question(
            f"top 20 genes of one {level.title()} ({name})",
            "cells",
            f"select gene_symbol, sum(raw_count) as counts from expression_annotated where {where} "
            "group by gene_symbol order by counts desc, gene_symbol limit 20",
            f"with c as (select cell_rank from {cells} where {where}), "
            f"s as (select gene_index, sum(raw_count) as counts from {bc} e "
            "where e.cell_rank in (select cell_rank from c) group by 1) "
            f"select g.gene_symbol, sum(s.counts) as counts from s join {genes} g on g.{sp} "
            "and g.gene_index = s.gene_index group by 1 order by counts desc, 1 limit 20",
            "select g.gene_symbol, sum(s.counts) as counts from (select gene_index, sum(raw_count) as counts "
            f"from {ch_bc} where cell_rank in (select cell_rank from {ch_cells} where {where}) "
            f"group by gene_index) s join (select gene_index, gene_symbol from {ch_genes} where {sp}) g "
            "on g.gene_index = s.gene_index group by g.gene_symbol order by counts desc, g.gene_symbol "
            "limit 20",
            {"column": f"{level}_name", "value": name},
        )

    out += [top_of("class", n["class"]), top_of("subclass", n["msn"]), top_of("group", n["group"])]
    out.append(top_of("cluster", n["cluster"]))
    by_cells = {
        "pseudobulk of one Subclass per donor, every gene": (
            f"subclass_name = '{n['msn']}'",
            "donor_label, gene_index",
        ),
        f"top genes of one region ({n['region']})": (
            f"region_of_interest_label = '{n['region']}'",
            "gene_index",
        ),
        f"genes detected per cell of one donor ({n['donor']})": (
            f"donor_label = '{n['donor']}'",
            "cell_index",
        ),
        "every gene of 200 cells named in a notebook": (
            f"cell_label in ({_list(n['cells'])})",
            "cell_index, gene_index",
        ),
        "a region within a Subclass": (
            f"subclass_name = '{n['msn']}' and region_of_interest_label = '{n['region']}'",
            "gene_index",
        ),
    }
    for name, (where, keys) in by_cells.items():
        ekeys = keys.replace("cell_index", "e.cell_index").replace("gene_index", "e.gene_index")
        chosen = f"select cell_rank, cell_index, donor_label from {{cells}} where {sp} and {where}"
        out.append(
            Question(
                name,
                "cells",
                f"select {keys}, sum(raw_count) as counts, count(*) as n from expression_annotated "
                f"where {sp} and {where} group by {keys}",
                f"with c as ({chosen.format(cells=cells)}) select {ekeys}, sum(raw_count) as counts, "
                f"count(*) as n from {bc} e join c on c.cell_rank = e.cell_rank group by all",
                f"select {ekeys}, sum(raw_count) as counts, count() as n from {ch_bc} e "
                f"join ({chosen.format(cells=ch_cells)}) c on c.cell_rank = e.cell_rank group by {ekeys}",
            )
        )
    drd1 = f"e.gene_index = {n['DRD1']} and e.raw_count >= 3"
    out.append(
        Question(
            "top genes of the cells gated on DRD1 >= 3 counts",
            "cells",
            f"select gene_index, sum(raw_count) as counts from expression_annotated where {sp} and "
            "cell_index in "
            f"(select cell_index from expression_annotated where {sp} and gene_symbol = 'DRD1' and "
            "raw_count >= 3) "
            "group by 1 order by counts desc, 1 limit 20",
            f"with c as (select c.cell_rank from {bg} e join {cells} c on c.{sp} and c.cell_index = "
            "e.cell_index "
            f"where {drd1}) select gene_index, sum(raw_count) as counts from {bc} e where e.cell_rank in "
            "(select cell_rank from c) group by 1 order by counts desc, 1 limit 20",
            f"select gene_index, sum(raw_count) as counts from {ch_bc} where cell_rank in (select "
            "c.cell_rank "
            f"from {ch_bg} e join (select cell_index, cell_rank from {ch_cells} where {sp}) c "
            f"on c.cell_index = e.cell_index where {drd1}) group by gene_index order by counts desc, "
            "gene_index "
            "limit 20",
        )
    )

    def bucket(gene: str, clickhouse: bool = False) -> str:
        """The gene's bucket folder: the floor reads it alone, as the views' join to genes lets DuckDB do."""
        one = "{root}/expression/species=" + species + f"/gene_bucket={n[gene, 'bucket']:04d}/*.parquet"
        return f"file('{one}', Parquet)" if clickhouse else f"read_parquet('{one}')"

    def one_gene(name: str, gene: str, keys: str, measure: str, ch_measure: str, where: str = "") -> Question:
        """A question of one gene's non-zeros, with the cells' columns it needs."""
        i = n[gene]
        bg, ch_bg = bucket(gene), bucket(gene, True)
        needed = ", ".join(sorted({"cell_index", *(k for k in keys.split(", ")), "total_counts"}))
        also = f" and c.{where}" if where else ""
        return Question(
            name,
            "genes",
            f"select {keys}, {measure.replace('LOG2', 'log2_cpm')} from expression_annotated where {sp} and "
            f"gene_symbol = '{gene}'{' and ' + where if where else ''} group by {keys}",
            f"select {', '.join('c.' + k for k in keys.split(', '))}, "
            f"{measure.replace('LOG2', 'log2(e.raw_count / c.total_counts * 1e6 + 1)')} from {bg} e "
            f"join {cells} c on c.{sp} and c.cell_index = e.cell_index where e.gene_index = {i}{also} group "
            "by all",
            f"select {', '.join('c.' + k for k in keys.split(', '))}, "
            f"{ch_measure.replace('LOG2', 'log2(e.raw_count / c.total_counts * 1e6 + 1)')} from {ch_bg} e "
            f"join (select {needed} from {ch_cells} where {sp}{' and ' + where if where else ''}) c "
            f"on c.cell_index = e.cell_index where e.gene_index = {i} group by "
            f"{', '.join('c.' + k for k in keys.split(', '))}",
        )

    counts = "sum(raw_count) as counts, count(*) as n"
    ch_counts = "sum(raw_count) as counts, count() as n"
    out.append(one_gene("one gene x Subclass (DRD1)", "DRD1", "subclass_name", counts, ch_counts))
    out.append(one_gene("one gene x Cluster (DRD2)", "DRD2", "cluster_name", counts, ch_counts))
    means = "avg(LOG2) as mean_expressing, count(*) as n"
    out.append(
        one_gene(
            "one gene across regions (PENK)",
            "PENK",
            "region_of_interest_label",
            means,
            means.replace("count(*)", "count()"),
        )
    )
    out.append(
        one_gene(
            "one gene across donors within a Group (PLP1)",
            "PLP1",
            "donor_label",
            counts,
            ch_counts,
            f"group_name = '{n['group']}'",
        )
    )
    out.append(
        one_gene(
            "per-cell log2 CPM of one gene in one Group (DRD1)",
            "DRD1",
            "cell_label",
            "max(LOG2) as log2_cpm",
            "max(LOG2) as log2_cpm",
            f"group_name = '{n['group']}'",
        )
    )
    d1, d2 = n["DRD1"], n["DRD2"]
    out.append(
        Question(
            "cells expressing both DRD1 and DRD2",
            "genes",
            f"select count(*) as n from (select cell_index from expression_annotated where {sp} and "
            "gene_symbol "
            f"= 'DRD1' intersect select cell_index from expression_annotated where {sp} and gene_symbol = "
            "'DRD2')",
            f"select count(*) as n from (select cell_index from {bucket('DRD1')} where gene_index = {d1} "
            f"intersect select cell_index from {bucket('DRD2')} where gene_index = {d2})",
            f"select count() as n from (select cell_index from {bucket('DRD1', True)} "
            f"where gene_index = {d1} intersect distinct select cell_index from {bucket('DRD2', True)} "
            f"where gene_index = {d2})",
        )
    )
    fifty = f"{sp} and gene_symbol in ({_list(n['genes50'])})"
    out.append(
        Question(
            "50 genes x Subclass",
            "genes",
            f"select gene_symbol, subclass_name, {counts} from expression_annotated where {fifty} group by "
            "1, 2",
            f"with g as (select gene_index, gene_symbol from {genes} where {fifty}), s as (select "
            "e.gene_index, "
            f"c.subclass_name, {counts} from {bg} e join {cells} c on c.{sp} and c.cell_index = e.cell_index "
            "where e.gene_index in (select gene_index from g) group by all) "
            "select g.gene_symbol, s.subclass_name, s.counts, s.n from s join g using (gene_index)",
            f"select g.gene_symbol, c.subclass_name, {ch_counts} from {ch_bg} e join (select gene_index, "
            f"gene_symbol from {ch_genes} where {fifty}) g on g.gene_index = e.gene_index join (select "
            f"cell_index, subclass_name from {ch_cells} where {sp}) c on c.cell_index = e.cell_index "
            "group by g.gene_symbol, c.subclass_name",
        )
    )
    seven = "('SLC17A6', 'SLC32A1', 'PTPRC', 'PLP1', 'AQP4', 'DRD1', 'DRD2')"
    sums = "'{root}/aggregates/term_gene_sums/species=" + species + "/level=Group/*.parquet'"
    measures = (
        "s.sum_log2_cpm / s.n_cells as mean_log2_cpm, s.n_expressing / s.n_cells as fraction_expressing"
    )
    out.append(
        Question(
            "7 genes x Group from the statistics",
            "genes",
            f"select gene_symbol, term_name, mean_log2_cpm, fraction_expressing from term_gene_stats "
            f"where {sp} and level = 'Group' and gene_symbol in {seven}",
            f"select g.gene_symbol, t.term_name, {measures} from read_parquet({sums}) s join {genes} g "
            f"on g.{sp} and g.gene_index = s.gene_index join "
            "read_parquet('{root}/tables/taxonomy_terms.parquet') t "
            f"on t.term_label = s.term_label where g.gene_symbol in {seven}",
            f"select g.gene_symbol, t.term_name, {measures} from file({sums}, Parquet) s join (select "
            f"gene_index, gene_symbol from {ch_genes} where {sp}) g on g.gene_index = s.gene_index join "
            "file('{root}/tables/taxonomy_terms.parquet', Parquet) t on t.term_label = s.term_label "
            f"where g.gene_symbol in {seven}",
        )
    )
    for name, key, files, ch_files, measure in (
        ("total counts per gene", "gene_index", bg, ch_bg, "sum(raw_count) as counts"),
        ("genes detected per cell", "cell_index", bc, ch_bc, "count(*) as n"),
    ):
        out.append(
            Question(
                f"{name} over the species (a whole scan)",
                "scan",
                f"select {key}, {measure} from expression where {sp} group by 1",
                f"select {key}, {measure} from {files} group by 1",
                f"select {key}, {measure.replace('count(*)', 'count()')} from {ch_files} group by {key}",
            )
        )
    return out


def _timed(run: Callable[[], Any]) -> tuple[float, Any]:
    """Warm median (ms): one warm-up, then up to RUNS runs, fewer past SLOW_S seconds in all; a question
    whose warm-up alone takes over SLOW_S is timed by that one run (the files it reads are the ones the
    questions before it read: page-cached by then)."""
    t0 = time.perf_counter()
    answer = run()
    if time.perf_counter() - t0 > SLOW_S:
        return (time.perf_counter() - t0) * 1000, answer
    times: list[float] = []
    while len(times) < RUNS and (sum(times) < SLOW_S or not times):
        t0 = time.perf_counter()
        answer = run()
        times.append(time.perf_counter() - t0)
        if times[-1] > SLOW_S:
            break
    return statistics.median(times) * 1000, answer


def _rows(con, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def _digest(rows: list[tuple]) -> tuple:
    """What answers are compared by: the row count and each numeric column's sum (to 6 significant digits)."""
    sums: list[float] = []
    for row in rows:
        numbers = [float(x) for x in row if isinstance(x, int | float) and not isinstance(x, bool)]
        sums = [a + b for a, b in zip(sums, numbers, strict=False)] if sums else numbers
    return len(rows), tuple(float(f"{s:.6g}") for s in sums)


CHDB_SCRIPT = r"""
import json, statistics, sys, time
import chdb
jobs = json.loads(sys.stdin.read())
out = []
for sql in jobs["queries"]:
    try:
        t0 = time.perf_counter()
        result = chdb.query(sql, "JSONCompact")
        first = time.perf_counter() - t0
        times = [first] if first > jobs["slow"] else []
        while len(times) < jobs["runs"] and (sum(times) < jobs["slow"] or not times):
            t0 = time.perf_counter()
            result = chdb.query(sql, "JSONCompact")
            times.append(time.perf_counter() - t0)
            if times[-1] > jobs["slow"]:
                break
        rows = json.loads(result.bytes())["data"]
        out.append({"ms": statistics.median(times) * 1000, "rows": rows})
    except Exception as e:
        out.append({"error": " ".join(str(e).split())[:300]})
print(json.dumps(out))
"""


def _chdb(sqls: list[str]) -> list[dict] | None:
    python = CHDB_ENV / "bin" / "python"
    if not python.exists():
        return None
    r = subprocess.run(
        [str(python), "-c", CHDB_SCRIPT],
        input=json.dumps({"queries": sqls, "runs": RUNS, "slow": SLOW_S}),
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise SystemExit(
            f"chDB failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
        )
    return json.loads(r.stdout)


def _h5ad_ms(release: Path, con, species: str, column: str, value: str) -> float:
    """A cell-side question as a user answers it today: open the raw h5ad backed (anndata), take the
    term's cells (their labels, here from the store's cells table), read those rows, sum per gene."""
    import anndata as ad
    import numpy as np

    from ..release import layout as R

    labels = [
        r[0]
        for r in con.execute(
            f"select cell_label from cells where species = ? and {column} = ?", [species, value]
        ).fetchall()
    ]
    t0 = time.perf_counter()
    a = ad.read_h5ad(release / R.matrix_path(species, "raw"), backed="r")
    wanted = np.flatnonzero(a.obs_names.isin(labels))
    np.asarray(a.X[wanted].sum(axis=0)).ravel()
    return (time.perf_counter() - t0) * 1000


def measure(
    store: Path, species: str, chdb: bool, release: Path | None, only: list[str] | None = None
) -> dict:
    import build_db

    root = files_root(store)
    plain = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    ours = build_db.connect(store)
    floor = duckdb.connect()
    qs = [q for q in questions(ours, species) if not only or any(o in q.name for o in only)]
    for q in qs:
        q.floor = q.floor.replace("{root}", str(root))
        q.clickhouse = q.clickhouse.replace("{root}", str(root))
        print(f"{q.name} ...", file=sys.stderr)
        q.times["views"], rows = _timed(partial(_rows, plain, q.views))
        q.answers["views"] = _digest(rows)
        q.times["routed"], df = _timed(partial(build_db.sql, ours, q.views))
        q.route = df.attrs["route"]["source"]
        q.answers["routed"] = _digest(list(df.itertuples(index=False, name=None)))
        q.times["floor"], rows = _timed(partial(_rows, floor, q.floor))
        q.answers["floor"] = _digest(rows)
    if chdb:
        results = _chdb([q.clickhouse for q in qs])
        for q, r in zip(qs, results or [], strict=False):
            if "error" in r:
                q.times["chdb"], q.answers["chdb"] = None, ("error", r["error"])
            else:
                q.times["chdb"] = r["ms"]
                q.answers["chdb"] = _digest([tuple(_num(x) for x in row) for row in r["rows"]])
    if release is not None:
        for q in qs:
            if q.h5ad:
                q.times["h5ad"] = _h5ad_ms(release, ours, species, q.h5ad["column"], q.h5ad["value"])
    return {
        "store": str(store),
        "species": species,
        "nnz": int(_one(ours, f"select count(*) from expression_counts where species = '{species}'")),
        "questions": [
            {
                "name": q.name,
                "side": q.side,
                "route": q.route,
                "ms": q.times,
                "answers": q.answers,
                "sql": q.views,
            }
            for q in qs
        ],
    }


def _num(x):
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return x
    return x


def disagreements(m: dict) -> list[str]:
    """Each method whose answer (row count, numeric sums) is not the views' answer."""
    out = []
    for q in m["questions"]:
        want = q["answers"]["views"]
        for method, got in q["answers"].items():
            if got != want:
                out.append(f"{q['name']}: {method} answered {got}, the views {want}")
    return out


def _ms(x) -> str:
    if x is None:
        return "n/a"
    return f"{x / 1000:.2f} s" if x >= 1000 else f"{x:.1f} ms"


def table(m: dict) -> str:
    rows = [
        f"Ad hoc SQL on {m['species']} ({m['nnz']:,} non-zeros), warm medians; x = against the same run's "
        "floor",
        "",
        "| question | side | through the views (plain DuckDB) | routed (`build_db.sql`, source) | floor "
        "(DuckDB, files, integer keys) | chDB on the same files | h5ad (anndata, backed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in m["questions"]:
        t = q["ms"]
        f = t.get("floor")

        def x(v, f=f):
            return f"{_ms(v)} ({v / f:.1f}x)" if v is not None and f else _ms(v)

        rows.append(
            f"| {q['name']} | {q['side']} | {x(t.get('views'))} | {x(t.get('routed'))}, {q['route']} | "
            f"{_ms(f)} | {x(t.get('chdb'))} | {_ms(t.get('h5ad')) if 'h5ad' in t else ''} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--species", default="Human")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-chdb", action="store_true", help="leave out chDB (needs .venv-chdb)")
    ap.add_argument(
        "--only", action="append", help="the questions whose name contains this text (repeatable)"
    )
    ap.add_argument(
        "--release", type=Path, help="the store's release: add the h5ad column for cell questions"
    )
    args = ap.parse_args(argv)
    if not args.no_chdb and not (CHDB_ENV / "bin" / "python").exists():
        raise SystemExit(f"{CHDB_ENV}: missing; make bench-sql installs chDB there (or pass --no-chdb)")
    m = measure(args.store, args.species, not args.no_chdb, args.release, args.only)
    print(table(m))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(m, indent=2, default=str))
    bad = disagreements(m)
    for line in bad:
        print(f"DIFFERENT: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
