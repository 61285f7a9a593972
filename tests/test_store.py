"""The expression store: every non-zero back exactly once, bad matrices refused, resume, atomic publish."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import duckdb
import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from build_db.errors import HmbaError, ReleaseError
from build_db.release import layout as R
from build_db.release.h5ad import CsrReader, CsrWriter
from build_db.store.build import build
from build_db.store.paths import bucket_file, files_root, staging_dir
from build_db.store.transpose import BucketPlan, plan_buckets, row_split, scatter, sort_bucket
from build_db.store.verify import verify_store

from .conftest import restamp

# --- the transposition core on arbitrary matrices ---


def write_h5ad(path, x: sp.csr_matrix, dtype="float32", index_dtype=np.int32):
    var = pd.DataFrame(
        {"gene_symbol": [f"G{i}" for i in range(x.shape[1])]},
        index=pd.Index([f"ID{i}" for i in range(x.shape[1])], name="gene_identifier"),
    )
    w = CsrWriter(path, var, dtype, index_dtype)
    w.append(x, [f"cell{i}" for i in range(x.shape[0])])
    w.close()
    return path


def transpose(path, out, plan: BucketPlan, parts=2):
    with CsrReader(path) as m:
        indptr = m.indptr()
    tags = []
    for i, (r0, r1) in enumerate(row_split(indptr, parts)):
        scatter(path, plan, r0, r1, out / "_scatter", f"p{i}")
        tags.append(f"p{i}")
    for k in range(plan.n_buckets):
        sort_bucket(plan, k, out / "_scatter", tags, bucket_file(out, "S", k))


def read_back(out, shape) -> sp.csr_matrix:
    rows = duckdb.sql(
        "select gene_index, cell_index, raw_count, gene_bucket "
        f"from read_parquet('{out}/expression/*/*/*.parquet', "
        "hive_partitioning = true, hive_types = {'gene_bucket': int})"
    ).fetchnumpy()
    m = sp.coo_matrix((rows["raw_count"], (rows["cell_index"], rows["gene_index"])), shape=shape).tocsr()
    assert m.nnz == len(rows["raw_count"]), "a (cell, gene) pair came back twice"
    return m, rows


def random_counts(rng, n_cells, n_genes, density):
    x = sp.random(
        n_cells,
        n_genes,
        density=density,
        format="csr",
        random_state=rng,
        data_rvs=lambda k: rng.integers(1, 500, size=k),
    ).astype(np.int64)
    x.sort_indices()
    return x


CASES = {
    "random": (300, 500, 0.05),
    "one cell": (1, 300, 0.3),
    "single gene": (400, 1, 0.4),
    "dense-ish": (50, 40, 0.8),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(
    "dtype,index_dtype",
    [("float32", np.int32), ("float64", np.int64), ("int32", np.int64), ("uint16", np.int32)],
)
def test_round_trip_is_exact(tmp_path, name, dtype, index_dtype):
    rng = np.random.default_rng(len(name))
    n_cells, n_genes, density = CASES[name]
    x = random_counts(rng, n_cells, n_genes, density)
    x = x.tolil()
    if n_cells > 10:
        x[5] = 0  # an empty cell
        x[n_cells - 1] = 0  # an empty last cell
    if n_genes > 10:
        x[:, 3] = 0  # a gene never expressed
    x = x.tocsr()
    x.eliminate_zeros()
    path = write_h5ad(tmp_path / "m.h5ad", x, dtype, index_dtype)
    plan = BucketPlan(n_genes, max(1, n_genes // 7))  # several buckets
    transpose(path, tmp_path, plan)
    back, rows = read_back(tmp_path, x.shape)
    assert back.nnz == x.nnz
    assert (back != x).nnz == 0
    assert int(rows["raw_count"].sum()) == int(x.sum())
    # Sorted by (gene, cell) within each bucket, and each gene in the bucket its index says.
    assert (rows["gene_bucket"] == rows["gene_index"] // plan.genes_per_bucket).all()
    for f in sorted(tmp_path.glob("expression/*/*/*.parquet")):
        t = pq.read_table(f).to_pandas()
        assert t.equals(t.sort_values(["gene_index", "cell_index"]).reset_index(drop=True))


def test_parquet_layout(tmp_path):
    rng = np.random.default_rng(0)
    x = random_counts(rng, 2000, 300, 0.3)
    path = write_h5ad(tmp_path / "m.h5ad", x)
    transpose(path, tmp_path, BucketPlan(300, 300))
    f = pq.ParquetFile(tmp_path / "expression/species=S/gene_bucket=0000/part-0.parquet")
    meta = f.metadata
    assert meta.num_rows == x.nnz and meta.row_group(0).num_rows == 122_880
    col = meta.row_group(0).column(1)
    assert col.compression == "ZSTD" and "DELTA_BINARY_PACKED" in col.encodings
    assert f.schema_arrow.names == ["gene_index", "cell_index", "raw_count"]
    assert all(str(t) == "int32" for t in f.schema_arrow.types)


def test_bucket_plan():
    plan = plan_buckets(36_601, 5_000_000_000)
    assert 60 <= plan.n_buckets <= 66 and plan.gene_range(plan.n_buckets - 1)[1] == 36_601
    assert plan_buckets(900, 1000).n_buckets == 1
    assert plan_buckets(2000, 1000).n_buckets == 2
    assert (
        plan_buckets(36_601, 10).genes_per_bucket <= 1024
    )  # few genes per bucket keep the sort cache-friendly


BAD = {
    "non-integral": (lambda d, i, p: d.__setitem__(7, 2.5), "non-integral count 2.5"),
    "negative": (lambda d, i, p: d.__setitem__(7, -3), "negative count -3"),
    "not finite": (lambda d, i, p: d.__setitem__(7, np.nan), "non-integral count nan"),
    "unsorted": (
        lambda d, i, p: i.__setitem__(slice(p[3], p[3] + 2), i[p[3] : p[3] + 2][::-1].copy()),
        "unsorted gene index",
    ),
    "duplicate": (lambda d, i, p: i.__setitem__(p[3] + 1, i[p[3]]), "duplicate gene index"),
    "out of range": (lambda d, i, p: i.__setitem__(p[3], 999), "gene index 999 outside 0..49"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_matrix_names_file_and_first_bad_row(tmp_path, name):
    rng = np.random.default_rng(1)
    x = random_counts(rng, 20, 50, 0.3)
    x.data = x.data.astype(np.float32)
    damage, message = BAD[name]
    damage(x.data, x.indices, x.indptr)
    path = write_h5ad(tmp_path / "bad.h5ad", x)
    row = (
        3
        if name in ("unsorted", "duplicate", "out of range")
        else int(np.searchsorted(x.indptr, 7, "right") - 1)
    )
    with pytest.raises(ReleaseError) as e:
        transpose(path, tmp_path, BucketPlan(50, 10))
    assert str(e.value).startswith(f"{path}: row {row} (cell cell{row}): {message}")
    assert e.value.key == row


def test_truncated_h5ad(tmp_path):
    rng = np.random.default_rng(2)
    path = write_h5ad(tmp_path / "t.h5ad", random_counts(rng, 500, 400, 0.2))
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(ReleaseError, match=r"t\.h5ad: not a readable HDF5/h5ad file .* download it again"):
        transpose(path, tmp_path, BucketPlan(400, 100))


def test_corrupt_data_chunk(tmp_path):
    rng = np.random.default_rng(3)
    path = write_h5ad(tmp_path / "c.h5ad", random_counts(rng, 2000, 400, 0.2))
    with h5py.File(path) as f:
        offset = f["X/data"].id.get_chunk_info(1).byte_offset  # the second gzip chunk of the counts
    raw = bytearray(path.read_bytes())
    raw[offset + 10 : offset + 200] = b"\x00" * 190
    path.write_bytes(bytes(raw))
    with pytest.raises(ReleaseError, match=r"c\.h5ad: rows \d+\.\.\d+ cannot be read .* download it again"):
        transpose(path, tmp_path, BucketPlan(400, 100))


# --- the build on a synthetic release ---


@pytest.fixture(scope="module")
def built(tiny_release, tmp_path_factory):
    """The current snapshot's folder of a store built from the tiny release."""
    store = tmp_path_factory.mktemp("store") / "store"
    build(tiny_release, store, bucket_nnz=4_000, quiet=True)
    return files_root(store)


@pytest.mark.parametrize("species", R.SPECIES)
def test_store_equals_source_matrix(tiny_release, built, species):
    raw = ad.read_h5ad(tiny_release / R.matrix_path(species, "raw"))
    x = raw.X.tocsr().astype(np.int64)
    rows = duckdb.sql(
        "select cell_index, gene_index, raw_count "
        f"from read_parquet('{built}/expression/species={species}/*/*.parquet')"
    ).fetchnumpy()
    back = sp.coo_matrix((rows["raw_count"], (rows["cell_index"], rows["gene_index"])), shape=x.shape).tocsr()
    assert back.nnz == x.nnz == len(rows["raw_count"])
    assert (back != x).nnz == 0
    totals = pd.read_parquet(built / "tables" / "cell_totals" / f"{species}.parquet")
    assert list(totals.cell_label) == list(raw.obs_names)
    np.testing.assert_array_equal(totals.total_counts, np.asarray(x.sum(axis=1)).ravel())
    np.testing.assert_array_equal(totals.genes_detected, np.diff(x.indptr))
    genes = pd.read_parquet(built / "tables" / "gene_buckets" / f"{species}.parquet")
    assert list(genes.gene_identifier) == list(raw.var_names)
    info = json.loads((built / "build.json").read_text())["species"][species]
    assert info["buckets"] > 1 and genes.gene_bucket.max() == info["buckets"] - 1


def test_build_json_records_provenance(tiny_release, built):
    info = json.loads((built / "build.json").read_text())
    manifest = json.loads((tiny_release / R.manifest_path()).read_text())
    raw = manifest["file_listing"]["HMBA-10xMultiome-BG"]["expression_matrices"]["HMBA-10xMultiome-BG-Human"][
        "raw"
    ]
    assert info["sources"][R.matrix_path("Human", "raw")]["md5"] == raw["files"]["h5ad"]["file_hash"]
    assert info["tool_version"] and info["release_version"] == "20250630"
    for meta in info["species"].values():
        assert meta["log2_check"]["checked"] and meta["log2_check"]["cells"] > 0
        assert sum(b["nnz"] for b in meta["bucket_stats"]) == meta["nnz"]
        assert sum(b["sum"] for b in meta["bucket_stats"]) == meta["sum"]
    assert not staging_dir(built.parent.parent).exists()


def test_verify_catches_a_changed_store(built, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(built.parent.parent, copy, symlinks=True)
    assert verify_store(copy) == []
    f = bucket_file(files_root(copy), "Marmoset", 0)
    t = pq.read_table(f).to_pandas()
    t.loc[10, "raw_count"] += 1
    pq.write_table(__import__("pyarrow").Table.from_pandas(t, preserve_index=False), f)
    problems = verify_store(copy)
    assert any(p.startswith("Marmoset: bucket 0: sum of counts") for p in problems)
    assert any("cells' total counts differ from the source" in p for p in problems)


def test_verify_cli(built):
    from click.testing import CliRunner

    from build_db.cli import main

    result = CliRunner().invoke(main, ["verify", str(built)])
    assert result.exit_code == 0 and result.output.count("OK: ") == 3


def test_log2_disagreement_fails_loudly(release_copy, tmp_path):
    rel = R.matrix_path("Marmoset", "log2")
    with h5py.File(release_copy / rel, "a") as f:
        d = f["X/data"]
        d[: len(d)] = d[...] * 1.01
    restamp(release_copy, rel)
    with pytest.raises(ReleaseError, match=r"-log2\.h5ad: row \d+: log2 values are not log2\(raw / rowsum"):
        build(release_copy, tmp_path / "store", species=("Marmoset",), quiet=True)
    assert not (tmp_path / "store").exists()


def test_failed_build_keeps_previous_store(release_copy, tmp_path):
    store = tmp_path / "store"
    build(release_copy, store, species=("Marmoset",), quiet=True)
    before = (store / "build.json").read_text()
    rel = R.matrix_path("Marmoset", "raw")
    with h5py.File(release_copy / rel, "a") as f:
        f["X/data"][7] = 1.5
    restamp(release_copy, rel)
    with pytest.raises(ReleaseError, match="non-integral count 1.5"):
        build(release_copy, store, species=("Marmoset",), quiet=True)
    assert (store / "build.json").read_text() == before
    assert verify_store(store) == []


def test_refuses_a_directory_that_is_not_a_store(tiny_release, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(HmbaError, match="is not an hmba-db store"):
        build(tiny_release, tmp_path / "mine", quiet=True)


def test_release_problems_stop_the_build_before_any_work(release_copy, tmp_path):
    (release_copy / R.GENE_TABLES["Human"].relative_path()).unlink()
    with pytest.raises(ReleaseError, match="human_gene.csv: missing; .* run `hmba-db check"):
        build(release_copy, tmp_path / "store", quiet=True)
    assert not staging_dir(tmp_path / "store").exists()


def test_killed_build_resumes_without_redoing_buckets(tiny_release, tmp_path, capsys):
    """SIGKILL a build once it has written some buckets; the rerun keeps them and finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    store = tmp_path / "store"
    staged = staging_dir(store)
    cmd = [
        sys.executable,
        "-m",
        "build_db",
        "build",
        str(tiny_release),
        str(store),
        "--species",
        "Human",
        "--bucket-nnz",
        "300",
        "--jobs",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True)
    done: dict = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads((staged / "state.json").read_text())["species"]["Human"]["buckets"]
        except (FileNotFoundError, KeyError, ValueError):
            done = {}
        if len(done) >= 3:
            os.killpg(proc.pid, signal.SIGKILL)  # the build and its workers, mid-way
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert not store.exists()
    state = json.loads((staged / "state.json").read_text())["species"]["Human"]
    finished = sorted(int(k) for k in state["buckets"])
    assert 3 <= len(finished) < 60
    mtimes = {k: bucket_file(staged, "Human", k).stat().st_mtime_ns for k in finished}

    build(tiny_release, store, species=("Human",), bucket_nnz=300, jobs=1)
    assert "resuming the build" in capsys.readouterr().err
    assert {k: bucket_file(files_root(store), "Human", k).stat().st_mtime_ns for k in finished} == mtimes
    assert verify_store(store) == []
    assert not staged.exists()


def test_resume_discards_staging_from_other_inputs(tiny_release, tmp_path, capsys):
    store = tmp_path / "store"
    staged = staging_dir(store)
    staged.mkdir(parents=True)
    (staged / "state.json").write_text(json.dumps({"params": {"other": 1}, "species": {}}))
    build(tiny_release, store, species=("Marmoset",), quiet=False)
    assert "discarding an unfinished build" in capsys.readouterr().err
    assert verify_store(store) == []


def test_default_species_are_the_downloaded_ones(release_copy, tmp_path):
    for kind in R.MATRIX_KINDS:
        (release_copy / R.matrix_path("Human", kind)).unlink()
        (release_copy / R.matrix_path("Macaque", kind)).unlink()
    result = build(release_copy, tmp_path / "store", quiet=True)
    assert list(result.species) == ["Marmoset"]


def test_cell_metadata_row_without_matrix_cell_is_left_out(release_copy, tmp_path):
    rel = R.CELL_METADATA.relative_path()
    df = pd.read_csv(release_copy / rel, dtype=str, keep_default_na=False)
    marmoset = df.index[df.feature_matrix_label == "HMBA-10xMultiome-BG-Marmoset"]
    ghost = df.loc[marmoset[:1]].assign(cell_label="NOMATRIX-0000_A01")
    df = pd.concat([df.drop(marmoset[1:2]), ghost])  # one matrix cell unlisted, one listed cell not in it
    df.to_csv(release_copy / rel, index=False)
    restamp(release_copy, rel)
    store = build(release_copy, tmp_path / "store", species=("Marmoset",), quiet=True).store
    counts = json.loads((store / "build.json").read_text())["metadata"]["cells"]["Marmoset"]
    assert counts["cell_metadata_rows_without_matrix_cell"] == 1
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    n, outside, ghosts = con.execute(
        "select count(*), count(*) filter (not in_cell_metadata), "
        "count(*) filter (cell_label = 'NOMATRIX-0000_A01') from cells"
    ).fetchone()
    assert counts["not_in_cell_metadata"] == outside and ghosts == 0 and n == counts["cells"] == 332
