-- expression_annotated: expression with the gene's symbol and the cell's labels, region, donor and
-- taxonomy names. Zeros are absent: for means, divide by the number of cells from `cells`.
create or replace view expression_annotated as
with final as (
    select
        e.species,
        e.gene_index,
        g.gene_identifier,
        g.gene_symbol,
        e.cell_index,
        c.cell_label,
        c.donor_label,
        c.region_of_interest_label,
        c.neighborhood_name,
        c.class_name,
        c.subclass_name,
        c.group_name,
        c.cluster_name,
        e.raw_count,
        e.log2_cpm
    from expression e
    join genes g
        on g.species = e.species
        and g.gene_index = e.gene_index
    join cells c
        on c.species = e.species
        and c.cell_index = e.cell_index
)

select * from final
