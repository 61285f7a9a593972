"""The HMBA-BG release layout, declared once: directories, file names, CSV columns, species.

Everything that writes (synth), reads (build) or validates (check) a release takes its names from here.
The source for every name is docs/release.md ('The release's files, for reference').
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import HmbaError

VERSION = "20250630"
BUCKET = "allen-brain-cell-atlas"
BUCKET_URL = f"https://{BUCKET}.s3.us-west-2.amazonaws.com/"
RESOURCE_URI = f"s3://{BUCKET}/"

EXPRESSION_DIR = "HMBA-10xMultiome-BG"
TAXONOMY_DIR = "HMBA-BG-taxonomy-CCN20250428"  # 20250630's; the default
# The taxonomy's directory under either name: releases documented after 20250630 drop the suffix
# (metadata/HMBA-BG-taxonomy/20261031/, docs/release.md, 'Releases after 20250630'). A release's manifest
# says which one it uses (manifest.Layout picks it).
TAXONOMY_DIRS = (TAXONOMY_DIR, "HMBA-BG-taxonomy")
# The real manifest lists the whole bucket (~36 datasets, many with the same file stems: cell_metadata,
# gene, donor); everything here reads only these two directories of it (docs/release.md, 'The bucket and its
# manifest').
DIRECTORIES = (EXPRESSION_DIR, *TAXONOMY_DIRS)
DATASET_LABEL = "HMBA-10xMultiome-BG"

SPECIES = ("Human", "Macaque", "Marmoset")

# The release's terms of use and how to cite it: carried into build.json, the catalog (table `licence`),
# `hmba-db info` and every exported AnnData, so they travel with the numbers.
DATA_LICENCE = "CC BY-NC 4.0"
DATA_LICENCE_URL = "https://creativecommons.org/licenses/by-nc/4.0/"
CITATION = (
    "Allen Institute for Brain Science. Human and Mammalian Brain Atlas, basal ganglia: single-nucleus "
    "10x Multiome GEX (HMBA-10xMultiome-BG) and taxonomy {taxonomy} ({taxonomy_version}), release {version}. "
    "Allen Brain Cell Atlas, s3://allen-brain-cell-atlas/."
)


def terms_of_use(
    version: str = "20250630", taxonomy: str = TAXONOMY_DIR, taxonomy_version: str | None = None
) -> dict[str, str]:
    return {
        "dataset": f"{EXPRESSION_DIR} + {taxonomy}",
        "taxonomy": f"{taxonomy} {taxonomy_version or version}",
        "data_licence": DATA_LICENCE,
        "data_licence_url": DATA_LICENCE_URL,
        "citation": CITATION.format(
            version=version, taxonomy=taxonomy, taxonomy_version=taxonomy_version or version
        ),
    }


# Real cells x genes per species matrix (docs/release.md, 'Expression matrices'); `synth --scale 1`
# reproduces them.
REAL_CELLS = {"Human": 1_683_105, "Macaque": 839_102, "Marmoset": 414_575}
REAL_GENES = {"Human": 36_601, "Macaque": 35_219, "Marmoset": 35_787}

MATRIX_KINDS = ("raw", "log2")
# What `download` and `check` take by default; `mapmycells` (the taxonomy's ~1 GB MapMyCells pair,
# docs/release.md, 'MapMyCells resources') only when asked for, since the store does not read it.
PARTS = ("raw", "log2", "metadata", "taxonomy")
ALL_PARTS = (*PARTS, "mapmycells")
MAPMYCELLS_KIND = "mapmycells"
# Some releases ship one gene table for all species (the Aligned release's gene.csv) instead of one per
# species; the layout takes whichever our metadata directory lists (docs/release.md, 'Metadata').
SHARED_GENE_TABLE = "gene"


def manifest_path(version: str = VERSION) -> str:
    return f"releases/{version}/manifest.json"


def matrix_stem(species: str) -> str:
    """The h5ad file stem, which is also the cells' `feature_matrix_label`."""
    return f"{EXPRESSION_DIR}-{species}"


def matrix_path(species: str, kind: str, version: str = VERSION) -> str:
    return f"expression_matrices/{EXPRESSION_DIR}/{version}/{matrix_stem(species)}-{kind}.h5ad"


def metadata_path(name: str, version: str = VERSION) -> str:
    return f"metadata/{EXPRESSION_DIR}/{version}/{name}.csv"


def taxonomy_path(name: str, version: str = VERSION) -> str:
    return f"metadata/{TAXONOMY_DIR}/{version}/{name}.csv"


def gene_table(species: str) -> str:
    return f"{species.lower()}_gene"


@dataclass(frozen=True)
class CsvSpec:
    """One release CSV: where it lives, its key, and the columns a loader needs.

    `columns` is the exact header the release writes (and synth reproduces, in this order); `required` is
    what a loader cannot do without, so a reordered or extended header is accepted and a missing required
    column is not. The other columns only enrich the store: missing, they are NULL and the build says so.
    `optional_file`: a file the store can do without (empty tables and a note when the manifest does not
    list it).
    """

    name: str
    directory: str  # EXPRESSION_DIR or TAXONOMY_DIR
    columns: tuple[str, ...]
    key: tuple[str, ...]
    required: tuple[str, ...] | None = None
    species: str | None = None  # set for the per-species gene tables
    optional_file: bool = False

    @property
    def needed(self) -> tuple[str, ...]:
        return self.required if self.required is not None else self.columns

    @property
    def optional(self) -> tuple[str, ...]:
        """Columns that only enrich: NULL when a release's file lacks them."""
        return tuple(c for c in self.columns if c not in self.needed)

    def relative_path(self, version: str = VERSION) -> str:
        if self.directory == EXPRESSION_DIR:
            return metadata_path(self.name, version)
        return taxonomy_path(self.name, version)

    @property
    def part(self) -> str:
        return "metadata" if self.directory == EXPRESSION_DIR else "taxonomy"


CELL_METADATA = CsvSpec(
    "cell_metadata",
    EXPRESSION_DIR,
    (
        "cell_label",
        "cell_barcode",
        "donor_label",
        "barcoded_cell_sample_label",
        "library_label",
        "alignment_job_id",
        "doublet_score",
        "umi_count",
        "feature_matrix_label",
        "dataset_label",
        "abc_sample_id",
    ),
    key=("cell_label",),
    required=(
        "cell_label",
        "donor_label",
        "barcoded_cell_sample_label",
        "library_label",
        "feature_matrix_label",
    ),
)
DONOR = CsvSpec(
    "donor",
    EXPRESSION_DIR,
    (
        "donor_label",
        "donor_species",
        "species_scientific_name",
        "species_genus",
        "donor_sex",
        "donor_age",
        "donor_age_value",
        "donor_age_unit",
        "donor_nhash_id",
    ),
    key=("donor_label",),
    required=("donor_label", "species_genus"),
)
LIBRARY = CsvSpec(
    "library",
    EXPRESSION_DIR,
    (
        "library_label",
        "library_method",
        "library_nhash_id",
        "barcoded_cell_sample_label",
        "enrichment_population",
        "cell_specimen_type",
        "parcellation_term_identifier",
        "region_of_interest_name",
        "region_of_interest_label",
        "anatomical_division_label",
        "donor_label",
        "specimen_dissected_roi_label",
        "specimen_dissected_roi_nhash_id",
        "slab_label",
        "slab_nhash_id",
    ),
    key=("library_label",),
    required=("library_label", "barcoded_cell_sample_label", "region_of_interest_label", "donor_label"),
)
VALUE_SETS = CsvSpec(
    "value_sets",
    EXPRESSION_DIR,
    (
        "label",
        "table",
        "field",
        "description",
        "order",
        "external_identifier",
        "parent_label",
        "color_hex_triplet",
    ),
    key=("field", "label"),
    required=("label", "field"),
)
GENE_TABLES = {
    species: CsvSpec(
        gene_table(species),
        EXPRESSION_DIR,
        # The other columns vary by species; synth writes a few so the loader's keep-as-text path runs.
        ("gene_identifier", "gene_symbol", "name", "mapped_ncbi_identifier")
        + (("biotype",) if species == "Human" else ()),
        key=("gene_identifier",),
        required=("gene_identifier", "gene_symbol"),
        species=species,
    )
    for species in SPECIES
}

TERM_SET = CsvSpec(
    "cluster_annotation_term_set",
    TAXONOMY_DIR,
    ("label", "name", "description", "order"),
    key=("label",),
    required=("label", "name", "order"),
)
TERM = CsvSpec(
    "cluster_annotation_term",
    TAXONOMY_DIR,
    (
        "label",
        "name",
        "cluster_annotation_term_set_label",
        "cluster_annotation_term_set_name",
        "color_hex_triplet",
        "term_order",
        "term_set_order",
        "parent_term_label",
        "parent_term_name",
        "parent_term_set_label",
    ),
    key=("label",),
    required=(
        "label",
        "name",
        "cluster_annotation_term_set_label",
        "cluster_annotation_term_set_name",
        "term_order",
        "term_set_order",
        "parent_term_label",
    ),
)
CLUSTER = CsvSpec(
    "cluster",
    TAXONOMY_DIR,
    ("label", "cluster_alias", "number_of_cells"),
    key=("label",),
    required=("label", "cluster_alias"),
)
CLUSTER_MEMBERSHIP = CsvSpec(
    "cluster_to_cluster_annotation_membership",
    TAXONOMY_DIR,
    (
        "cluster_annotation_term_label",
        "cluster_annotation_term_set_label",
        "cluster_alias",
        "cluster_annotation_term_set_name",
        "cluster_annotation_term_name",
    ),
    key=("cluster_alias", "cluster_annotation_term_set_label"),
    required=("cluster_annotation_term_label", "cluster_alias", "cluster_annotation_term_set_name"),
)
CELL_MEMBERSHIP = CsvSpec(
    "cell_to_cluster_membership",
    TAXONOMY_DIR,
    ("cell_label", "cluster_alias", "cluster_label"),
    key=("cell_label",),
    required=("cell_label", "cluster_alias"),
)
EMBEDDING = CsvSpec(
    "cell_2d_embedding_coordinates", TAXONOMY_DIR, ("cell_label", "x", "y"), key=("cell_label",)
)
ABBREVIATION = CsvSpec(
    "abbreviation_term",
    TAXONOMY_DIR,
    (
        "abbreviation_term",
        "abbreviation_meaning",
        "abbreviation_type",
        "primary_identifier",
        "secondary_identifier",
    ),
    key=("abbreviation_term",),
    required=("abbreviation_term",),
    optional_file=True,
)
ABBREVIATION_MAP = CsvSpec(
    "cluster_annotation_to_abbreviation_map",
    TAXONOMY_DIR,
    ("cluster_annotation_term_label", "abbreviation_term"),
    key=("cluster_annotation_term_label", "abbreviation_term"),
    optional_file=True,
)

METADATA_CSVS = (CELL_METADATA, DONOR, LIBRARY, VALUE_SETS, *GENE_TABLES.values())
TAXONOMY_CSVS = (
    TERM_SET,
    TERM,
    CLUSTER,
    CLUSTER_MEMBERSHIP,
    CELL_MEMBERSHIP,
    EMBEDDING,
    ABBREVIATION,
    ABBREVIATION_MAP,
)
ALL_CSVS = METADATA_CSVS + TAXONOMY_CSVS

# The taxonomy's five levels, coarse to fine (docs/release.md, 'Taxonomy').
LEVELS = ("Neighborhood", "Class", "Subclass", "Group", "Cluster")
LEVEL_LABELS = {name: f"CCN20250428_LEVEL_{i}" for i, name in enumerate(LEVELS)}
TERM_PREFIX = {
    "Neighborhood": "NEIGH",
    "Class": "CLASS",
    "Subclass": "SUBCL",
    "Group": "GROUP",
    "Cluster": "CLUST",
}

# Accepted stored dtypes of the raw counts (docs/release.md, 'Expression matrices': unknown, so accept all
# plausible ones).
RAW_DTYPES = ("float32", "float64", "int32", "int64", "uint16", "uint32")


CSV_NAMES = frozenset({spec.name for spec in ALL_CSVS} | {SHARED_GENE_TABLE})


def csvs_for(species: tuple[str, ...] | list[str], parts: tuple[str, ...] | list[str]) -> list[CsvSpec]:
    """The CSVs a release needs for these species and parts (gene tables only for the chosen species)."""
    out = []
    for spec in ALL_CSVS:
        if spec.part not in parts:
            continue
        if spec.species is not None and spec.species not in species:
            continue
        out.append(spec)
    return out


def local(release: Path, relative_path: str) -> Path:
    return Path(release) / relative_path


def _named(value, choices: tuple[str, ...], kind: str, what: str) -> str:
    match = {c.lower(): c for c in choices}.get(str(value).strip().lower())
    if match is None:
        raise HmbaError(
            f"{what}={value}: unknown {kind}; choose from {', '.join(choices)}", key=what.split()[-1]
        )
    return match


def species_named(value, what: str = "species") -> str:
    """A species by name in any case ('human' -> 'Human'), as the CLI takes it; one line naming the
    choices otherwise. `what` is how the caller names the parameter in that line."""
    return _named(value, SPECIES, "species", what)


def level_named(value, what: str = "level") -> str:
    """A taxonomy level by name in any case ('subclass' -> 'Subclass'); one line naming the choices
    otherwise."""
    return _named(value, LEVELS, "taxonomy level", what)
