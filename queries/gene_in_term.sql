-- name: gene_in_term
-- title: One gene in one taxonomy term, across dissected regions and donors
-- description: Mean log2(CPM+1), fraction expressing and pseudobulk CPM of one gene among the cells of
-- one term, per dissected region and per donor, for one species. A term of the Group level or a coarser
-- one sums the precomputed region x Group and donor x Group statistics of its Groups (exact: a Group lies
-- wholly inside it); a Cluster is computed from the gene's rows in the expression store, as the
-- statistics stop at Group. Every region and donor with a cell of the term is listed, 0 where no cell
-- expresses the gene; regions in display order, then donors by label.
-- param species species = Human: Species
-- param gene gene = DRD1: Gene symbol
-- param level level = Subclass: Taxonomy level of the term
-- param term term = STR D1 MSN: Taxonomy term, by name or label
-- plot: bar x=label y=mean_log2_cpm facet=dimension
-- example: gene=PPP1R1B level=Group 'term=STRd D1 Matrix MSN'
with members as (
    select
        group_label,
        region_of_interest_label,
        any_value(region_of_interest_name) as region_name,
        any_value(region_order) as region_order,
        donor_label,
        count(*) as n_cells,
        sum(total_counts) as total_counts
    from cells
    where species = $species
        and case $level
            when 'Neighborhood' then neighborhood_label
            when 'Class' then class_label
            when 'Subclass' then subclass_label
            when 'Group' then group_label
            else cluster_label
        end = $term
    group by group_label, region_of_interest_label, donor_label
),

places as (
    select
        'region' as dimension,
        region_of_interest_label as label,
        any_value(region_name) as name,
        min(region_order) as place_order,
        sum(n_cells)::bigint as n_cells,
        sum(total_counts) as total_counts
    from members
    group by region_of_interest_label
    union all
    select 'donor', donor_label, donor_label, null, sum(n_cells)::bigint, sum(total_counts)
    from members
    group by donor_label
),

group_sums as (  -- Neighborhood to Group: the statistics of the term's Groups
    select 'region' as dimension, region_of_interest_label as label, sum_log2_cpm, n_expressing, sum_raw
    from region_group_gene_sums
    where species = $species and $level <> 'Cluster' and gene_index in $gene_indexes
        and group_label in (select group_label from members)
    union all
    select 'donor', donor_label, sum_log2_cpm, n_expressing, sum_raw
    from donor_group_gene_sums
    where species = $species and $level <> 'Cluster' and gene_index in $gene_indexes
        and group_label in (select group_label from members)
),

cluster_rows as (  -- a Cluster: the gene's own rows
    select cells.region_of_interest_label, cells.donor_label, e.log2_cpm, e.raw_count
    from expression as e
    join cells
        on cells.species = e.species
        and cells.cell_index = e.cell_index
    where e.species = $species and $level = 'Cluster' and e.gene_bucket in $gene_buckets
        and e.gene_index in $gene_indexes and cells.cluster_label = $term
),

sums as (
    select dimension, label, sum(sum_log2_cpm) as sum_log2_cpm, sum(n_expressing) as n_expressing,
        sum(sum_raw) as sum_raw
    from (
        select * from group_sums
        union all
        select 'region', region_of_interest_label, log2_cpm, 1, raw_count from cluster_rows
        union all
        select 'donor', donor_label, log2_cpm, 1, raw_count from cluster_rows
    )
    group by dimension, label
),

final as (
    select
        places.dimension,
        places.label,
        places.name,
        genes.gene_symbol,
        places.n_cells,
        coalesce(sums.sum_log2_cpm, 0) / places.n_cells as mean_log2_cpm,
        coalesce(sums.n_expressing, 0) / places.n_cells as fraction_expressing,
        coalesce(sums.sum_raw, 0) / places.total_counts * 1e6 as pseudobulk_cpm,
        places.place_order
    from places
    cross join selected_genes as genes
    left join sums
        on sums.dimension = places.dimension
        and sums.label = places.label
)

select dimension, label, name, gene_symbol, n_cells, mean_log2_cpm, fraction_expressing, pseudobulk_cpm
from final
order by dimension desc, place_order, label
