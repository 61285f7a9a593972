"""`hmba-db verify`: reconcile the store with the numbers taken from the source during the build.

Per species and bucket: non-zero count, sum of counts, sum of cell indexes and sum of gene_index x count
(two position-sensitive checksums: a value moved to another cell or gene changes them); per cell: total
counts and genes detected, recomputed from the store and compared with the source rows' sums; and the
Parquet layout: row groups in gene order, inside their bucket's gene range.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

from .errors import HmbaError


def _build_info(store: Path) -> dict:
    path = Path(store) / "build.json"
    if not path.exists():
        raise HmbaError(
            f"{path}: not found; {store} is not an hmba-db store (run hmba-db build first)", path=path
        )
    return json.loads(path.read_text())


def verify_store(store: Path, species: list[str] | None = None) -> list[str]:
    """Every disagreement between the store and its build record, one line each ([] means verified).

    Example:
        >>> verify_store(Path("data/store"))  # doctest: +SKIP
        []
    """
    store = Path(store)
    info = _build_info(store)
    problems: list[str] = []
    con = duckdb.connect()
    for sp, meta in info["species"].items():
        if species and sp not in species:
            continue
        files = sorted((store / "expression" / f"species={sp}").glob("gene_bucket=*/*.parquet"))
        buckets_on_disk = {int(f.parent.name.split("=")[1]) for f in files}
        if buckets_on_disk != set(range(meta["buckets"])):
            missing = sorted(set(range(meta["buckets"])) - buckets_on_disk)
            problems.append(f"{sp}: bucket files missing for buckets {missing[:5]}; rebuild the store")
            continue
        glob = str(store / "expression" / f"species={sp}" / "*" / "*.parquet")
        rows = con.execute(
            "select gene_bucket, count(*), sum(raw_count), sum(cell_index), "
            "sum(gene_index::bigint * raw_count) "
            "from read_parquet(?, hive_partitioning = true, hive_types = {'gene_bucket': int}) "
            "group by gene_bucket order by gene_bucket",
            [glob],
        ).fetchall()
        got = {int(r[0]): [int(v or 0) for v in r[1:]] for r in rows}
        for k, want in enumerate(meta["bucket_stats"]):
            have = got.get(k, [0, 0, 0, 0])
            expect = [want["nnz"], want["sum"], want["cell_sum"], want["gene_weighted"]]
            names = ("non-zeros", "sum of counts", "cell checksum", "gene checksum")
            for name, h, e in zip(names, have, expect, strict=True):
                if h != e:
                    problems.append(f"{sp}: bucket {k}: {name} {h:,} in the store, {e:,} in the source")
        problems += _layout(sp, files, meta["genes_per_bucket"], meta["genes"])
        totals = con.sql(
            "select cell_index, sum(raw_count)::bigint as s, count(*)::int as n from read_parquet(?) "
            "group by cell_index",
            params=[glob],
        ).to_arrow_table()
        src = pq.read_table(
            store / "tables" / "cell_totals" / f"{sp}.parquet", columns=["total_counts", "genes_detected"]
        )
        want_sum = src.column("total_counts").to_numpy()
        want_n = src.column("genes_detected").to_numpy()
        have_sum = np.zeros(len(want_sum), dtype=np.int64)
        have_n = np.zeros(len(want_n), dtype=np.int64)
        idx = totals.column("cell_index").to_numpy()
        if len(idx) and (idx.min() < 0 or idx.max() >= len(want_sum)):
            problems.append(f"{sp}: cell_index outside 0..{len(want_sum) - 1} in the store")
            continue
        have_sum[idx] = totals.column("s").to_numpy()
        have_n[idx] = totals.column("n").to_numpy()
        for name, have, want in (("total counts", have_sum, want_sum), ("genes detected", have_n, want_n)):
            bad = np.flatnonzero(have != want)
            if len(bad):
                c = int(bad[0])
                problems.append(
                    f"{sp}: {len(bad):,} cells' {name} differ from the source, first cell_index {c}: "
                    f"{have[c]:,} in the store, {want[c]:,} in the source"
                )
        if int(have_sum.sum()) != meta["sum"] or int(have_n.sum()) != meta["nnz"]:
            problems.append(
                f"{sp}: store totals {int(have_sum.sum()):,} counts / {int(have_n.sum()):,} non-zeros; "
                f"source {meta['sum']:,} / {meta['nnz']:,}"
            )
    return problems


def _layout(sp: str, files: list[Path], per: int, n_genes: int) -> list[str]:
    out = []
    for f in files:
        k = int(f.parent.name.split("=")[1])
        lo, hi = k * per, min(n_genes, (k + 1) * per) - 1
        meta = pq.ParquetFile(f).metadata
        prev = lo
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(0).statistics
            if st is None or not st.has_min_max:
                out.append(f"{sp}: {f.name} in bucket {k}: row group {g} has no gene_index statistics")
                break
            if st.min < prev or st.max > hi or st.min > st.max:
                out.append(
                    f"{sp}: bucket {k}: row group {g} holds genes {st.min}..{st.max}, expected sorted "
                    f"within {lo}..{hi}"
                )
                break
            prev = st.max
    return out
