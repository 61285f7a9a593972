"""Synthetic donors, libraries, value sets and per-cell metadata rows, with the real release's quirks."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import layout as R
from .taxonomy import Taxonomy

REGIONS = {  # label -> (name, DHBA identifier, anatomical division)
    "Br": ("brain", "DHBA:10155", "Brain"),
    "Ca": ("caudate nucleus", "DHBA:10334", "Basal ganglia"),
    "CaB": ("body of caudate", "DHBA:10336", "Basal ganglia"),
    "CaH": ("head of caudate", "DHBA:10335", "Basal ganglia"),
    "CaT": ("tail of caudate", "DHBA:10337", "Basal ganglia"),
    "Eca": ("peri-caudate ependymal and subependymal zone", "DHBA:10338", "Basal ganglia"),
    "GP": ("globus pallidus", "DHBA:10342", "Basal ganglia"),
    "GPe": ("external segment of globus pallidus", "DHBA:10343", "Basal ganglia"),
    "GPi": ("internal segment of globus pallidus", "DHBA:10344", "Basal ganglia"),
    "NAC": ("nucleus accumbens", "DHBA:10339", "Basal ganglia"),
    "NACc": ("core of nucleus accumbens", "DHBA:10340", "Basal ganglia"),
    "NACs": ("shell of nucleus accumbens", "DHBA:10341", "Basal ganglia"),
    "Pu": ("putamen", "DHBA:10346", "Basal ganglia"),
    "PuC": ("caudal putamen", "DHBA:11538", "Basal ganglia"),
    "PuPV": ("posteroventral putamen", "DHBA:11539", "Basal ganglia"),
    "PuR": ("rostral putamen", "DHBA:11537", "Basal ganglia"),
    "SN": ("substantia nigra", "DHBA:12152", "Midbrain"),
    "STH": ("subthalamic nucleus", "DHBA:10470", "Diencephalon"),
    "VTA": ("ventral tegmental area", "DHBA:12158", "Midbrain"),
    "VeP": ("ventral pallidus", "DHBA:10345", "Basal ganglia"),
}
SPECIES_INFO = {  # genus -> [(scientific name, NCBITaxon, donor label prefix, n donors)]
    "Human": [("Homo sapiens", "NCBITaxon:9606", "H", 5)],
    "Macaque": [
        ("Macaca mulatta", "NCBITaxon:9544", "Q", 7),
        ("Macaca nemestrina", "NCBITaxon:9545", "QM", 4),
    ],
    "Marmoset": [("Callithrix jacchus", "NCBITaxon:9483", "CJ", 6)],
}
GENUS_TAXON = {"Human": "NCBITaxon:9605", "Macaque": "NCBITaxon:9539", "Marmoset": "NCBITaxon:9481"}
LIBRARIES = {"Human": 150, "Macaque": 170, "Marmoset": 97}  # ~417 in all, as in the release
ENRICHMENT = ("50% NeuN+, 35% OLIG2-, 15% OLIG2+", "70% NeuN+, 30% NeuN-", "No FACS", "NeuN+")
ASSIGNED_SHARE = 1_896_133 / 2_936_782  # cells with a cluster in the real release: ~64.6%
# Matrix cells that cell_metadata.csv leaves out: WMB-10X's tutorial counts 131,212 in an h5ad against
# 130,555 in cell_metadata ("failed QC"), 0.5%; the bucket-shaped synthetic release reproduces that share.
OUTSIDE_METADATA_SHARE = 657 / 131_212
_LETTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
_ACGT = np.array(list("ACGT"))


def _nhash(rng: np.random.Generator, prefix: str) -> str:
    return f"{prefix}-{''.join(rng.choice(_LETTERS, 6))}{rng.integers(100000, 999999)}"


def _hexcolor(rng: np.random.Generator) -> str:
    r, g, b = rng.integers(0, 256, size=3)
    return f"#{r:02x}{g:02x}{b:02x}"


def donors(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, 4])
    rows = []
    for genus, kinds in SPECIES_INFO.items():
        for sci, taxon, prefix, n in kinds:
            for i in range(n):
                year = 18 + (i % 7)
                if genus == "Human":
                    age = int(rng.integers(19, 80))
                    label = f"{prefix}{year}.30.{i + 1:03d}"
                elif genus == "Macaque":
                    age = int(rng.integers(3, 20))
                    label = f"{prefix}{year}.{26 if prefix == 'Q' else 50}.{i + 1:03d}"
                else:
                    age = int(rng.integers(2, 12))
                    label = f"{prefix}{year}.56.{i + 1:03d}"
                rows.append(
                    (
                        label,
                        taxon,
                        sci,
                        genus,
                        ("Female", "Male")[int(rng.integers(0, 2))],
                        f"{age} yrs",
                        float(age),
                        "years",
                        _nhash(rng, "DO"),
                    )
                )
    return pd.DataFrame(rows, columns=list(R.DONOR.columns))


def libraries(seed: int, donor_table: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng([seed, 5])
    rows: list[tuple] = []
    serial = 0
    for genus, n in LIBRARIES.items():
        species_donors = donor_table.loc[donor_table.species_genus == genus, "donor_label"].tolist()
        regions = ["Br"] if genus == "Marmoset" else [r for r in REGIONS if r != "Br"]
        for i in range(n):
            plate, well = 2000 + serial // 96, serial % 96
            well_name = f"{'ABCDEFGH'[well // 12]}{well % 12 + 1:02d}"
            sample = f"{plate}_{well_name}"
            date = f"2{rng.integers(2, 5)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
            label = f"L8XR_{date}_{serial % 40 + 1:02d}_{well_name}"
            while label in {r[0] for r in rows}:
                serial += 1
                label = f"L8XR_{date}_{serial % 40 + 1:02d}_{well_name}"
            donor = species_donors[i % len(species_donors)]
            region = regions[int(rng.integers(0, len(regions)))]
            name, dhba, division = REGIONS[region]
            slab = f"{donor}.CX.{int(rng.integers(1, 40)):02d}"
            rows.append(
                (
                    label,
                    "10xMultiome;GEX",
                    _nhash(rng, "LI"),
                    sample,
                    ENRICHMENT[int(rng.integers(0, len(ENRICHMENT)))],
                    "Nuclei",
                    dhba,
                    name,
                    region,
                    division,
                    donor,
                    f"{slab}.{region}.01",
                    _nhash(rng, "RI"),
                    slab,
                    _nhash(rng, "SL"),
                )
            )
            serial += 1
    return pd.DataFrame(rows, columns=list(R.LIBRARY.columns))


def value_sets(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, 6])
    rows = []
    for i, sex in enumerate(("Female", "Male")):
        rows.append((sex, "donor", "donor_sex", sex, i + 1, "", "", _hexcolor(rng)))
    for i, genus in enumerate(SPECIES_INFO):
        rows.append((genus, "donor", "species_genus", genus, i + 1, GENUS_TAXON[genus], "", _hexcolor(rng)))
    order = 0
    for genus, kinds in SPECIES_INFO.items():
        for sci, taxon, _, _ in kinds:
            order += 1
            rows.append((sci, "donor", "species_scientific_name", sci, order, taxon, genus, _hexcolor(rng)))
    for i, (label, (name, dhba, _)) in enumerate(REGIONS.items()):
        rows.append((label, "library", "region_of_interest_label", name, i + 1, dhba, "", _hexcolor(rng)))
    return pd.DataFrame(rows, columns=list(R.VALUE_SETS.columns))


@dataclass
class SpeciesLayout:
    """How a species' cells are spread over libraries and cell types; everything per library, not per cell,
    so memory does not grow with the number of cells."""

    species: str
    libraries: pd.DataFrame  # this species' libraries
    cells_per_library: np.ndarray
    group_cdf: np.ndarray  # libraries x groups
    cluster_ids: list[np.ndarray]  # per group: this species' cluster indices
    cluster_cdf: list[np.ndarray]  # per group: cumulative cluster weights
    job_ids: list[str]  # alignment_job_id per library: mixed 40-hex digests and plain integers
    umap_centers: np.ndarray  # per cluster (all species): x, y


def layout(
    species: str,
    n_cells: int,
    tax: Taxonomy,
    library_table: pd.DataFrame,
    donor_table: pd.DataFrame,
    seed: int,
) -> SpeciesLayout:
    rng = np.random.default_rng([seed, 7, R.SPECIES.index(species)])
    genus_of = dict(zip(donor_table.donor_label, donor_table.species_genus, strict=True))
    libs = library_table[library_table.donor_label.map(genus_of) == species].reset_index(drop=True)
    weights = rng.gamma(4.0, size=len(libs))
    per_lib = rng.multinomial(n_cells, weights / weights.sum())
    abundance = np.array([g.abundance for g in tax.groups])
    cdf = np.empty((len(libs), len(tax.groups)))
    for i, region in enumerate(libs.region_of_interest_label):
        home = np.array([g.regions is None or region == "Br" or region in g.regions for g in tax.groups])
        w = abundance * np.where(home, 1.0, 0.02)
        cdf[i] = np.cumsum(w) / w.sum()
    species_of = np.array(tax.cluster_species)
    ids, ccdf = [], []
    for gi in range(len(tax.groups)):
        members = np.flatnonzero((tax.cluster_group == gi) & (species_of == species))
        w = rng.gamma(1.5, size=len(members))
        ids.append(members)
        ccdf.append(np.cumsum(w) / w.sum())
    jobs = [
        "".join(rng.choice(list("0123456789abcdef"), 40))
        if rng.random() < 0.6
        else str(int(rng.integers(230000, 250000)))
        for _ in range(len(libs))
    ]
    return SpeciesLayout(species, libs, per_lib, cdf, ids, ccdf, jobs, umap_centers(tax, seed))


def umap_centers(tax: Taxonomy, seed: int) -> np.ndarray:
    """2D positions per cluster: neighborhoods far apart, classes and groups nested inside them."""
    rng = np.random.default_rng([seed, 8])
    pos: dict[str, np.ndarray] = {}
    scale = {"Neighborhood": 9.0, "Class": 3.5, "Subclass": 1.6, "Group": 0.8, "Cluster": 0.25}
    out = np.empty((len(tax.clusters), 2))
    for t in tax.terms:
        base = pos[t.parent.label] if t.parent is not None else np.zeros(2)
        angle = rng.uniform(0, 2 * np.pi)
        pos[t.label] = base + scale[t.level] * np.array([np.cos(angle), np.sin(angle)])
    for i, c in enumerate(tax.clusters):
        out[i] = pos[c.label]
    return out


def barcodes(library_index: int, positions: np.ndarray) -> np.ndarray:
    """16-base barcodes, unique within a library: an odd multiplier mod 4^16 = 2^32 is a bijection."""
    codes = (
        positions.astype(np.uint64) * np.uint64(2654435761) + np.uint64(library_index * 7919 + 1_234_567)
    ) % np.uint64(2**32)
    digits = (codes[:, None] >> (np.arange(15, -1, -1, dtype=np.uint64) * np.uint64(2))) & np.uint64(3)
    return np.array(["".join(row) for row in _ACGT[digits.astype(np.int64)]], dtype=object)


def uuids(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    return [str(uuid.UUID(bytes=bytes(r), version=4)) for r in raw]
