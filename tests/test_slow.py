"""Full-size checks for `make bench` (marker `slow`, never in `make test`): a --scale 0.01 release with
all genes (~83M non-zeros) is generated, checked, built and verified, and the store reproduces the
source's per-cell totals and gene sums exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from build_db.release import layout as R
from build_db.release.check import check_release
from build_db.release.h5ad import CsrReader
from build_db.release.synth import synth
from build_db.store.build import build
from build_db.store.paths import files_root
from build_db.store.verify import verify_store

pytestmark = pytest.mark.slow


def test_scale_001_all_genes_builds_and_verifies(tmp_path):
    release = synth(tmp_path / "release", scale=0.01, seed=5, quiet=True)
    assert check_release(release, md5=True).ok
    store = build(release, tmp_path / "store", quiet=True).store
    assert verify_store(store) == []
    for species in R.SPECIES:
        totals = pd.read_parquet(files_root(store) / "tables" / "cell_totals" / f"{species}.parquet")
        gene_sum = np.zeros(R.REAL_GENES[species], dtype=np.int64)
        with CsrReader(release / R.matrix_path(species, "raw")) as m:
            assert m.shape == (round(R.REAL_CELLS[species] * 0.01), R.REAL_GENES[species])
            indptr = m.indptr()
            for start in range(0, m.shape[0], 2000):
                stop = min(m.shape[0], start + 2000)
                x = m.rows(start, stop, indptr)
                np.testing.assert_array_equal(
                    totals.total_counts[start:stop], np.asarray(x.sum(axis=1)).ravel()
                )
                gene_sum += np.bincount(x.indices, weights=x.data, minlength=len(gene_sum)).astype(np.int64)
        import duckdb

        files = f"{files_root(store)}/expression/species={species}/*/*.parquet"  # the current snapshot's
        got = duckdb.sql(
            f"select gene_index, sum(raw_count) from read_parquet('{files}') group by gene_index"
        ).fetchnumpy()
        have = np.zeros_like(gene_sum)
        have[got["gene_index"]] = got["sum(raw_count)"]
        np.testing.assert_array_equal(have, gene_sum)
