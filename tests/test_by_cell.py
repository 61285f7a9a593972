"""The cell-major projection (expression_by_cell): every non-zero of the source, in taxonomy order, and the
cell selections of to_anndata read from it equal to the source matrix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from build_db import connect, to_anndata
from build_db.access import export
from build_db.errors import HmbaError, StoreError
from build_db.release import layout as R
from build_db.store.paths import files_root
from build_db.store.verify import verify_store

SUMS = "count(*), sum(raw_count), sum(cell_index::bigint * raw_count), sum(gene_index::bigint * raw_count)"


@pytest.mark.parametrize("species", R.SPECIES)
def test_every_non_zero_of_the_source_is_in_the_projection(con, source, species):
    src = source[species].X.tocoo()
    by_cell = con.execute(f"select {SUMS} from expression_by_cell where species = ?", [species]).fetchall()[0]
    by_gene = con.execute(f"select {SUMS} from expression_counts where species = ?", [species]).fetchall()[0]
    rows, cols = src.row.astype(np.int64), src.col.astype(np.int64)
    values = src.data.astype(np.int64)
    want = (len(values), values.sum(), (rows * values).sum(), (cols * values).sum())
    assert by_cell == by_gene == tuple(int(x) for x in want)
    # Not just the sums: the same (cell, gene, count) triples.
    differ = con.execute(
        "select count(*) from (select cell_index, gene_index, raw_count from expression_by_cell "
        "where species = $1 except select cell_index, gene_index, raw_count from expression_counts "
        "where species = $1)",
        [species],
    ).fetchall()[0][0]
    assert differ == 0


def test_several_cell_buckets_each_a_range_of_taxonomy_order_sorted_by_cell_then_gene(con, tiny_store):
    root = files_root(tiny_store)
    info = json.loads((root / "build.json").read_text())["species"]
    assert info["Human"]["cell_buckets"] > 1, "the tiny store should need several cell buckets"
    for species in R.SPECIES:
        files = sorted((root / "expression_by_cell" / f"species={species}").glob("*/*.parquet"))
        assert len(files) == info[species]["cell_buckets"]
        previous_max = -1
        for f in files:
            t = pq.read_table(f)
            rank = t.column("cell_rank").to_numpy().astype(np.int64)
            gene = t.column("gene_index").to_numpy().astype(np.int64)
            key = rank * 2**20 + gene
            assert (np.diff(key) > 0).all()  # strictly increasing: sorted, no duplicates
            assert rank.min() > previous_max  # buckets are disjoint ranges, in order
            previous_max = rank.max()


def test_cell_rank_makes_every_term_one_range_and_unassigned_cells_last(con):
    for level in ("neighborhood", "class", "subclass", "group", "cluster"):
        broken = con.execute(
            f"select species, {level}_label, count(*), min(cell_rank), max(cell_rank) from cells "
            f"where {level}_label is not null group by all "
            "having max(cell_rank) - min(cell_rank) + 1 <> count(*)"
        ).fetchall()
        assert broken == [], level
    for species, first_unassigned, last_assigned, n, ranks in con.execute(
        "select species, min(cell_rank) filter (where cluster_label is null), "
        "max(cell_rank) filter (where cluster_label is not null), count(*), count(distinct cell_rank) "
        "from cells group by 1"
    ).fetchall():
        assert first_unassigned == last_assigned + 1 and ranks == n, species
    # The projection's rank is the cells table's, row by row.
    assert (
        con.execute(
            "select count(*) from expression_by_cell e join cells c using (species, cell_index) "
            "where e.cell_rank <> c.cell_rank"
        ).fetchall()[0][0]
        == 0
    )


def _expected(con, source, species, cells, genes=None):
    want = con.execute(
        f"select cell_label, cell_index from cells where species = ? and ({cells}) order by cell_index",
        [species],
    ).df()
    x = source[species].X[want.cell_index.to_numpy()]
    if genes is not None:
        src = source[species]
        x = x[:, [int(np.flatnonzero(src.var.gene_symbol == g)[0]) for g in genes]]
    return want, x


@pytest.mark.parametrize(
    "cells",
    [
        "group_name = 'Oligo OPALIN'",
        "subclass_name is not null and donor_sex = 'Female'",
        "cluster_label is null",  # cells without a cluster, cell_metadata's outsiders included
        "region_of_interest_label is not null and cell_index % 3 = 0",
    ],
)
@pytest.mark.parametrize("read", ["by_cell", "by_gene", "auto"])
def test_to_anndata_of_a_cell_selection_equals_the_source_either_way(con, source, cells, read):
    a = to_anndata(con, "Human", cells=cells, read=read)
    want, x = _expected(con, source, "Human", cells)
    assert list(a.obs_names) == list(want.cell_label) and len(want) > 5
    assert a.X.format == "csr" and a.X.has_sorted_indices
    assert a.X.nnz == x.nnz > 0 and (a.X != x).nnz == 0


def test_a_gene_subset_by_cell_in_small_batches(con, source, monkeypatch):
    monkeypatch.setattr(export, "BATCH_ROWS", 300)  # cells split across batches
    genes = ["PLP1", "DRD1", "AQP4", "GAD1"]
    a = to_anndata(con, "Macaque", genes, "class_name is not null", read="by_cell")
    want, x = _expected(con, source, "Macaque", "class_name is not null", genes)
    assert list(a.obs_names) == list(want.cell_label)
    assert list(a.var.gene_symbol) == genes
    assert a.X.nnz == x.nnz > 0 and (a.X != x).nnz == 0


def test_auto_reads_by_cell_for_all_genes_of_a_term_and_by_gene_for_a_few_genes(con, monkeypatch):
    calls = []
    for name in ("_read_by_cell", "_read_by_gene"):
        real = getattr(export, name)
        monkeypatch.setattr(
            export, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    to_anndata(con, "Human", cells="group_name = 'Astrocyte'")
    to_anndata(con, "Human", ["DRD1"], "group_name is not null")
    to_anndata(con, "Human", cells="cell_index % 10 = 0")  # scattered over the taxonomy: every range read
    assert calls == ["_read_by_cell", "_read_by_gene", "_read_by_gene"]


def test_many_scattered_ranges_are_merged_into_at_most_max_ranges(monkeypatch):
    monkeypatch.setattr(export, "MAX_RANGES", 4)
    ranks = np.array([0, 1, 2, 100, 101, 300, 1000, 1001, 5000, 9000])
    ranges = export._rank_ranges(ranks)
    assert len(ranges) == 4
    covered = np.concatenate([np.arange(a, b + 1) for a, b in ranges])
    assert set(ranks) <= set(covered.tolist())
    assert ranges == sorted(ranges) and ranges[0][0] == 0 and ranges[-1][1] == 9000


def test_bad_read_and_a_store_without_the_projection_are_clear_errors(con, tiny_store, tmp_path):
    with pytest.raises(HmbaError, match=r"read='sideways'; choose auto, by_gene or by_cell"):
        to_anndata(con, "Human", cells="group_name = 'Astrocyte'", read="sideways")
    # A store built before the projection: auto falls back to the gene-major files; by_cell says why not.
    old = tmp_path / "old"
    shutil.copytree(files_root(tiny_store), old, ignore=shutil.ignore_patterns("expression_by_cell"))
    import duckdb

    c = duckdb.connect(str(old / "catalog.duckdb"))
    c.execute("drop view expression_annotated_by_cell")  # views over the cell-major copy, newest first
    c.execute("drop view expression_by_cell")
    c.execute("drop table store_files")  # an older build listed no files either
    c.close()
    old_con = connect(old)
    a = to_anndata(old_con, "Human", cells="group_name = 'Astrocyte'")
    assert a.n_obs > 0
    with pytest.raises(HmbaError, match=r"no expression_by_cell \(built by an older hmba-db\); rebuild"):
        to_anndata(old_con, "Human", cells="group_name = 'Astrocyte'", read="by_cell")
    old_con.close()


def _tamper(path, column, fn):
    t = pq.read_table(path)
    values = t.column(column).to_numpy().copy()
    fn(values)
    t = t.set_column(t.schema.get_field_index(column), column, pa.array(values))
    pq.write_table(t, path)


@pytest.mark.parametrize(
    "column,change,message",
    [
        ("raw_count", lambda v: v.__setitem__(5, v[5] + 1), r"cell bucket \d+: sum of counts"),
        ("cell_rank", lambda v: v.__setitem__(slice(0, 3), v[0:3] + 1), r"has cell_rank \d+ for cell"),
        ("gene_index", lambda v: v.__setitem__(slice(0, 2), v[[1, 0]]), r"is out of order|gene checksum"),
    ],
)
def test_verify_finds_a_damaged_projection(tiny_store, tmp_path, column, change, message):
    copy = tmp_path / "store"
    shutil.copytree(files_root(tiny_store), copy)
    f = sorted((copy / "expression_by_cell" / "species=Marmoset").glob("*/*.parquet"))[0]
    _tamper(f, column, change)
    problems = verify_store(copy, species=["Marmoset"], jobs=1)
    assert any(__import__("re").search(message, p) for p in problems), problems


def test_a_build_without_the_cell_major_copy(tiny_release, source, tmp_path):
    """--no-cell-major: no expression_by_cell files or view, everything else as usual; to_anndata of a
    cell selection reads the gene-major files, and the store verifies, moves and publishes."""
    from click.testing import CliRunner

    from build_db.cli import main
    from build_db.store.publish import publish

    store = tmp_path / "store"
    r = CliRunner().invoke(
        main, ["build", str(tiny_release), str(store), "--species", "Marmoset", "--no-cell-major", "-q"]
    )
    assert r.exit_code == 0, r.output
    root = files_root(store)
    assert not (root / "expression_by_cell").exists()
    info = json.loads((root / "build.json").read_text())
    assert info["parameters"]["cell_major"] is False and info["species"]["Marmoset"]["cell_buckets"] == 0
    steps = [name for name, seconds in info["step_seconds"].items() if seconds >= 0]
    assert steps == [
        "check",
        "scatter:Marmoset",
        "sort:Marmoset",
        "metadata",
        "statistics",
        "catalog",
        "verify",
    ]
    assert verify_store(store) == []
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)  # a moved copy: connect() repairs the views it has, and only those
    with connect(moved) as c:
        assert "expression_by_cell" not in {
            v[0] for v in c.execute("select view_name from duckdb_views()").fetchall()
        }
        a = to_anndata(c, "Marmoset", cells="group_name is not null")
        want = c.execute(
            "select cell_index from cells where species = 'Marmoset' and group_name is not null order by 1"
        ).fetchnumpy()["cell_index"]
    x = source["Marmoset"].X[want]
    assert a.X.nnz == x.nnz > 0 and (a.X != x).nnz == 0
    assert publish(store, "https://example.org/hmba/")["files"][0] == "published.duckdb"


def test_a_truncated_projection_file_is_one_line_from_verify_and_to_anndata(tiny_store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(files_root(tiny_store), copy)
    f = sorted((copy / "expression_by_cell" / "species=Marmoset").glob("*/*.parquet"))[0]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    problems = verify_store(copy, species=["Marmoset"], jobs=1)
    assert any(f"{f} cannot be read" in p and "rebuild the store" in p for p in problems), problems
    assert f"{f}: {f.stat().st_size:,} bytes, the build wrote" in problems[0]
    # A reader stops at connect, naming the file, before any question is asked
    with pytest.raises(StoreError, match=rf"{f}: .* bytes, the build wrote .*run hmba-db verify"):
        connect(copy)
