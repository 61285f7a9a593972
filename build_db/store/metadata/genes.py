"""The genes table: each matrix's genes joined to its gene table (per species or shared) by identifier."""

from __future__ import annotations

from ...release import layout as R
from ..paths import species_part
from .views import MetadataViews, sql_literal


def build_genes(m: MetadataViews) -> None:
    """The genes table: each matrix's genes joined to its gene table by identifier."""
    parts = []
    for sp in m.species:
        spec = R.GENE_TABLES[sp]
        view = f"genes_{sp.lower()}"
        m.load(spec, view)
        have = set(m.con.sql(f"select * from {view} limit 0").columns)
        extra = ", ".join(
            f"{c}" if c in have else f"null::varchar as {c}"
            for c in ("name", "mapped_ncbi_identifier", "biotype")
        )
        buckets = sql_literal(species_part(m.store, "gene_buckets", sp))
        if m.layout.shared_gene_table:  # one gene.csv for all species: this matrix's genes
            m.load(spec, f"{view}_all")
            m.con.execute(
                f"create or replace temp view {view} as select * from {view}_all where gene_identifier "
                f"in (select gene_identifier from read_parquet({buckets}))"
            )
        m.fail_if(
            f"select gene_identifier, count(*) from {view} group by 1 having count(*) > 1 limit 1",
            "gene_identifier {0} appears {1} times; identifiers must be unique",
            spec,
        )
        m.fail_if(
            f"select b.gene_identifier from read_parquet({buckets}) b anti join {view} g "
            "using (gene_identifier) limit 1",
            "has no row for gene {0} of the matrix; matrix and gene table are from different releases: "
            "download both again",
            spec,
        )
        parts.append(f"""select b.species::varchar as species, b.gene_index, b.gene_identifier,
                nullif(g.gene_symbol, '') as gene_symbol, b.gene_bucket, {extra}
            from read_parquet({buckets}) b join {view} g using (gene_identifier)""")
    m.con.execute("create temp table genes as " + " union all ".join(parts) + " order by species, gene_index")
