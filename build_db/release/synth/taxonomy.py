"""The synthetic taxonomy: the real level and term names, a plausible tree, and where each marker belongs.

Sizes match the real taxonomy exactly (4 Neighborhoods, 12 Classes, 36 Subclasses, 61 Groups, 1,435
species-specific Clusters = 1,548 terms). Names are the real ones where docs/release.md gives them and
plausible basal-ganglia names elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import layout as R

# Neighborhood -> Class -> Subclass -> [(Group, relative abundance, programs, home regions)].
# Programs name the marker sets a group expresses (see MARKERS). Home regions: None means everywhere;
# otherwise the group is 50x rarer in libraries dissected elsewhere (dopamine neurons live in SN/VTA).
STR = ("Ca", "CaB", "CaH", "CaT", "Pu", "PuC", "PuPV", "PuR", "NAC", "NACc", "NACs", "Eca")
GP = ("GP", "GPe", "GPi", "VeP")
MID = ("SN", "VTA")
STH = ("STH",)
NAC = ("NAC", "NACc", "NACs", "VeP")

G = tuple  # (name, abundance, programs, regions)

HIERARCHY: dict[str, dict[str, dict[str, list[G]]]] = {
    "Nonneuron": {
        "Astro-Epen": {
            "Astrocyte": [
                ("Astrocyte", 80, ("astro",), None),
                ("Astrocyte GFAP", 20, ("astro", "reactive"), None),
            ],
            "Ependymal": [("Ependymal", 2, ("epen",), ("Eca", "CaB", "CaH", "CaT", "Ca"))],
        },
        "Immune": {
            "Microglia": [
                ("Microglia", 40, ("immune", "microglia"), None),
                ("Microglia CD74", 8, ("immune", "microglia"), None),
            ],
            "BAM": [("BAM", 3, ("immune",), None)],
            "T cell": [("T cell", 1, ("immune", "tcell"), None)],
            "Monocyte": [("Monocyte", 1, ("immune",), None)],
        },
        "OPC-Oligo": {
            "OPC": [("OPC", 35, ("opc",), None)],
            "COP": [("COP", 4, ("opc", "oligo_early"), None)],
            "Oligodendrocyte": [
                ("Oligo OPALIN", 110, ("oligo", "opalin"), None),
                ("Oligo PLEKHG1", 70, ("oligo",), None),
                ("Oligo RBFOX1", 40, ("oligo",), None),
                ("Oligo SLC5A11", 15, ("oligo",), None),
            ],
        },
        "Vascular": {
            "Endothelial": [
                ("Endo Arterial", 5, ("endo",), None),
                ("Endo Venous", 5, ("endo",), None),
                ("Endo Capillary", 8, ("endo",), None),
            ],
            "Pericyte": [("Pericyte", 4, ("pericyte",), None)],
            "SMC": [("SMC", 2, ("pericyte", "smc"), None)],
            "VLMC": [("VLMC", 3, ("vlmc",), None)],
        },
    },
    "Glut Sero Dopa": {
        "F M Glut": {
            "STH Glut": [("STH PITX2 Glut", 6, ("neuron", "glut"), STH)],
            "PF Glut": [("PF Glut", 2, ("neuron", "glut"), STH + MID)],
            "Thalamic Glut": [("TH TCF7L2 Glut", 2, ("neuron", "glut"), STH + GP)],
        },
        "M Dopa": {
            "M Dopa": [
                ("SN SOX6 Dopa", 15, ("neuron", "dopa", "sox6"), MID),
                ("VTA CALB1 Dopa", 8, ("neuron", "dopa", "calb1"), MID),
            ],
        },
    },
    "Subpallium GABA": {
        "CN LGE GABA": {
            "STR D1 MSN": [
                ("STRd D1 Matrix MSN", 120, ("neuron", "gaba", "msn", "d1"), STR),
                ("STRd D1 Striosome MSN", 25, ("neuron", "gaba", "msn", "d1"), STR),
                ("STRv D1 MSN", 40, ("neuron", "gaba", "msn", "d1"), NAC),
                ("STRv D1 NUDAP MSN", 10, ("neuron", "gaba", "msn", "d1"), NAC),
            ],
            "STR D2 MSN": [
                ("STRd D2 Matrix MSN", 110, ("neuron", "gaba", "msn", "d2"), STR),
                ("STRd D2 Striosome MSN", 20, ("neuron", "gaba", "msn", "d2"), STR),
                ("STRv D2 MSN", 35, ("neuron", "gaba", "msn", "d2"), NAC),
                ("STRv D2 PCDH8 MSN", 8, ("neuron", "gaba", "msn", "d2"), NAC),
                ("STRd D2 StrioMat Hybrid MSN", 8, ("neuron", "gaba", "msn", "d2"), STR),
            ],
            "STR Hybrid MSN": [
                ("STR D1D2 Hybrid MSN", 12, ("neuron", "gaba", "msn", "d1", "d2"), STR),
                ("STR D1D2 TAC3 Hybrid MSN", 4, ("neuron", "gaba", "msn", "d1", "d2"), STR),
                ("STR Eccentric MSN", 6, ("neuron", "gaba", "msn"), STR),
            ],
            "OT D1 ICj": [("OT D1 ICj", 3, ("neuron", "gaba", "d1"), NAC)],
            "OT D3 Granular": [("OT D3 Granular", 2, ("neuron", "gaba"), NAC)],
        },
        "CN MGE GABA": {
            "CN Cholinergic GABA": [
                ("STR Cholinergic GABA", 3, ("neuron", "gaba", "chat"), STR),
                ("GP Cholinergic GABA", 1, ("neuron", "gaba", "chat"), GP),
            ],
            "STR SST GABA": [
                ("STR SST CHODL GABA", 3, ("neuron", "gaba", "sst"), STR),
                ("STR SST ADARB2 GABA", 2, ("neuron", "gaba", "sst"), STR),
            ],
            "STR TAC3 PVALB GABA": [
                ("STR TAC3 PLPP4 GABA", 2, ("neuron", "gaba", "pvalb", "tac3"), STR),
                ("STR PVALB PTHLH GABA", 3, ("neuron", "gaba", "pvalb"), STR),
            ],
            "GPe-GPi GABA": [
                ("GPe SOX6 CTXND1 GABA", 8, ("neuron", "gaba", "pvalb", "sox6"), GP),
                ("GPe MEIS2 SOX6 GABA", 4, ("neuron", "gaba", "sox6"), GP),
                ("GPi Shell", 4, ("neuron", "gaba", "sst"), GP),
                ("GPi Core", 4, ("neuron", "gaba", "pvalb"), GP),
                ("GP LHX8 GABA", 2, ("neuron", "gaba", "lhx8"), GP),
            ],
        },
        "CN CGE GABA": {
            "STR VIP GABA": [("STR VIP GABA", 2, ("neuron", "gaba", "vip"), STR)],
            "STR LAMP5 GABA": [("STR LAMP5 GABA", 2, ("neuron", "gaba"), STR)],
        },
        "Cx GABA": {
            "Cx SST GABA": [("Cx SST GABA", 1, ("neuron", "gaba", "sst"), None)],
            "Cx PVALB GABA": [("Cx PVALB GABA", 1, ("neuron", "gaba", "pvalb"), None)],
            "Cx VIP GABA": [("Cx VIP GABA", 1, ("neuron", "gaba", "vip"), None)],
        },
    },
    "Subpallium GABA-Glut": {
        "CN GABA-Glut": {
            "SN GABA-Glut": [("SN SLC17A6 GABA-Glut", 2, ("neuron", "gaba", "glut"), MID)],
            "STH GABA-Glut": [("STH GABA-Glut", 2, ("neuron", "gaba", "glut"), STH)],
        },
        "F M GABA": {
            "SN-VTA GABA": [
                ("SNr GABA", 6, ("neuron", "gaba", "pvalb"), MID),
                ("VTA GABA", 3, ("neuron", "gaba"), MID),
            ],
            "PAG GABA": [("PAG GABA", 1, ("neuron", "gaba"), MID)],
            "ZI GABA": [("ZI GABA", 1, ("neuron", "gaba"), STH)],
        },
    },
}

# Marker symbol -> (programs that express it, level). The level is the marker's share of a cell's UMIs
# where expressed: PLP1 is among the most abundant transcripts in oligodendrocytes (~0.5%), DRD1 is
# a few UMIs per MSN nucleus. Elsewhere a marker keeps 1% of its level (ambient RNA).
MARKERS: dict[str, tuple[tuple[str, ...], float]] = {
    "SNAP25": (("neuron",), 1.5e-3),
    "RBFOX3": (("neuron",), 6e-4),
    "SYT1": (("neuron",), 1.2e-3),
    "GAD1": (("gaba",), 8e-4),
    "GAD2": (("gaba",), 6e-4),
    "SLC32A1": (("gaba",), 3e-4),
    "SLC17A6": (("glut",), 4e-4),
    "SLC17A7": (("glut",), 1e-4),
    "PPP1R1B": (("msn",), 8e-4),
    "DRD1": (("d1",), 4e-4),
    "TAC1": (("d1",), 6e-4),
    "DRD2": (("d2",), 3e-4),
    "PENK": (("d2",), 9e-4),
    "ADORA2A": (("d2",), 2e-4),
    "TH": (("dopa",), 5e-4),
    "SLC6A3": (("dopa",), 4e-4),
    "DDC": (("dopa",), 3e-4),
    "SOX6": (("sox6",), 2e-4),
    "CALB1": (("calb1",), 3e-4),
    "CHAT": (("chat",), 3e-4),
    "SLC5A7": (("chat",), 2e-4),
    "SST": (("sst",), 6e-4),
    "PVALB": (("pvalb",), 4e-4),
    "VIP": (("vip",), 5e-4),
    "TAC3": (("tac3",), 3e-4),
    "LHX8": (("lhx8",), 2e-4),
    "PLP1": (("oligo",), 5e-3),
    "MBP": (("oligo",), 3e-3),
    "MOG": (("oligo",), 6e-4),
    "OPALIN": (("opalin",), 4e-4),
    "BCAS1": (("oligo_early",), 4e-4),
    "PDGFRA": (("opc",), 6e-4),
    "OLIG2": (("opc", "oligo"), 3e-4),
    "AQP4": (("astro",), 1e-3),
    "GFAP": (("astro",), 8e-4),
    "SLC1A2": (("astro",), 2e-3),
    "ALDH1L1": (("astro",), 3e-4),
    "FOXJ1": (("epen",), 3e-4),
    "PTPRC": (("immune",), 4e-4),
    "CSF1R": (("immune",), 5e-4),
    "P2RY12": (("microglia",), 6e-4),
    "CX3CR1": (("microglia",), 3e-4),
    "CD3E": (("tcell",), 3e-4),
    "CLDN5": (("endo",), 6e-4),
    "FLT1": (("endo",), 8e-4),
    "PDGFRB": (("pericyte", "vlmc"), 4e-4),
    "ACTA2": (("smc",), 8e-4),
    "DCN": (("vlmc",), 6e-4),
}
AMBIENT = 0.01


@dataclass(frozen=True)
class Term:
    label: str
    name: str
    level: str
    parent: Term | None
    color: str
    order: int  # 1-based position within its level, in taxonomy (depth-first) order


@dataclass(frozen=True)
class GroupInfo:
    term: Term
    abundance: float
    programs: tuple[str, ...]
    regions: tuple[str, ...] | None


@dataclass
class Taxonomy:
    terms: list[Term]  # every level, in term_order within level, coarse levels first
    groups: list[GroupInfo]
    clusters: list[Term]  # in taxonomy order
    cluster_species: list[str]
    cluster_group: np.ndarray  # index into groups, per cluster
    by_label: dict[str, Term] = field(default_factory=dict)

    def level_terms(self, level: str) -> list[Term]:
        return [t for t in self.terms if t.level == level]

    def ancestors(self, term: Term) -> dict[str, Term]:
        out = {}
        t: Term | None = term
        while t is not None:
            out[t.level] = t
            t = t.parent
        return out


def _color(rng: np.random.Generator) -> str:
    r, g, b = rng.integers(0, 256, size=3)
    return f"#{r:02x}{g:02x}{b:02x}"


# Real total cluster count, split between species roughly in proportion to their cell counts.
CLUSTERS_PER_SPECIES = {"Human": 620, "Macaque": 480, "Marmoset": 335}


def build_taxonomy(seed: int) -> Taxonomy:
    """The fixed tree; colors and the cluster split vary with the seed, names and counts do not."""
    rng = np.random.default_rng([seed, 1])
    counters = {level: 0 for level in R.LEVELS}
    terms: list[Term] = []
    groups: list[GroupInfo] = []

    def make(level: str, name: str, parent: Term | None, label_no: int | None = None) -> Term:
        counters[level] += 1
        number = counters[level] if label_no is None else label_no
        t = Term(
            f"CS20250428_{R.TERM_PREFIX[level]}_{number:04d}",
            name,
            level,
            parent,
            _color(rng),
            counters[level],
        )
        terms.append(t)
        return t

    for nb_name, classes in HIERARCHY.items():
        nb = make("Neighborhood", nb_name, None)
        for cl_name, subclasses in classes.items():
            cl = make("Class", cl_name, nb)
            for sc_name, group_specs in subclasses.items():
                sc = make("Subclass", sc_name, cl)
                for g_name, abundance, programs, regions in group_specs:
                    groups.append(GroupInfo(make("Group", g_name, sc), float(abundance), programs, regions))

    # Clusters: every group has clusters in every species; more abundant groups have more of them.
    # Labels are numbered species by species (Human first), term_order follows the tree, as in the real
    # file where CS20250428_CLUST_0671 is Macaque-490 with term_order 1430.
    weights = np.array([g.abundance for g in groups]) ** 0.6
    per_species: dict[str, np.ndarray] = {}
    for sp, total in CLUSTERS_PER_SPECIES.items():
        counts = np.ones(len(groups), dtype=int)
        extra = total - len(groups)
        share = weights / weights.sum() * extra
        counts += np.floor(share).astype(int)
        remainder = total - counts.sum()
        counts[np.argsort(-(share - np.floor(share)))[:remainder]] += 1
        per_species[sp] = counts
    label_base = {}
    offset = 0
    for sp in CLUSTERS_PER_SPECIES:
        label_base[sp] = offset
        offset += CLUSTERS_PER_SPECIES[sp]
    serial = {sp: 0 for sp in CLUSTERS_PER_SPECIES}
    clusters, cluster_species, cluster_group = [], [], []
    for gi, g in enumerate(groups):
        for sp in CLUSTERS_PER_SPECIES:
            for _ in range(per_species[sp][gi]):
                serial[sp] += 1
                c = make("Cluster", f"{sp}-{serial[sp]}", g.term, label_no=label_base[sp] + serial[sp])
                clusters.append(c)
                cluster_species.append(sp)
                cluster_group.append(gi)
    tax = Taxonomy(terms, groups, clusters, cluster_species, np.array(cluster_group))
    tax.by_label = {t.label: t for t in terms}
    assert [len(tax.level_terms(lv)) for lv in R.LEVELS] == [4, 12, 36, 61, 1435], "taxonomy sizes drifted"
    return tax


LEVEL_DESCRIPTIONS = {
    "Neighborhood": "Broad groupings of cell types sharing developmental origin and neurotransmitter",
    "Class": "Cell classes within neighborhoods",
    "Subclass": "Subclasses of cell classes",
    "Group": "Finest level intended for cross-species comparison",
    "Cluster": "Species-specific leaf clusters",
}

# Abbreviations used in the term names, for abbreviation_term.csv and its map to terms.
ABBREVIATIONS = [
    ("STR", "striatum", "region", "DHBA:10333"),
    ("STRd", "dorsal striatum", "region", "DHBA:10334"),
    ("STRv", "ventral striatum", "region", "DHBA:10335"),
    ("GP", "globus pallidus", "region", "DHBA:10342"),
    ("GPe", "external segment of globus pallidus", "region", "DHBA:10343"),
    ("GPi", "internal segment of globus pallidus", "region", "DHBA:10344"),
    ("SN", "substantia nigra", "region", "DHBA:12152"),
    ("VTA", "ventral tegmental area", "region", "DHBA:12158"),
    ("STH", "subthalamic nucleus", "region", "DHBA:10470"),
    ("OT", "olfactory tubercle", "region", "DHBA:10337"),
    ("MSN", "medium spiny neuron", "cell type", ""),
    ("GABA", "GABAergic", "neurotransmitter", ""),
    ("Glut", "glutamatergic", "neurotransmitter", ""),
    ("Dopa", "dopaminergic", "neurotransmitter", ""),
    ("D1", "dopamine receptor D1 expressing", "gene", "NCBIGene:1812"),
    ("D2", "dopamine receptor D2 expressing", "gene", "NCBIGene:1813"),
    ("OPC", "oligodendrocyte precursor cell", "cell type", "CL:0002453"),
    ("Oligo", "oligodendrocyte", "cell type", "CL:0000128"),
    ("Astro", "astrocyte", "cell type", "CL:0000127"),
    ("Endo", "endothelial cell", "cell type", "CL:0000115"),
    ("ICj", "islands of Calleja", "region", ""),
    ("SST", "somatostatin", "gene", "NCBIGene:6750"),
    ("PVALB", "parvalbumin", "gene", "NCBIGene:5816"),
    ("VIP", "vasoactive intestinal peptide", "gene", "NCBIGene:7432"),
]
