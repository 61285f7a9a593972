"""Named analyses: headers, parameters, literal resolution, results against independent computations."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlglot
from click.testing import CliRunner

import build_db
from build_db import analyses, connect, list_queries, run_query
from build_db.access.plots import draw
from build_db.access.queries import QUERIES_DIR, get_query, parse_query_file, render
from build_db.cli import main
from build_db.errors import HmbaError
from build_db.release import layout as R
from build_db.release.synth.model import species_model
from build_db.release.synth.taxonomy import MARKERS, build_taxonomy

REQUIRED = {
    "gene_set_by_level",
    "dotplot",
    "markers",
    "gene_by_region",
    "donor_pseudobulk",
    "cells_per_level",
    "umap_by_gene",
    "gene_set_across_species",
}
FILES = sorted(QUERIES_DIR.glob("*.sql"))


def test_the_library_has_the_analyses_the_issue_asks_for():
    assert REQUIRED <= set(list_queries())
    assert len(FILES) >= 8


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_query_file_has_a_header_and_parses(path):
    q = parse_query_file(path)
    assert q.name == path.stem and q.title and len(q.description) > 40
    assert q.params and all(p.description for p in q.params)
    assert q.plot is not None
    tree = sqlglot.parse_one(q.sql, read="duckdb")
    assert isinstance(tree, sqlglot.exp.Query)
    assert q.example, "a README example (-- example: k=v ...)"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_query_runs_with_defaults_and_example_and_plots(con, path, tmp_path):
    q = parse_query_file(path)
    defaults = run_query(con, q.name)
    assert list(defaults.columns) and "$" not in defaults.attrs["sql"]
    df = run_query(con, q.name, **q.example)
    assert len(df) > 0, f"{q.name} example returns no rows on the tiny store"
    out = draw(df, q.plot, q.title, tmp_path / f"{q.name}.png")
    assert out.stat().st_size > 10_000


def test_genes_are_resolved_to_literals_before_execution(con):
    q = get_query("gene_set_from_expression")
    r = render(con, q, {"genes": "DRD1,PLP1", "species": "Human,Macaque"})
    sql = " ".join(r.sql.split())
    assert "$" not in sql
    assert "species IN ('Human', 'Macaque')" in sql  # the cells of both
    # The expression rows: one SELECT per species with that species' own genes (indexes differ by species).
    for species in ("Human", "Macaque"):
        genes = con.execute(
            "select gene_index, gene_bucket from genes where species = ? and gene_symbol in ('DRD1', 'PLP1')",
            [species],
        ).fetchall()
        indexes = ", ".join(str(i) for i in sorted({g[0] for g in genes}))
        buckets = ", ".join(str(b) for b in sorted({g[1] for g in genes}))
        assert (
            f"species IN ('{species}') AND gene_bucket IN ({buckets}) AND gene_index IN ({indexes})" in sql
        ), species
    assert sql.count("UNION ALL") == 1
    # the selected genes are a literal VALUES list, one row per species and gene
    assert len(re.findall(r"\('(Human|Macaque)', \d+, '(DRD1|PLP1)'", sql)) == 4


def test_statistics_and_expression_store_give_the_same_heatmap(con):
    genes = "DRD1,DRD2,PLP1,AQP4,GFAP"
    for level in ("Class", "Group"):
        a = run_query(con, "gene_set_across_species", genes=genes, level=level)
        b = run_query(con, "gene_set_from_expression", genes=genes, level=level)
        assert len(a) == len(b) > 0
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-12)


def test_gene_set_by_level_equals_mean_expression(con):
    table = analyses.mean_expression(con, "Human", ["DRD1", "PLP1"], "Subclass")
    df = analyses.gene_set_by_level(con, ["DRD1", "PLP1"], "Subclass", "Human")
    wide = df.pivot(index="term_name", columns="gene_symbol", values="mean_log2_cpm")
    np.testing.assert_allclose(wide.loc[table.index, ["DRD1", "PLP1"]], table[["DRD1", "PLP1"]], rtol=1e-9)
    assert list(dict.fromkeys(df.term_name)) == list(table.index)  # taxonomy order


@pytest.mark.parametrize("species", R.SPECIES)
def test_markers_recover_the_planted_markers(con, species):
    tax = build_taxonomy(7)  # the tiny release's seed and gene count (conftest)
    model = species_model(species, 400, tax, 7)
    symbols = model.genes.gene_symbol.to_numpy()
    biggest = con.execute(
        "select term_name, term_label from term_cell_counts where species = ? and level = 'Group' "
        "order by n_cells desc limit 3",
        [species],
    ).fetchall()
    for name, label in biggest:
        gi, group = next((i, g) for i, g in enumerate(tax.groups) if g.term.label == label)
        planted = set(symbols[model.group_markers[gi]])
        planted |= {s for s, (programs, _) in MARKERS.items() if set(programs) & set(group.programs)}
        top = analyses.markers(con, name, "Group", species, n=10, min_fraction=0.1)
        assert len(top) == 10
        hits = sum(s in planted for s in top.gene_symbol)
        assert hits >= 8, (species, name, list(top.gene_symbol))
        assert (top.log2_fold_change >= 1).all() and (top.fraction_in >= 0.1).all()
        assert top.t_statistic.is_monotonic_decreasing


def test_marker_statistics_equal_a_direct_welch_t(con):
    top = analyses.markers(con, "Astrocyte", "Subclass", "Human", n=3, min_fraction=0.1)
    cells = con.execute(
        "select cell_index, subclass_name from cells where species = 'Human' and subclass_name is not null"
    ).df()
    for row in top.itertuples():
        values = con.execute(
            "select e.cell_index, e.log2_cpm from expression e join genes g using (species, gene_index) "
            "where e.species = 'Human' and g.gene_identifier = ?",
            [row.gene_identifier],
        ).df()
        x = cells.merge(values, on="cell_index", how="left").fillna({"log2_cpm": 0.0})
        a = x[x.subclass_name == "Astrocyte"].log2_cpm.to_numpy()
        b = x[x.subclass_name != "Astrocyte"].log2_cpm.to_numpy()
        t = (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert row.t_statistic == pytest.approx(t, rel=1e-9)
        assert row.log2_fold_change == pytest.approx(a.mean() - b.mean(), rel=1e-9)
        assert row.fraction_rest == pytest.approx((b > 0).mean())


def test_donor_pseudobulk_equals_pooled_counts(con):
    df = analyses.donor_pseudobulk(con, ["PLP1"], "Human", min_cells=5)
    assert len(df) > 0
    row = df.iloc[0]
    pooled = con.execute(
        "select sum(coalesce(e.raw_count, 0)) / sum(c.total_counts) * 1e6 from cells c "
        "left join (select cell_index, raw_count from expression e join genes g using (species, gene_index) "
        "  where e.species = 'Human' and g.gene_symbol = 'PLP1') e using (cell_index) "
        "where c.species = 'Human' and c.group_name = ? and c.donor_label = ?",
        [row.group_name, row.donor_label],
    ).fetchall()[0][0]
    assert row.pseudobulk_cpm == pytest.approx(pooled, rel=1e-9)


def test_cells_per_level_adds_up_to_the_assigned_cells(con):
    df = analyses.cells_per_level(con, "Neighborhood")
    assigned = dict(con.execute("select species, count(cluster_label) from cells group by 1").fetchall())
    assert df.groupby("species").n_cells.sum().to_dict() == assigned
    np.testing.assert_allclose(df.groupby("species").share_of_species.sum(), 1.0)


def test_umap_by_gene_gives_every_cell_its_value(con):
    df = analyses.umap_by_gene(con, "PLP1", "Marmoset")
    n = con.execute("select count(*) from cells where species = 'Marmoset' and x is not null").fetchall()[0][
        0
    ]
    assert len(df) == n
    assert (df.log2_cpm > 0).sum() == con.execute(
        "select count(*) from expression e join genes g using (species, gene_index) join cells c "
        "using (species, cell_index) "
        "where e.species = 'Marmoset' and g.gene_symbol = 'PLP1' and c.x is not null"
    ).fetchall()[0][0]
    assert len(analyses.umap_by_gene(con, "PLP1", "Marmoset", max_cells=7)) == 7


@pytest.mark.parametrize(
    "params,message",
    [
        ({"genes": "DRD1,DRDD2"}, r"no gene with symbol or identifier DRDD2 \(closest: DRD2"),
        ({"level": "Grop"}, r"--param level=Grop: unknown taxonomy level; choose from Neighborhood"),
        ({"species": "Mouse"}, r"--param species=Mouse: unknown species"),
        ({"colour": "red"}, r"has no parameter colour; it takes: species, genes, level"),
    ],
)
def test_bad_parameters_are_one_line_errors(con, params, message):
    with pytest.raises(HmbaError, match=message):
        run_query(con, "gene_set_by_level", **params)


def test_more_parameter_errors(con):
    with pytest.raises(HmbaError, match=r"--param n=many: expected an integer"):
        run_query(con, "markers", n="many")
    with pytest.raises(HmbaError, match=r"no taxonomy term at level Subclass .*\(closest: Astrocyte"):
        run_query(con, "markers", level="Subclass", term="Astrocite")
    with pytest.raises(HmbaError, match=r"give exactly one gene"):
        run_query(con, "umap_by_gene", gene="DRD1,DRD2")
    with pytest.raises(HmbaError, match=r"no query named 'marker'; did you mean markers"):
        run_query(con, "marker")


def test_a_symbol_naming_several_genes_says_so_and_identifiers_choose(con):
    df = run_query(con, "gene_set_by_level", genes="MATR3", level="Class")
    (note,) = df.attrs["notes"]
    m = re.match(r"Human: MATR3 names 2 genes \((ENSG\d+), (ENSG\d+)\); using (ENSG\d+)", note)
    assert m and m[3] == m[1]
    second = m[2]
    by_id = run_query(con, "gene_set_by_level", genes=second, level="Class")
    assert by_id.gene_symbol.unique().tolist() == ["MATR3"] and not by_id.attrs["notes"]
    assert not np.allclose(by_id.mean_log2_cpm, df.mean_log2_cpm)


def test_a_species_not_built_is_an_error(tiny_release, tmp_path):
    from build_db import build

    store = build(tiny_release, tmp_path / "s", species=("Marmoset",), quiet=True).store
    with pytest.raises(HmbaError, match=r"Human is not in this store \(built: Marmoset\)"):
        run_query(store, "gene_set_by_level")
    assert set(run_query(store, "cells_per_level").species) == {"Marmoset"}


def test_bad_query_files_are_reported(tmp_path):
    bad = tmp_path / "x.sql"
    bad.write_text("-- name: x\n-- title: t\n-- description: d\n-- param n int = 1: n\nselect $m")
    with pytest.raises(HmbaError, match=r"x.sql: \$m not declared"):
        parse_query_file(bad)
    bad.write_text("-- name: y\n-- title: t\n-- description: d\nselect 1")
    with pytest.raises(HmbaError, match=r"differs from the file name"):
        parse_query_file(bad)
    bad.write_text("-- name: x\n-- title: t\n-- description: d\n-- param n integer: n\nselect 1")
    with pytest.raises(HmbaError, match=r"bad parameter line"):
        parse_query_file(bad)
    bad.write_text("-- name: x\n-- title: t\n-- description: d\nselect from where")
    with pytest.raises(HmbaError, match=r"does not parse"):
        parse_query_file(bad)


def test_cli_lists_runs_formats_and_plots(tiny_store, tmp_path):
    runner = CliRunner()
    listed = runner.invoke(main, ["queries"])
    assert listed.exit_code == 0
    assert all(name in listed.output for name in REQUIRED)
    shown = runner.invoke(main, ["queries", "markers"])
    assert shown.exit_code == 0 and "--param term=" in shown.output and "with split as" not in shown.output
    png = tmp_path / "m.png"
    r = runner.invoke(
        main,
        [
            "query",
            str(tiny_store),
            "markers",
            "-p",
            "level=Subclass",
            "-p",
            "term=Astrocyte",
            "--format",
            "csv",
            "--plot",
            str(png),
        ],
    )
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("gene_symbol,gene_identifier,mean_in") and len(lines) > 3
    assert png.stat().st_size > 10_000
    sql = runner.invoke(main, ["query", str(tiny_store), "umap_by_gene", "--show-sql"])
    assert sql.exit_code == 0 and "gene_bucket IN (" in sql.stdout
    bad = runner.invoke(main, ["query", str(tiny_store), "markers", "-p", "n"])
    assert bad.exit_code != 0 and "write NAME=VALUE" in bad.output
    bad = runner.invoke(main, ["query", str(tiny_store), "markers", "-p", "level=Grp"])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "unknown taxonomy level" in bad.output


def test_readme_shows_every_query_with_an_example():
    readme = (Path(__file__).resolve().parents[1] / "docs" / "analyses.md").read_text()
    for q in list_queries().values():
        assert f"hmba-db query data/demo-store {q.name}" in readme, q.name


def test_symbols_ignore_case_and_one_gene_may_be_a_string(tiny_store):
    from build_db.analyses import mean_expression

    con = connect(tiny_store)
    exact = mean_expression(con, "Human", ["DRD1"], "Class")
    assert mean_expression(con, "Human", "drd1", "Class").equals(exact)  # a string, any case
    with pytest.raises(
        HmbaError, match=r"genes: no gene with symbol or identifier drd7 \(closest: DRD\d, DRD\d\) in Human"
    ):
        mean_expression(con, "Human", ["drd7"], "Class")
    upper = run_query(con, "gene_set_by_level", genes="PLP1,DRD2", level="Class", species="Human")
    lower = run_query(con, "gene_set_by_level", genes="plp1,Drd2", level="Class", species="Human")
    pd.testing.assert_frame_equal(upper, lower)


def test_species_and_levels_ignore_case_in_python_too(tiny_store):
    """`mean_expression(con, "human", level="subclass")` failed where the CLI took any case."""
    from build_db.analyses import mean_expression

    con = connect(tiny_store)
    exact = mean_expression(con, "Human", ["DRD1"], "Subclass")
    assert mean_expression(con, "human", ["DRD1"], level="subclass").equals(exact)
    with pytest.raises(HmbaError, match=r"species=Mouse: unknown species; choose from Human, Macaque"):
        mean_expression(con, "Mouse", ["DRD1"])
    with pytest.raises(HmbaError, match=r"level=Grop: unknown taxonomy level; choose from Neighborhood"):
        mean_expression(con, "Human", ["DRD1"], level="Grop")
    assert build_db.to_anndata(con, "marmoset", genes=["PLP1"]).n_vars == 1


def test_dotplot_within_one_term_is_its_children(con):
    """The drill-down: within a Subclass, the Group level's terms are its children, scaled among them."""
    whole = run_query(con, "dotplot", species="Human", genes="DRD1,PLP1", level="Group")
    inside = run_query(con, "dotplot", species="Human", genes="DRD1,PLP1", level="Group", within="STR D1 MSN")
    children = {
        r[0]
        for r in con.execute(
            "select term_name from taxonomy_terms where level = 'Group' and parent_term_name = 'STR D1 MSN'"
        ).fetchall()
    }
    assert 0 < len(set(inside.term_name)) and set(inside.term_name) <= children
    assert set(inside.term_name) == children & set(whole.term_name)
    cols = ["term_name", "gene_symbol", "mean_log2_cpm", "fraction_expressing", "n_cells"]
    kept = whole[whole.term_name.isin(children)][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(inside[cols].reset_index(drop=True), kept)
    assert inside.groupby("gene_symbol").scaled_mean.max().max() == 1.0  # scaled among the shown terms
    with pytest.raises(HmbaError, match=r"--param within=Oligo OPALIN: no taxonomy term at level Subclass"):
        run_query(con, "dotplot", level="Group", within="Oligo OPALIN")  # a Group, not a Subclass
    with pytest.raises(HmbaError, match=r"no level lies above Neighborhood; give within=all"):
        run_query(con, "dotplot", level="Neighborhood", within="Astrocyte")


def test_gene_in_term_equals_the_cells_rows(con):
    """Per region and donor, from the Group statistics (a Class) and from the gene's rows (a Cluster), each
    equal to the mean over the term's cells computed here from expression and cells."""
    cluster = con.execute(
        "select cluster_label from cells where species = 'Human' and class_name = 'OPC-Oligo' "
        "group by 1 order by count(*) desc limit 1"
    ).fetchall()[0][0]
    for level, term, column in (("Class", "OPC-Oligo", "class_name"), ("Cluster", cluster, "cluster_label")):
        got = run_query(con, "gene_in_term", species="Human", gene="PLP1", level=level, term=term)
        want = con.execute(
            f"""
            select 'region' as dimension, c.region_of_interest_label as label, count(*) as n_cells,
                sum(coalesce(e.log2_cpm, 0)) / count(*) as mean, count(e.cell_index) / count(*) as fraction
            from cells c left join (select cell_index, log2_cpm from expression e join genes g
                using (species, gene_index) where e.species = 'Human' and g.gene_symbol = 'PLP1') e
                using (cell_index)
            where c.species = 'Human' and c.{column} = ? group by all
            union all
            select 'donor', c.donor_label, count(*), sum(coalesce(e.log2_cpm, 0)) / count(*),
                count(e.cell_index) / count(*)
            from cells c left join (select cell_index, log2_cpm from expression e join genes g
                using (species, gene_index) where e.species = 'Human' and g.gene_symbol = 'PLP1') e
                using (cell_index)
            where c.species = 'Human' and c.{column} = ? group by all
            """,
            [term, term],
        ).df()
        merged = got.merge(want, on=["dimension", "label"], suffixes=("", "_want"))
        assert len(merged) == len(got) == len(want) > 0
        assert (merged.n_cells == merged.n_cells_want).all()
        np.testing.assert_allclose(merged.mean_log2_cpm, merged["mean"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(merged.fraction_expressing, merged.fraction, rtol=1e-12)
