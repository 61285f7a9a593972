"""The synthetic release has exactly docs/release.md's layout, its invariants and its quirks."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

from build_db.release import layout as R
from build_db.release.cache import CACHE_FILES
from build_db.release.check import check_release
from build_db.release.manifest import md5_file, ours, read_manifest
from build_db.release.synth import synth
from build_db.release.synth.model import sample_counts, species_model
from build_db.release.synth.taxonomy import MARKERS, build_taxonomy


def read(release: Path, spec: R.CsvSpec) -> pd.DataFrame:
    return pd.read_csv(release / spec.relative_path(), dtype=str, keep_default_na=False)


def test_passes_check(tiny_release):
    report = check_release(tiny_release, md5=True)
    assert report.problems == []
    assert report.files == 6 + len(R.ALL_CSVS)


MAPMYCELLS = {
    f"mapmycells/{R.TAXONOMY_DIR}/20250630/precomputed_stats.HMBA.BG.2025-08-04.h5",
    f"mapmycells/{R.TAXONOMY_DIR}/20250630/query_markers.HMBA.BG.2025-08-04.json",
}


def test_tree_is_the_bucket_layout(tiny_release):
    files = {str(p.relative_to(tiny_release)) for p in tiny_release.rglob("*") if p.is_file()}
    expected = {R.manifest_path()} | {s.relative_path() for s in R.ALL_CSVS} | MAPMYCELLS
    expected |= {R.matrix_path(s, k) for s in R.SPECIES for k in R.MATRIX_KINDS}
    assert set(CACHE_FILES) <= files  # the download cache's records (test_synthetic_release_is_a_cache)
    files -= set(CACHE_FILES)
    ours = {f for f in files if f.split("/")[1] in R.DIRECTORIES or f.startswith("releases/")}
    assert ours == expected
    assert "expression_matrices/HMBA-10xMultiome-BG/20250630/HMBA-10xMultiome-BG-Human-raw.h5ad" in files
    # The bucket around it: other datasets with our stems, other versions, a nested file.
    others = files - ours
    assert {f.split("/")[1] for f in others} == {"HMBA-10xMultiome-BG-Aligned", "WMB-10X", "WMB-taxonomy"}
    assert "metadata/WMB-10X/20231215/views/cell_metadata_with_cluster_annotation.csv" in others
    assert {f.rsplit("/", 1)[1] for f in others} >= {
        "cell_metadata.csv",
        "donor.csv",
        "gene.csv",
        "cluster.csv",
    }


def test_release_only_has_our_directories(tmp_path):
    out = synth(
        tmp_path / "r", scale=0.0002, genes=200, quiet=True, species=("Marmoset",), bucket_shape=False
    )
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - set(CACHE_FILES)
    assert {f.split("/")[1] for f in files if not f.startswith("releases/")} == {
        R.EXPRESSION_DIR,
        R.TAXONOMY_DIR,
    }
    assert not any(f.startswith("mapmycells/") for f in files)
    report = check_release(out)
    assert report.ok and report.cells_outside_metadata == {"Marmoset": 0}


def test_manifest_lists_every_file_with_size_and_md5(tiny_release):
    data, entries = read_manifest(tiny_release)
    assert data["version"] == "20250630" and data["resource_uri"] == "s3://allen-brain-cell-atlas/"
    on_disk = [
        p
        for p in tiny_release.rglob("*")
        if p.is_file() and p.name != "manifest.json" and p.name not in CACHE_FILES
    ]
    assert len(entries) == len(on_disk) and len(ours(entries)) == 6 + len(R.ALL_CSVS) + len(MAPMYCELLS)
    wmb = data["directory_listing"]["WMB-10X"]["directories"]["metadata"]
    assert wmb["version"] == "20231215" and wmb["relative_path"] == "metadata/WMB-10X/20231215"
    for e in entries:
        path = tiny_release / e.relative_path
        assert e.size == path.stat().st_size
        assert e.file_hash == md5_file(path)
        assert e.url == "https://allen-brain-cell-atlas.s3.us-west-2.amazonaws.com/" + e.relative_path
    human = data["file_listing"]["HMBA-10xMultiome-BG"]["expression_matrices"]["HMBA-10xMultiome-BG-Human"]
    assert set(human) == {"raw", "log2"}
    assert human["raw"]["files"]["h5ad"]["relative_path"] == R.matrix_path("Human", "raw")
    meta = data["file_listing"]["HMBA-10xMultiome-BG"]["metadata"]["cell_metadata"]
    assert meta["files"]["csv"]["relative_path"] == R.metadata_path("cell_metadata")
    listing = data["directory_listing"]["HMBA-10xMultiome-BG"]["directories"]["expression_matrices"]
    assert listing["total_size"] == sum(
        e.size for e in entries if e.kind == "expression_matrices" and e.directory == R.EXPRESSION_DIR
    )


@pytest.mark.parametrize("spec", R.ALL_CSVS, ids=lambda s: s.name)
def test_csv_header_is_exact(tiny_release, spec):
    with open(tiny_release / spec.relative_path(), newline="") as f:
        assert tuple(next(csv.reader(f))) == spec.columns


@pytest.mark.parametrize("spec", R.ALL_CSVS, ids=lambda s: s.name)
def test_keys_are_unique(tiny_release, spec):
    df = read(tiny_release, spec)
    assert len(df) > 0
    assert not df.duplicated(list(spec.key)).any()


def test_foreign_keys_resolve(tiny_release):
    cells = read(tiny_release, R.CELL_METADATA)
    donors = read(tiny_release, R.DONOR)
    libs = read(tiny_release, R.LIBRARY)
    assert cells.donor_label.isin(donors.donor_label).all()
    assert libs.donor_label.isin(donors.donor_label).all()
    joined = cells.merge(libs, on="library_label", suffixes=("", "_lib"), validate="many_to_one")
    assert len(joined) == len(cells)
    # Joining cell to library duplicates donor_label and barcoded_cell_sample_label: they must agree.
    assert (joined.donor_label == joined.donor_label_lib).all()
    assert (joined.barcoded_cell_sample_label == joined.barcoded_cell_sample_label_lib).all()
    assert (cells.cell_label == cells.cell_barcode + "-" + cells.barcoded_cell_sample_label).all()
    assert libs.barcoded_cell_sample_label.is_unique

    members = read(tiny_release, R.CELL_MEMBERSHIP)
    clusters = read(tiny_release, R.CLUSTER)
    assert members.cell_label.isin(cells.cell_label).all()
    m = members.merge(
        clusters, left_on="cluster_label", right_on="label", suffixes=("", "_c"), validate="many_to_one"
    )
    assert len(m) == len(members) and (m.cluster_alias == m.cluster_alias_c).all()
    emb = read(tiny_release, R.EMBEDDING)
    assert set(emb.cell_label) <= set(cells.cell_label)


def test_taxonomy_sizes_and_tree(tiny_release):
    terms = read(tiny_release, R.TERM)
    sets = read(tiny_release, R.TERM_SET)
    assert list(sets.name) == list(R.LEVELS)
    counts = terms.groupby("cluster_annotation_term_set_name").size().to_dict()
    assert counts == {"Neighborhood": 4, "Class": 12, "Subclass": 36, "Group": 61, "Cluster": 1435}
    by_label = terms.set_index("label")
    for _, t in terms.iterrows():
        level = R.LEVELS.index(t.cluster_annotation_term_set_name)
        assert re.fullmatch(r"CS20250428_(NEIGH|CLASS|SUBCL|GROUP|CLUST)_\d{4}", t.label)
        if level == 0:
            assert t.parent_term_label == ""
        else:
            parent = by_label.loc[t.parent_term_label]
            assert parent.cluster_annotation_term_set_name == R.LEVELS[level - 1]
            assert parent["name"] == t.parent_term_name
    clusters = terms[terms.cluster_annotation_term_set_name == "Cluster"]
    assert clusters.name.str.fullmatch(r"(Human|Macaque|Marmoset)-\d+").all()
    for name in (
        "Nonneuron",
        "Glut Sero Dopa",
        "Subpallium GABA",
        "Subpallium GABA-Glut",
        "STR D1 MSN",
        "Oligo OPALIN",
        "STRd D1 Matrix MSN",
        "GPi Shell",
        "SN SOX6 Dopa",
        "STR D1D2 Hybrid MSN",
    ):
        assert name in set(terms.name)
    membership = read(tiny_release, R.CLUSTER_MEMBERSHIP)
    assert len(membership) == 1435 * 5
    assert not membership.duplicated(["cluster_alias", "cluster_annotation_term_set_label"]).any()


def test_release_quirks(tiny_release):
    cells = read(tiny_release, R.CELL_METADATA)
    members = read(tiny_release, R.CELL_MEMBERSHIP)
    share = len(members) / len(cells)
    assert 0.58 < share < 0.71, share  # real release: 1,896,133 / 2,936,782 = 0.646 assigned
    marmoset = cells.feature_matrix_label == "HMBA-10xMultiome-BG-Marmoset"
    assert (cells.loc[marmoset, ["umi_count", "doublet_score"]] == "").all().all()
    assert (cells.loc[~marmoset, ["umi_count", "doublet_score"]] != "").all().all()
    jobs = cells.alignment_job_id
    assert jobs.str.fullmatch(r"[0-9a-f]{40}").any() and jobs.str.fullmatch(r"\d{6}").any()
    assert (jobs.str.fullmatch(r"[0-9a-f]{40}") | jobs.str.fullmatch(r"\d{6}")).all()
    assert (cells.dataset_label == "HMBA-10xMultiome-BG").all()
    assert cells.abc_sample_id.str.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    ).all()
    for species in R.SPECIES:
        genes = read(tiny_release, R.GENE_TABLES[species])
        assert genes.gene_identifier.is_unique
        symbols = genes.gene_symbol[genes.gene_symbol != ""]
        assert symbols.duplicated().any(), "gene symbols must not be unique"
        assert (genes.gene_symbol == "").any(), "some gene symbols must be missing"
        prefix = r"ENSG\d{11}" if species == "Human" else r"NCBIGene:\d+"
        assert genes.gene_identifier.str.fullmatch(prefix).all()
    raw_library = (tiny_release / R.LIBRARY.relative_path()).read_text()
    assert '"50% NeuN+, 35% OLIG2-, 15% OLIG2+"' in raw_library
    libs = read(tiny_release, R.LIBRARY)
    donors = read(tiny_release, R.DONOR).set_index("donor_label")
    genus = libs.donor_label.map(donors.species_genus)
    assert (libs.region_of_interest_label[genus == "Marmoset"] == "Br").all()
    assert (libs.region_of_interest_label[genus != "Marmoset"] != "Br").all()
    assert libs.region_of_interest_label.nunique() == 20
    assert 400 <= len(libs) <= 430 and 20 <= len(donors) <= 24
    clusters = read(tiny_release, R.CLUSTER)
    assert (clusters.number_of_cells == "").any() and (clusters.number_of_cells != "").any()


def _matrices(release, species):
    raw = ad.read_h5ad(release / R.matrix_path(species, "raw"))
    log2 = ad.read_h5ad(release / R.matrix_path(species, "log2"))
    return raw, log2


@pytest.mark.parametrize("species", R.SPECIES)
def test_matrices_agree_with_metadata(tiny_release, species):
    raw, log2 = _matrices(tiny_release, species)
    assert raw.obs.index.name == "cell_label" and raw.var.index.name == "gene_identifier"
    assert "gene_symbol" in raw.var.columns
    cells = read(tiny_release, R.CELL_METADATA)
    cells = cells[cells.feature_matrix_label == R.matrix_stem(species)].set_index("cell_label")
    # About 0.5% of matrix cells are left out of cell_metadata.csv, as ABC matrices may hold cells that
    # failed QC; every cell_metadata row has its matrix cell.
    outside = raw.n_obs - len(cells)
    assert set(cells.index) <= set(raw.obs_names) and 0 < outside < 0.02 * raw.n_obs
    genes = read(tiny_release, R.GENE_TABLES[species])
    assert list(raw.var_names) == list(genes.gene_identifier)
    symbols = raw.var.gene_symbol.astype(object).where(raw.var.gene_symbol.notna(), "")
    assert list(symbols) == list(genes.gene_symbol)
    totals = np.asarray(raw.X.sum(axis=1)).ravel()
    if species != "Marmoset":  # Marmoset umi_count is empty in the release
        listed = raw.obs_names.isin(cells.index)
        np.testing.assert_array_equal(
            totals[listed], cells.loc[raw.obs_names[listed], "umi_count"].astype(float).to_numpy()
        )
    # Clustered cells belong to their own species' clusters.
    members = read(tiny_release, R.CELL_MEMBERSHIP).set_index("cell_label")
    mine = members.index.intersection(raw.obs_names)
    assert len(mine) > 0 and members.loc[mine, "cluster_alias"].str.startswith(species + "-").all()


@pytest.mark.parametrize("species", R.SPECIES)
def test_log2_file_is_log2_cpm_of_raw(tiny_release, species):
    raw, log2 = _matrices(tiny_release, species)
    assert log2.X.dtype == np.float32
    assert (raw.obs_names == log2.obs_names).all() and (raw.var_names == log2.var_names).all()
    x = raw.X.tocsr()
    assert (x.data > 0).all() and (x.data == np.round(x.data)).all()
    expected = x.multiply(1.0 / np.asarray(x.sum(axis=1))).tocsr()
    expected.data = np.log2(expected.data * 1e6 + 1.0)
    np.testing.assert_array_equal(log2.X.indptr, x.indptr)
    np.testing.assert_array_equal(log2.X.indices, x.indices)
    np.testing.assert_allclose(log2.X.data, expected.data, rtol=2e-7)


def test_h5ad_layout_is_the_abc_writers(tiny_release):
    with h5py.File(tiny_release / R.matrix_path("Human", "raw")) as f:
        assert f["X"].attrs["encoding-type"] == "csr_matrix"
        for name in ("data", "indices", "indptr"):
            ds = f["X"][name]
            assert ds.compression == "gzip" and ds.compression_opts == 4
            assert ds.chunks[0] <= 20_000
        assert f["X/indices"].dtype == np.int32 and f["X/indptr"].dtype == np.int32
        assert f["X/data"].dtype == np.float32
        assert f["obs"].attrs["_index"] == "cell_label"
        assert f["var"].attrs["_index"] == "gene_identifier"


@pytest.fixture(scope="module")
def bio_release(tmp_path_factory):
    """Enough cells (~10,000) that rare types (glutamatergic, dopaminergic) have a few dozen each."""
    out = tmp_path_factory.mktemp("bio") / "release"
    return synth(out, scale=0.004, genes=1500, seed=11, quiet=True, species=("Human", "Macaque"))


def test_markers_are_expressed_where_they_belong(bio_release):
    """The notebook's genes: mean log2 CPM in the groups that should express them >> everywhere else."""
    tiny_release = bio_release
    tax = build_taxonomy(11)
    programs = {g.term.name: g.programs for g in tax.groups}
    members = read(tiny_release, R.CELL_MEMBERSHIP).set_index("cell_label")
    terms = read(tiny_release, R.TERM).set_index("label")
    for species in ("Human", "Macaque"):
        log2 = ad.read_h5ad(tiny_release / R.matrix_path(species, "log2"))
        cells = log2.obs_names.intersection(members.index)
        group = terms.loc[members.loc[cells, "cluster_label"], "parent_term_name"].to_numpy()
        x = log2[cells].X.toarray()
        symbols = list(log2.var.gene_symbol.astype(str))
        for gene in (
            "SLC17A6",
            "SLC32A1",
            "PTPRC",
            "PLP1",
            "AQP4",
            "DRD1",
            "DRD2",
            "TH",
            "SLC6A3",
            "GAD1",
            "MBP",
            "GFAP",
        ):
            on_programs = MARKERS[gene][0]
            on = np.array([any(p in programs[g] for p in on_programs) for g in group])
            col = x[:, symbols.index(gene)]
            assert on.sum() >= 3, (species, gene)
            # At least 8-fold (3 log2 units) above the rest, and the best expressing group beats every
            # well-sampled (>= 20 cells) group that should not express it.
            assert col[on].mean() - col[~on].mean() > 3, (species, gene, col[on].mean(), col[~on].mean())
            means = pd.Series(col).groupby(group).agg(["mean", "size"])
            is_on = np.array([any(p in programs[g] for p in on_programs) for g in means.index])
            off = means[~is_on & (means["size"] >= 20)]["mean"]
            assert means[is_on]["mean"].max() > off.max(), (species, gene, off.idxmax())


def test_depth_and_overdispersion_at_full_gene_count():
    """At 36,601 genes a nucleus detects ~2,000-5,000 genes; counts are over-dispersed."""
    tax = build_taxonomy(0)
    model = species_model("Human", R.REAL_GENES["Human"], tax, 0)
    rng = np.random.default_rng(0)
    human = np.flatnonzero(np.array(tax.cluster_species) == "Human")
    oligo = [i for i in human if tax.groups[tax.cluster_group[i]].term.name == "Oligo OPALIN"]
    clusters = rng.choice(human, 300)
    x = sample_counts(model, clusters, tax.cluster_group, np.ones(300), rng)
    detected = np.diff(x.indptr)
    assert 2000 <= np.median(detected) <= 5000
    assert 4000 <= np.median(np.asarray(x.sum(axis=1)).ravel()) <= 20000
    y = sample_counts(model, np.full(400, oligo[0]), tax.cluster_group, np.ones(400), rng).toarray()
    mean, var = y.mean(axis=0), y.var(axis=0)
    mid = (mean > 1) & (mean < 20)
    assert np.median(var[mid] / mean[mid]) > 1.5  # Poisson would be ~1


def test_deterministic_per_seed(tmp_path):
    a = synth(tmp_path / "a", scale=0.0002, genes=200, seed=3, quiet=True, species=("Marmoset",))
    b = synth(tmp_path / "b", scale=0.0002, genes=200, seed=3, quiet=True, species=("Marmoset",))
    c = synth(tmp_path / "c", scale=0.0002, genes=200, seed=4, quiet=True, species=("Marmoset",))
    md5 = lambda root: {e.relative_path: e.file_hash for e in ours(read_manifest(root)[1])}  # noqa: E731
    assert md5(a) == md5(b)
    assert md5(a) != md5(c)
    # A one-species release lists only that species' matrices and gene table, and checks clean.
    assert not any("Human" in p for p in md5(a))
    assert check_release(a).ok


def test_scale_one_reproduces_real_counts():
    from build_db.release.synth.writer import n_cells_for, n_genes_for

    assert {s: n_cells_for(s, 1.0) for s in R.SPECIES} == R.REAL_CELLS
    assert {s: n_genes_for(s, None) for s in R.SPECIES} == {
        "Human": 36_601,
        "Macaque": 35_219,
        "Marmoset": 35_787,
    }
    assert sum(R.REAL_CELLS.values()) == 2_936_782


@pytest.mark.parametrize(
    "raw_dtype,index_dtype", [("int32", "int64"), ("uint16", "int32"), ("float64", "auto")]
)
def test_storage_variants(tmp_path, raw_dtype, index_dtype):
    out = synth(
        tmp_path / "r",
        scale=0.0002,
        genes=150,
        seed=1,
        quiet=True,
        species=("Marmoset",),
        raw_dtype=raw_dtype,
        index_dtype=index_dtype,
    )
    with h5py.File(out / R.matrix_path("Marmoset", "raw")) as f:
        assert f["X/data"].dtype == np.dtype(raw_dtype)
        if index_dtype != "auto":
            assert f["X/indices"].dtype == np.dtype(index_dtype) == f["X/indptr"].dtype
    assert check_release(out).ok


def test_refuses_to_overwrite(tmp_path):
    from build_db.errors import HmbaError

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("mine")
    with pytest.raises(HmbaError, match="already exists"):
        synth(tmp_path / "r", scale=0.0002, genes=150, quiet=True)
    assert (tmp_path / "r" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "r.partial").exists()


def _official_client_warns(cache_dir: Path) -> bool:
    """abc_atlas_access's CloudCacheBase.__init__ (cloud_cache.py, 1.1.1): with no _downloaded_data.json, any
    file that is not JSON, not _manifest_last_used and not .DS_Store raises MissingLocalManifestWarning."""
    if (cache_dir / "_downloaded_data.json").exists():
        return False
    return any(
        f.is_file()
        and "json" not in f.name
        and "_manifest_last_used" not in f.name
        and "DS_Store" not in f.name
        for f in cache_dir.glob("**/*")
    )


def test_synthetic_release_is_a_cache_for_the_official_client(tmp_path):
    out = synth(tmp_path / "r", scale=0.0002, genes=150, seed=2, quiet=True, species=("Marmoset",))
    assert not _official_client_warns(out)
    # The record as the client reads it: set(json.load(f)) of resolved absolute paths, every file listed.
    with open(out / "_downloaded_data.json", "rb") as f:
        done = set(json.load(f))
    _, entries = read_manifest(out)
    assert done == {str((out / e.relative_path).resolve()) for e in entries} and len(done) == len(entries)
    last = (out / "_manifest_last_used.txt").read_text()
    assert last == R.manifest_path() and (out / last).is_file()  # the manifest it loads next time
    # Our own downloader trusts them too (size and mtime recorded with the md5): nothing to fetch or hash.
    from build_db.release.cache import DownloadCache

    cache = DownloadCache(out)
    assert all(
        cache.unchanged(out / e.relative_path, e) and cache.known(out / e.relative_path) for e in entries
    )
    # Without the record (a release written before this change) the client warns, as the issue saw.
    (out / "_downloaded_data.json").unlink()
    assert _official_client_warns(out)
    # --force replaces a synthetic release: its cache records are part of it, not foreign files.
    again = synth(out, scale=0.0002, genes=150, seed=2, quiet=True, species=("Marmoset",), force=True)
    assert not _official_client_warns(again) and check_release(again).ok
