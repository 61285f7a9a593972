"""The rest of the bucket around a synthetic release: what a loader must leave alone, and the MapMyCells pair.

The real `releases/<v>/manifest.json` lists every dataset of the bucket (docs/release.md, 'The bucket and its
manifest'), many with our file stems (`cell_metadata`, `donor`, `gene`, `cluster`), each with its own version,
some files a folder deeper. These neighbours reproduce that in miniature: their CSVs have our headers but rows
of their own (a loader that picks one up fails loudly or counts wrong), and they are real files, so a local
server serves them and a download that fetched them would show it.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import layout as R
from ..h5ad import CsrWriter
from .taxonomy import Taxonomy

ALIGNED = "HMBA-10xMultiome-BG-Aligned"  # the sibling release, same stems, its own version
WMB = "WMB-10X"
WMB_TAXONOMY = "WMB-taxonomy"
MAPMYCELLS_STATS = "precomputed_stats.HMBA.BG.2025-08-04.h5"
MAPMYCELLS_MARKERS = "query_markers.HMBA.BG.2025-08-04.json"


def _decoy_csv(path: Path, spec: R.CsvSpec, n: int, tag: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {c: [f"{tag}-{c}-{i}" for i in range(n)] for c in spec.columns}
    pd.DataFrame(rows, columns=list(spec.columns)).to_csv(path, index=False)


def write_bucket_neighbours(root: Path, tax: Taxonomy, cluster_counts: np.ndarray, seed: int) -> list[str]:
    """Write the neighbouring datasets and the MapMyCells pair under `root`; return their relative paths."""
    written = []

    def rel(kind: str, directory: str, version: str, name: str) -> Path:
        written.append(f"{kind}/{directory}/{version}/{name}")
        return root / written[-1]

    # The sibling Aligned release: our stems (cell_metadata, donor, one shared gene.csv) and a matrix.
    for spec, name in ((R.CELL_METADATA, "cell_metadata"), (R.DONOR, "donor")):
        _decoy_csv(rel("metadata", ALIGNED, "20250531", f"{name}.csv"), spec, 5, "ALIGNED")
    _decoy_csv(rel("metadata", ALIGNED, "20250531", "gene.csv"), R.GENE_TABLES["Human"], 5, "ALIGNED")
    path = rel("expression_matrices", ALIGNED, "20250531", f"{ALIGNED}-Human-raw.h5ad")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 11])
    var = pd.DataFrame({"gene_identifier": [f"ALIGNED-G{i}" for i in range(30)], "gene_symbol": "X"})
    w = CsrWriter(path, var.set_index("gene_identifier"), np.float32)
    w.append(
        sp.random(20, 30, density=0.2, format="csr", dtype=np.float32, random_state=rng).ceil(),
        [f"ALIGNED-C{i}" for i in range(20)],
    )
    w.close()
    # WMB-10X: an older version, a file one folder deeper, our stems again.
    _decoy_csv(rel("metadata", WMB, "20231215", "cell_metadata.csv"), R.CELL_METADATA, 5, "WMB")
    _decoy_csv(rel("metadata", WMB, "20231215", "library.csv"), R.LIBRARY, 5, "WMB")
    _decoy_csv(
        rel("metadata", WMB, "20231215", "views/cell_metadata_with_cluster_annotation.csv"),
        R.CELL_METADATA,
        5,
        "WMB",
    )
    # Another taxonomy with our taxonomy's stems.
    for spec in (R.CLUSTER, R.TERM):
        _decoy_csv(rel("metadata", WMB_TAXONOMY, "20231215", f"{spec.name}.csv"), spec, 5, "WMBTAX")
    _mapmycells(rel, tax, cluster_counts)
    return written


def _mapmycells(rel, tax: Taxonomy, cluster_counts: np.ndarray) -> None:
    """The taxonomy's MapMyCells pair, in cell_type_mapper's layout (docs/release.md, 'MapMyCells resources').
    A stand-in: the tree, cluster rows and cell counts are the synthetic taxonomy's; the per-gene sums are
    left out (this file exists to be listed, fetched with `--what mapmycells` and checked, not to map cells
    with)."""
    path = rel(R.MAPMYCELLS_KIND, R.TAXONOMY_DIR, R.VERSION, MAPMYCELLS_STATS)
    path.parent.mkdir(parents=True, exist_ok=True)
    hierarchy = [R.LEVEL_LABELS[lv] for lv in R.LEVELS]
    tree: dict = {"hierarchy": hierarchy}
    for lv in R.LEVELS[:-1]:
        children: dict[str, list[str]] = {t.label: [] for t in tax.level_terms(lv)}
        for t in tax.terms:
            if t.parent is not None and t.parent.level == lv:
                children[t.parent.label].append(t.label)
        tree[R.LEVEL_LABELS[lv]] = children
    tree[R.LEVEL_LABELS["Cluster"]] = {c.label: [] for c in tax.clusters}
    with h5py.File(path, "w") as f:
        meta = {"synthetic": True, "note": "stand-in for the release's file; no per-gene sums"}
        f.create_dataset("metadata", data=json.dumps(meta).encode())
        f.create_dataset("taxonomy_tree", data=json.dumps(tree).encode())
        f.create_dataset(
            "cluster_to_row", data=json.dumps({c.label: i for i, c in enumerate(tax.clusters)}).encode()
        )
        f.create_dataset("n_cells", data=np.asarray(cluster_counts, dtype=np.int64))
    markers: dict[str, list[str]] = {"None": []}
    rel(R.MAPMYCELLS_KIND, R.TAXONOMY_DIR, R.VERSION, MAPMYCELLS_MARKERS).write_text(json.dumps(markers))
