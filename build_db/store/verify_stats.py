"""`hmba-db verify`, statistics part: the aggregates agree with themselves and with the expression store.

The statistics are 40-90% of a store, so they are checked too, three ways per species:
- additivity: every level's sums equal its children's (every field, every gene), and the region x Group and
  donor x Group sums add up to the Group sums;
- cell counts: each row's n_cells and sum_total_counts are its group's, from the cells table (so every
  row's term is a term of the species), and each row's gene_index is one of the species' genes: the
  *_gene_stats views rely on both (they left-join genes and terms, sql/term_gene_stats.sql);
- recomputation: a sample of genes is summed again from the expression files, per cluster, and must equal
  the Cluster rows (this is what catches a file of another species or build put in place of the right one).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np

from ..release import layout as R
from .catalog import sql_literal as _lit
from .paths import bucket_file, table_file
from .stats import AGGREGATES, FIELDS, FIELDS_SQL, FLOAT_FIELDS, final_file

SAMPLE_GENES = 8  # recomputed per species: the densest gene and a spread of others
RTOL = 1e-9  # float sums over the same values in another order


def _differs(a: str, b: str) -> str:
    """SQL: does any field differ between the row sets a and b (missing rows count as zeros)?"""
    parts = []
    for f in FIELDS:
        x, y = f"coalesce({a}.{f}, 0)", f"coalesce({b}.{f}, 0)"
        if f in FLOAT_FIELDS:
            parts.append(f"abs({x} - {y}) > {RTOL} * greatest(1, abs({x}), abs({y}))")
        else:
            parts.append(f"{x} <> {y}")
    return " or ".join(parts)


def _sums(alias: str) -> str:
    return ", ".join(f"sum({alias}.{f}) as {f}" for f in FIELDS)


def verify_statistics(store: Path, species: str, meta: dict) -> list[str]:
    """Every disagreement in one species' statistics, one line each; [] when they hold (or the store was
    built without statistics)."""
    store = Path(store)
    if not (store / AGGREGATES).exists():
        return []
    files = {lv: final_file(store, "term_gene_sums", species, lv) for lv in R.LEVELS}
    files["region"] = final_file(store, "region_group_gene_sums", species)
    files["donor"] = final_file(store, "donor_group_gene_sums", species)
    missing = [str(p.relative_to(store)) for p in files.values() if not p.exists()]
    if missing:
        return [f"statistics file {missing[0]} is missing ({len(missing)} in all); rebuild the store"]
    con = duckdb.connect(config={"threads": 2})
    try:
        terms = _lit(table_file(store, "taxonomy_terms"))
        cells = _lit(table_file(store, "cells"))
        con.execute(
            f"create temp view cells as select * from read_parquet({cells}) where species = {_lit(species)}"
        )
        problems = _additivity(con, files, terms) + _cell_counts(con, files) + _gene_indexes(con, files, meta)
        problems += _recompute(con, store, species, meta, files["Cluster"])
    except duckdb.Error as e:  # a damaged file: a finding, as verify reports a damaged expression file
        problems = [f"statistics: a file cannot be read ({' '.join(str(e).split())}); rebuild the store"]
    finally:
        con.close()
    return problems


def _first(con, sql: str):
    rows = con.execute(sql).fetchall()
    return rows[0] if rows else None


def _additivity(con, files: dict, terms: str) -> list[str]:
    problems = []
    pairs = [(R.LEVELS[i], R.LEVELS[i + 1]) for i in range(len(R.LEVELS) - 1)]
    for parent, child in pairs:
        bad = _first(
            con,
            f"""with kids as (
                select t.parent_term_label as term_label, s.gene_index, {_sums("s")}
                from read_parquet({_lit(files[child])}) s
                join read_parquet({terms}) t on t.term_label = s.term_label::varchar group by all),
            own as (select term_label::varchar as term_label, gene_index, {", ".join(FIELDS)}
                from read_parquet({_lit(files[parent])}))
            select coalesce(own.term_label, kids.term_label), coalesce(own.gene_index, kids.gene_index)
            from own full join kids using (term_label, gene_index) where {_differs("own", "kids")} limit 1""",
        )
        if bad:
            problems.append(
                f"statistics: {parent} term {bad[0]} gene_index {bad[1]} is not the sum of its {child} "
                f"terms ({files[parent].name} under level={parent}); rebuild the store"
            )
    for name, key in (("region", "region_of_interest_label"), ("donor", "donor_label")):
        bad = _first(
            con,
            f"""with parts as (
                select group_label::varchar as term_label, gene_index, {_sums("s")}
                from read_parquet({_lit(files[name])}) s group by all),
            own as (select term_label::varchar as term_label, gene_index, {", ".join(FIELDS)}
                from read_parquet({_lit(files["Group"])}))
            select coalesce(own.term_label, parts.term_label), coalesce(own.gene_index, parts.gene_index)
            from own full join parts using (term_label, gene_index) where {_differs("own", "parts")}
            limit 1""",
        )
        if bad:
            problems.append(
                f"statistics: Group {bad[0]} gene_index {bad[1]}: the {name} x Group sums (by {key}) do not "
                "add up to the Group's; rebuild the store"
            )
    return problems


def _cell_counts(con, files: dict) -> list[str]:
    problems = []
    for level in R.LEVELS:
        col = f"{level.lower()}_label"
        bad = _first(
            con,
            f"""select s.term_label::varchar, s.gene_index, s.n_cells, c.n
            from read_parquet({_lit(files[level])}) s
            left join (select {col} as term_label, count(*) as n, sum(total_counts) as t from cells
                       where {col} is not null group by 1) c on c.term_label = s.term_label::varchar
            where c.n is null or s.n_cells <> c.n or s.sum_total_counts <> c.t limit 1""",
        )
        if bad:
            problems.append(
                f"statistics: {level} term {bad[0]} (gene_index {bad[1]}) says {bad[2]:,} cells, the cells "
                f"table {bad[3] if bad[3] is None else format(bad[3], ',')}; rebuild the store"
            )
    return problems


def _gene_indexes(con, files: dict, meta: dict) -> list[str]:
    for path in files.values():
        bad = _first(
            con,
            f"select gene_index from read_parquet({_lit(path)}) "
            f"where gene_index < 0 or gene_index >= {int(meta['genes'])} limit 1",
        )
        if bad:
            return [
                f"statistics: gene_index {bad[0]} in {'/'.join(path.parts[-4:])} is not one of the species' "
                f"{meta['genes']:,} genes; rebuild the store"
            ]
    return []


def _sample(con, cluster_file: Path, meta: dict) -> list[int]:
    """The densest gene of the Cluster file and a deterministic spread of others."""
    dense = _first(
        con,
        f"select gene_index from read_parquet({_lit(cluster_file)}) group by 1 "
        "order by sum(n_expressing) desc limit 1",
    )
    rng = np.random.default_rng(meta["genes"])
    picks = {
        int(g) for g in rng.choice(meta["genes"], size=min(meta["genes"], SAMPLE_GENES - 1), replace=False)
    }
    return sorted(picks | ({int(dense[0])} if dense else set()))


def _recompute(con, store: Path, species: str, meta: dict, cluster_file: Path) -> list[str]:
    genes = _sample(con, cluster_file, meta)
    per = meta["genes_per_bucket"]
    buckets = sorted({g // per for g in genes})
    sources = ", ".join(_lit(bucket_file(store, species, k)) for k in buckets)
    in_list = ", ".join(str(g) for g in genes)
    bad = _first(
        con,
        f"""with fresh as (
            select c.cluster_label as term_label, e.gene_index, {FIELDS_SQL}
            from read_parquet([{sources}]) e join cells c using (cell_index)
            where e.gene_index in ({in_list}) and c.cluster_label is not null group by all),
        own as (select term_label::varchar as term_label, gene_index, {", ".join(FIELDS)}
            from read_parquet({_lit(cluster_file)}) where gene_index in ({in_list}))
        select coalesce(own.term_label, fresh.term_label), coalesce(own.gene_index, fresh.gene_index)
        from own full join fresh using (term_label, gene_index) where {_differs("own", "fresh")} limit 1""",
    )
    if bad:
        return [
            f"statistics: cluster {bad[0]} gene_index {bad[1]} differs from the same sums taken from the "
            f"expression files ({cluster_file.relative_to(store)} is not this build's {species} file); "
            "rebuild the store"
        ]
    return []
