"""The synthetic expression model: gene tables and over-dispersed UMI counts per cell type.

Each cell draws a sequencing depth, then "bursts" of UMIs: a Poisson number of bursts, each landing on one
gene drawn from its cell type's profile and carrying a geometric number of UMIs. A Poisson number of
geometric bursts is over-dispersed (variance > mean), like real UMI counts, and costs one random draw per
burst instead of one per gene, so a cell costs O(its UMIs), not O(36,601 genes).

Profiles are defined against the full transcriptome: a gene's expected count does not depend on how many
genes `--genes` keeps, so a reduced release is a random subset of the genes of a full one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import layout as R
from .. import normalise
from .taxonomy import AMBIENT, MARKERS, Taxonomy

# Depth: log-normal UMIs per nucleus at full gene count; median ~9,000 with a long tail (the release's
# umi_count values run from a few thousand to tens of thousands, e.g. 15,259).
DEPTH_LOG_MEAN = np.log(9000.0)
DEPTH_LOG_SD = 0.5
# Mean UMIs per burst; 1.4 gives variance/mean ~ 2-3 for mid-expressed genes.
BURST_MEAN = 1.4
# Log-normal spread of gene baseline expression. With sigma 2.2 and depth ~9,000 a nucleus detects about
# 3,000 of 36,601 genes, the middle of the 2,000-5,000 docs/release.md expects for 10x nuclei.
GENE_LOG_SD = 2.2
# Share of a cell's bursts that land on its cluster's own three genes: separates sibling clusters.
CLUSTER_SHARE = 0.02
GROUP_MARKERS = 25  # extra planted markers per group (x8), recorded in the model for marker tests
GROUP_MARKER_FOLD = 8.0

KNOWN_DUPLICATES = ("MATR3", "TBCE", "PINX1")  # symbols with two Ensembl genes in the real annotation
_PREFIXES = (
    "ZNF",
    "SLC",
    "KCN",
    "LINC",
    "CCDC",
    "FAM",
    "TMEM",
    "ANKRD",
    "KIAA",
    "LRRC",
    "C1orf",
    "RNF",
    "PCDH",
    "ADAM",
    "CDH",
    "COL",
    "MIR",
    "SNOR",
    "OR",
    "TRIM",
    "DNAJ",
    "ARHGAP",
    "PPP",
    "RPL",
)


@dataclass
class SpeciesModel:
    species: str
    genes: pd.DataFrame  # the gene table in var order, columns from release.GENE_TABLES[species]
    group_weights: np.ndarray  # groups x genes, expected UMIs share (unnormalised, full-transcriptome scale)
    group_cdf: np.ndarray  # groups x genes, cumulative, normalised per group
    group_rate: np.ndarray  # per group: sum of weights / full-transcriptome weight
    cluster_genes: np.ndarray  # clusters x 3 gene indices
    group_markers: np.ndarray  # groups x GROUP_MARKERS gene indices (planted, x8)
    guide: np.ndarray  # groups x (2 * genes + 1): first gene whose cdf exceeds k / (2 * genes)


def _symbol_pool(rng: np.random.Generator, n: int) -> list[str]:
    numbers = rng.permutation(np.arange(1, 20 * n))[: 2 * n]
    prefixes = rng.integers(0, len(_PREFIXES), size=2 * n)
    seen = set(MARKERS) | set(KNOWN_DUPLICATES)
    out = []
    for p, k in zip(prefixes, numbers, strict=True):
        s = f"{_PREFIXES[p]}{k}"
        if s not in seen:
            seen.add(s)
            out.append(s)
        if len(out) == n:
            break
    return out


def gene_table(species: str, n_genes: int, seed: int) -> pd.DataFrame:
    """A species' gene table: markers at seeded positions, a few duplicated and missing symbols."""
    rng = np.random.default_rng([seed, 2, R.SPECIES.index(species)])
    symbols = _symbol_pool(rng, n_genes)
    fixed = list(MARKERS) + [s for s in KNOWN_DUPLICATES for _ in (0, 1)]
    if n_genes < len(fixed) + 20:
        raise ValueError(f"--genes must be at least {len(fixed) + 20} to hold the marker genes")
    positions = np.sort(rng.choice(n_genes, size=len(fixed), replace=False))
    for pos, sym in zip(positions, rng.permutation(fixed), strict=True):
        symbols[pos] = str(sym)
    free = np.setdiff1d(np.arange(n_genes), positions)
    # ~0.2% more duplicates (copy another gene's symbol) and ~0.4% missing symbols.
    n_dup, n_missing = max(2, n_genes // 500), max(2, n_genes // 250)
    picks = rng.choice(free, size=n_dup + n_missing, replace=False)
    for i in picks[:n_dup]:
        symbols[i] = symbols[int(rng.choice(free))]
    for i in picks[n_dup:]:
        symbols[i] = ""
    if species == "Human":
        ids = 100_000 + np.sort(rng.choice(200_000, size=n_genes, replace=False))
        identifiers = [f"ENSG{k:011d}" for k in ids]
        ncbi = 1 + np.sort(rng.choice(120_000, size=n_genes, replace=False))
        mapped = [f"NCBIGene:{k}" for k in ncbi]
    else:
        base = 100_000_000 if species == "Macaque" else 200_000_000
        ids = base + np.sort(rng.choice(2_000_000, size=n_genes, replace=False))
        identifiers = [f"NCBIGene:{k}" for k in ids]
        mapped = identifiers
    columns = R.GENE_TABLES[species].columns
    data: dict[str, object] = {
        "gene_identifier": identifiers,
        "gene_symbol": symbols,
        "name": [f"{s} ({species.lower()} gene)" if s else "" for s in symbols],
        "mapped_ncbi_identifier": mapped,
    }
    if "biotype" in columns:
        data["biotype"] = np.where(
            np.char.startswith(np.array(symbols, dtype=str), "LINC"), "lncRNA", "protein_coding"
        )
    return pd.DataFrame(data, columns=list(columns))


def species_model(species: str, n_genes: int, tax: Taxonomy, seed: int) -> SpeciesModel:
    genes = gene_table(species, n_genes, seed)
    rng = np.random.default_rng([seed, 3, R.SPECIES.index(species)])
    full = R.REAL_GENES[species]
    base = np.exp(rng.normal(0.0, GENE_LOG_SD, size=n_genes))
    # The expected total weight of the full transcriptome: a reduced gene set keeps each gene's share.
    full_weight = full * np.exp(GENE_LOG_SD**2 / 2)

    n_groups = len(tax.groups)
    # Hierarchical modulation: groups of one class share most of their deviation from the baseline, so
    # the taxonomy's tree is visible in the data (sibling groups are more alike than distant ones).
    level_sd = {"Class": 0.35, "Subclass": 0.2, "Group": 0.15}
    mods: dict[str, np.ndarray] = {}
    log_mod = np.zeros((n_groups, n_genes))
    for gi, g in enumerate(tax.groups):
        anc = tax.ancestors(g.term)
        for level, sd in level_sd.items():
            t = anc[level]
            if t.label not in mods:
                mods[t.label] = rng.normal(0.0, sd, size=n_genes)
            log_mod[gi] += mods[t.label]
    weights = base[None, :] * np.exp(log_mod)

    group_markers = np.zeros((n_groups, GROUP_MARKERS), dtype=np.int64)
    marker_pos = {s: i for i, s in enumerate(genes["gene_symbol"]) if s in MARKERS}
    candidates = np.setdiff1d(np.arange(n_genes), list(marker_pos.values()))
    for gi in range(n_groups):
        group_markers[gi] = rng.choice(candidates, size=GROUP_MARKERS, replace=False)
        weights[gi, group_markers[gi]] *= GROUP_MARKER_FOLD
    for sym, (programs, marker_level) in MARKERS.items():
        col = marker_pos[sym]
        on = np.array([any(p in g.programs for p in programs) for g in tax.groups])
        weights[:, col] = marker_level * full_weight * np.where(on, 1.0, AMBIENT)

    rate = weights.sum(axis=1) / full_weight
    cdf = np.cumsum(weights, axis=1)
    cdf /= cdf[:, -1:]
    n_clusters = len(tax.clusters)
    cluster_genes = np.stack([rng.choice(candidates, size=3, replace=False) for _ in range(n_clusters)])
    grid = np.arange(2 * n_genes + 1) / (2 * n_genes)
    guide = np.stack([np.searchsorted(row, grid, side="right") for row in cdf]).astype(np.int32)
    np.minimum(guide, n_genes - 1, out=guide)
    return SpeciesModel(species, genes, weights, cdf, rate, cluster_genes, group_markers, guide)


def sample_counts(
    model: SpeciesModel,
    clusters: np.ndarray,
    cluster_group: np.ndarray,
    depth_factor: np.ndarray,
    rng: np.random.Generator,
) -> sp.csr_matrix:
    """Raw UMI counts (cells x genes, CSR with sorted indices, float64 values) for cells of these clusters.

    `depth_factor` scales each cell's depth (unassigned, low-quality nuclei are shallower).
    """
    n = len(clusters)
    n_genes = model.group_cdf.shape[1]
    groups = cluster_group[clusters]
    depth = np.exp(rng.normal(DEPTH_LOG_MEAN, DEPTH_LOG_SD, size=n)) * depth_factor
    bursts = rng.poisson(depth * model.group_rate[groups] / BURST_MEAN)
    # Visit cells group by group so each group's bursts are one contiguous slice.
    order = np.argsort(groups, kind="stable")
    rows = np.repeat(order, bursts[order])
    ends = np.cumsum(np.bincount(groups[order], weights=bursts[order], minlength=len(model.group_rate)))
    cols = np.empty(len(rows), dtype=np.int64)
    u = rng.random(len(rows))
    start = 0
    for g, end in enumerate(ends.astype(np.int64)):
        if end > start:
            cols[start:end] = _draw(model, g, u[start:end])
        start = end
    own = rng.random(len(rows)) < CLUSTER_SHARE
    if own.any():
        owner = clusters[rows[own]]
        cols[own] = model.cluster_genes[owner, rng.integers(0, 3, size=int(own.sum()))]
    sizes = rng.geometric(1.0 / BURST_MEAN, size=len(rows)).astype(np.float64)

    # Sum bursts per (cell, gene) with a dense bincount over a block of cells: its output is already in
    # CSR order, which a sparse sum-duplicates-and-sort costs ~3x more to reach. Blocks of ~4M cells x
    # genes keep the dense scratch at 32 MB.
    block = max(1, 4_000_000 // n_genes)
    by_row = np.argsort(rows, kind="stable")
    rows, cols, sizes = rows[by_row], cols[by_row], sizes[by_row]
    row_ends = np.cumsum(np.bincount(rows, minlength=n))
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices_parts, data_parts = [], []
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        b0 = row_ends[r0 - 1] if r0 else 0
        b1 = row_ends[r1 - 1]
        keys = (rows[b0:b1] - r0) * n_genes + cols[b0:b1]
        dense = np.bincount(keys, weights=sizes[b0:b1], minlength=(r1 - r0) * n_genes)
        nz = np.flatnonzero(dense)
        r, c = np.divmod(nz, n_genes)
        indices_parts.append(c)
        data_parts.append(dense[nz])
        indptr[r0 + 1 : r1 + 1] = indptr[r0] + np.cumsum(np.bincount(r, minlength=r1 - r0))
    return sp.csr_matrix(
        (np.concatenate(data_parts), np.concatenate(indices_parts), indptr), shape=(n, n_genes)
    )


def _draw(model: SpeciesModel, g: int, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw, exactly searchsorted(cdf, u, side="right"), via a guide table.

    A binary search over 36,601 genes is ~16 cache misses per draw; the guide table jumps to the right
    neighbourhood in one, then a few vectorised steps finish.
    """
    cdf = model.group_cdf[g]
    guide = model.guide[g]
    k = len(guide) - 1
    col = guide[np.minimum((u * k).astype(np.int64), k)]
    todo = np.flatnonzero(cdf[col] <= u)
    while len(todo):
        col[todo] += 1
        todo = todo[cdf[np.minimum(col[todo], len(cdf) - 1)] <= u[todo]]
        # u < 1 = cdf[-1], so a draw never walks past the last gene; the clamp only guards rounding.
        todo = todo[col[todo] < len(cdf) - 1]
    return col


def log2_cpm(raw: sp.csr_matrix) -> sp.csr_matrix:
    """log2(raw / rowsum * 1e6 + 1) as float32: the release's log2 file (docs/release.md, 'Expression
    matrices')."""
    totals = np.asarray(raw.sum(axis=1)).ravel()
    per_nz = np.repeat(totals, np.diff(raw.indptr))
    values = normalise.log2_cpm(raw.data, per_nz).astype(np.float32)
    return sp.csr_matrix((values, raw.indices.copy(), raw.indptr.copy()), shape=raw.shape)
