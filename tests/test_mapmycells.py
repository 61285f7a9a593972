"""MapMyCells references from the store: the arrays equal the statistics (and, for a cell subset, a direct
computation from the source matrix), the tree is consistent, the JSON is in the tool's shapes."""

from __future__ import annotations

import json
import re

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from build_db import connect
from build_db.access.mapmycells import export_mapmycells
from build_db.cli import main
from build_db.errors import HmbaError
from build_db.release import layout as R

LEVEL_KEYS = [R.LEVEL_LABELS[lv] for lv in R.LEVELS]


def _read(path):
    with h5py.File(path / "precomputed_stats.h5", "r") as f:
        meta = {
            k: json.loads(f[k][()].decode("utf-8"))
            for k in ("metadata", "cluster_to_row", "col_names", "taxonomy_tree")
        }
        arrays = {k: f[k][...] for k in ("n_cells", "sum", "sumsq", "gt0", "gt1", "ge1")}
    return meta, arrays


@pytest.fixture(scope="module")
def whole(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("mmc") / "human"
    export_mapmycells(tiny_store, out, "Human")
    return out


def test_arrays_equal_the_statistics(tiny_store, whole):
    meta, a = _read(whole)
    con = connect(tiny_store)
    genes = [
        r[0]
        for r in con.execute(
            "select gene_identifier from genes where species = 'Human' order by gene_index"
        ).fetchall()
    ]
    assert meta["col_names"] == genes
    counts = dict(
        con.execute(
            "select term_label, n_cells from term_cell_counts where species = 'Human' and level = 'Cluster'"
        ).fetchall()
    )
    rows = meta["cluster_to_row"]
    assert set(rows) == set(counts) and sorted(rows.values()) == list(range(len(rows)))
    assert [counts[c] for c in sorted(rows, key=rows.get)] == a["n_cells"].tolist()
    sums = con.execute(
        "select term_label, gene_index, sum_log2_cpm, sumsq_log2_cpm, n_expressing, n_cpm_gt_1, n_cpm_ge_1 "
        "from term_gene_sums where species = 'Human' and level = 'Cluster'"
    ).df()
    r = sums.term_label.map(rows).to_numpy()
    g = sums.gene_index.to_numpy()
    np.testing.assert_array_equal(a["sum"][r, g], sums.sum_log2_cpm)
    np.testing.assert_array_equal(a["sumsq"][r, g], sums.sumsq_log2_cpm)
    for name, col in (("gt0", "n_expressing"), ("gt1", "n_cpm_gt_1"), ("ge1", "n_cpm_ge_1")):
        np.testing.assert_array_equal(a[name][r, g], sums[col])
        assert a[name].dtype == np.int64 and a[name].sum() == sums[col].sum()  # zeros elsewhere
    assert a["sum"].dtype == np.float64 and a["n_cells"].dtype == np.int64
    assert meta["metadata"]["build_id"] and meta["metadata"]["selection"] == {"cells": None, "min_cells": 1}


def test_the_tree_is_consistent(whole):
    meta, _ = _read(whole)
    tree = meta["taxonomy_tree"]
    assert tree["hierarchy"] == LEVEL_KEYS
    assert set(tree[LEVEL_KEYS[-1]]) == set(meta["cluster_to_row"])
    assert all(v == [] for v in tree[LEVEL_KEYS[-1]].values())
    for parent, child in zip(LEVEL_KEYS, LEVEL_KEYS[1:], strict=False):
        kids = [c for cs in tree[parent].values() for c in cs]
        assert sorted(kids) == sorted(tree[child]) and len(kids) == len(set(kids))  # a tree, every node once
    assert tree["hierarchy_mapper"][LEVEL_KEYS[3]] == "Group"
    names = {v["name"] for v in tree["name_mapper"][LEVEL_KEYS[3]].values()}
    assert "Oligo OPALIN" in names


def test_name_mapper_is_the_tools_shape(whole, tiny_release):
    """cell_type_mapper's own tree (TaxonomyTree.from_data_release) maps [level][label] to the term's name
    (cluster_annotation_term_name of cluster_to_cluster_annotation_membership.csv) and, for clusters, the
    alias (its cluster_alias): its CSV output prints them as <Level>_name and Cluster_alias. Built here from
    the release's file as the tool builds it."""
    meta, _ = _read(whole)
    mapper = meta["taxonomy_tree"]["name_mapper"]
    membership = pd.read_csv(tiny_release / R.CLUSTER_MEMBERSHIP.relative_path(), dtype=str)
    expected: dict = {}
    for r in membership.itertuples():
        entry = expected.setdefault(r.cluster_annotation_term_set_label, {}).setdefault(
            r.cluster_annotation_term_label, {"name": r.cluster_annotation_term_name}
        )
        if r.cluster_annotation_term_set_label == LEVEL_KEYS[-1]:
            entry["alias"] = r.cluster_alias
    assert list(mapper) == LEVEL_KEYS
    for level in LEVEL_KEYS:
        for label, entry in mapper[level].items():
            assert set(entry) == {"name", "alias"}
            assert entry["name"] == expected[level][label]["name"]
            # The cluster's alias is the release's; the other levels have none, and the tool's
            # label_to_name(level, label, name_key="alias") answers the label for them: so do we.
            assert entry["alias"] == expected[level][label].get("alias", label)
    leaf = mapper[LEVEL_KEYS[-1]]
    assert all(re.fullmatch(r"Human-\d+", e["alias"]) for e in leaf.values())
    assert set(leaf) == set(meta["cluster_to_row"])


def test_markers_per_node(tiny_store, whole, tmp_path):
    meta, _ = _read(whole)
    tree = meta["taxonomy_tree"]
    default = json.loads((whole / "query_markers.json").read_text())
    ref = export_mapmycells(tiny_store, tmp_path / "n", "Human", markers_per_node=60)
    many = json.loads((tmp_path / "n" / "query_markers.json").read_text())
    assert set(many) == set(default)
    assert len(many["None"]) == 60 > len(default["None"])  # asked for more at the root, got them
    for key, genes in many.items():
        assert len(genes) == len(set(genes)) <= 60
        if not default[key]:
            assert genes == []  # a node with one child has nothing to choose either way
    # Taken in turn from the children's rankings: each child's own best genes come first, so every
    # per-child marker of the default (each child's top 10) is among a node's 60 when 60 >= 10 children.
    for key, genes in many.items():
        level, _, node = key.partition("/")
        n_children = len(tree[LEVEL_KEYS[0]]) if key == "None" else len(tree[level][node])
        if n_children * 10 <= 60:
            assert set(default[key]) <= set(genes), key
    assert ref.markers_by_node == many
    assert "60 marker genes at the root" in ref.markers_summary()
    with h5py.File(tmp_path / "n" / "precomputed_stats.h5") as f:
        assert json.loads(f["metadata"][()].decode())["markers"] == {"per_node": 60}
    r = CliRunner().invoke(
        main,
        [
            "export",
            "mapmycells",
            str(tiny_store),
            str(tmp_path / "c"),
            "--species",
            "Human",
            "--markers-per-node",
            "0",
        ],
    )
    assert r.exit_code == 2 and "--markers-per-node" in r.output
    r = CliRunner().invoke(
        main,
        [
            "export",
            "mapmycells",
            str(tiny_store),
            str(tmp_path / "c"),
            "--species",
            "Human",
            "--markers-per-node",
            "5",
            "--markers-per-child",
            "3",
        ],
    )
    assert r.exit_code == 2 and "not both" in r.output
    r = CliRunner().invoke(
        main,
        [
            "export",
            "mapmycells",
            str(tiny_store),
            str(tmp_path / "c"),
            "--species",
            "Human",
            "--markers-per-node",
            "25",
        ],
    )
    assert r.exit_code == 0 and "25 marker genes at the root" in r.output, r.output


def test_query_markers_are_in_the_tools_shape(whole):
    meta, _ = _read(whole)
    tree = meta["taxonomy_tree"]
    markers = json.loads((whole / "query_markers.json").read_text())
    parents = {"None"} | {f"{k}/{n}" for k in LEVEL_KEYS[:-1] for n in tree[k]}
    assert set(markers) == parents
    genes = set(meta["col_names"])
    assert all(set(v) <= genes for v in markers.values())
    assert len(markers["None"]) >= 10  # the four Neighborhoods get genes to tell them apart
    single = [k for k in parents - {"None"} if len(tree[k.split("/")[0]][k.split("/")[1]]) == 1]
    assert all(markers[k] == [] for k in single)


def test_a_region_subset_equals_the_source_matrix(tiny_store, tiny_release, tmp_path):
    con = connect(tiny_store)
    (region,) = con.execute(
        "select region_of_interest_label from cells where species = 'Macaque' and cluster_label is not null "
        "group by 1 order by count(*) desc limit 1"
    ).fetchall()[0]
    ref = export_mapmycells(
        tiny_store, tmp_path / "r", "Macaque", cells=f"region_of_interest_label = '{region}'"
    )
    meta, a = _read(tmp_path / "r")
    assert ref.source == "expression store" and meta["metadata"]["selection"]["cells"].endswith(f"'{region}'")
    # The same sums straight from the release's raw matrix.
    raw = ad.read_h5ad(tiny_release / R.matrix_path("Macaque", "raw"))
    x = raw.X.tocsr().astype(np.float64)
    totals = np.asarray(x.sum(axis=1)).ravel()
    chosen = con.execute(
        "select cell_label, cluster_label from cells where species = 'Macaque' and cluster_label is not null "
        f"and region_of_interest_label = '{region}'"
    ).df()
    rows = pd.Index(raw.obs_names).get_indexer(chosen.cell_label)
    want = {k: np.zeros_like(a[k], dtype=np.float64) for k in ("sum", "sumsq", "gt0", "gt1", "ge1")}
    n = np.zeros(len(meta["cluster_to_row"]), dtype=np.int64)
    for row, cluster in zip(rows, chosen.cluster_label, strict=True):
        i = meta["cluster_to_row"][cluster]
        n[i] += 1
        cell = x[row]
        v = np.log2(cell.data / totals[row] * 1e6 + 1)
        cpm = cell.data * 1e6 / totals[row]
        want["sum"][i, cell.indices] += v
        want["sumsq"][i, cell.indices] += v * v
        want["gt0"][i, cell.indices] += 1
        want["gt1"][i, cell.indices] += cpm > 1
        want["ge1"][i, cell.indices] += cpm >= 1
    np.testing.assert_array_equal(a["n_cells"], n)
    np.testing.assert_allclose(a["sum"], want["sum"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a["sumsq"], want["sumsq"], rtol=1e-9, atol=1e-9)
    for k in ("gt0", "gt1", "ge1"):
        np.testing.assert_array_equal(a[k], want[k])
    whole = export_mapmycells(tiny_store, tmp_path / "w", "Macaque")
    assert len(ref.clusters) < len(whole.clusters) and ref.n_cells.sum() < whole.n_cells.sum()


def test_min_cells_and_bad_input(tiny_store, tmp_path):
    ref = export_mapmycells(tiny_store, tmp_path / "m", "Marmoset", min_cells=3)
    assert ref.n_cells.min() >= 3
    with pytest.raises(HmbaError, match="no Marmoset cluster has 100000 or more cells"):
        export_mapmycells(tiny_store, tmp_path / "x", "Marmoset", min_cells=100_000)
    runner = CliRunner()
    base = ["export", "mapmycells", str(tiny_store), str(tmp_path / "y")]
    r = runner.invoke(main, [*base, "--species", "Dog"])
    assert (
        r.exit_code == 1 and "species 'Dog' is not in this store; it has Human, Macaque, Marmoset" in r.output
    )
    r = runner.invoke(main, [*base, "--species", "Human", "--cells", "no_such_column = 1"])
    assert (
        r.exit_code == 1
        and "the cells table has no column 'no_such_column'" in r.output
        and "Traceback" not in r.output
    )
    r = runner.invoke(main, [*base, "--species", "human"])
    assert r.exit_code == 0 and "clusters x 400 genes" in r.output and "from the statistics" in r.output


def test_an_existing_reference_is_replaced_only_with_force(tiny_store, tmp_path):
    """An export into a folder that holds a reference refused without --force (it overwrote it before);
    a folder holding anything else is never written into; a failed export leaves the old reference whole."""
    out = tmp_path / "ref"
    first = export_mapmycells(tiny_store, out, "Marmoset")
    before = (out / first.stats.name).read_bytes()
    runner = CliRunner()
    base = ["export", "mapmycells", str(tiny_store), str(out), "--species", "Marmoset", "--min-cells", "3"]
    r = runner.invoke(main, base)
    assert r.exit_code == 1 and "holds a reference already" in r.output and "--force" in r.output
    assert (out / first.stats.name).read_bytes() == before
    r = runner.invoke(main, [*base[:-2], "--species", "Dog", "--force"])
    assert r.exit_code == 1 and (out / first.stats.name).read_bytes() == before  # failed: old one kept
    r = runner.invoke(main, [*base, "--force"])
    assert r.exit_code == 0, r.output
    assert (out / first.stats.name).read_bytes() != before and sorted(
        p.name for p in out.iterdir()
    ) == sorted([first.stats.name, first.markers.name])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "lab-notes.txt").write_text("keep me")
    r = runner.invoke(
        main, ["export", "mapmycells", str(tiny_store), str(mine), "--species", "Marmoset", "--force"]
    )
    assert r.exit_code == 1 and "lab-notes.txt, which are not a reference of ours" in r.output
    assert (mine / "lab-notes.txt").read_text() == "keep me"
