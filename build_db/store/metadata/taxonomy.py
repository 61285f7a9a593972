"""The taxonomy: levels, terms, and each cluster's five-level path pivoted into one row."""

from __future__ import annotations

from ...release import layout as R
from .. import schema as S
from .views import MetadataViews


def build_taxonomy(m: MetadataViews) -> None:
    """Levels, terms and clusters with their five-level paths; the tree checked."""
    c = m.con
    lv_order = m.typed("levels_csv", R.TERM_SET, '"order"', "INTEGER", "label")
    c.execute(
        f"create temp table taxonomy_levels as select label as level_label, name as level, description, "
        f"{lv_order} as level_order from levels_csv"
    )
    m.unique("terms_csv", "label", "term {0} appears {1} times; each term must be listed once", R.TERM)
    t_order = m.typed("terms_csv", R.TERM, "term_order", "INTEGER", "label")
    s_order = m.typed("terms_csv", R.TERM, "term_set_order", "INTEGER", "label")
    c.execute(f"""create temp table terms as select label as term_label, name as term_name,
        cluster_annotation_term_set_label as level_label, cluster_annotation_term_set_name as level,
        color_hex_triplet as color, {t_order} as term_order, {s_order} as level_order,
        nullif(parent_term_label, '') as parent_term_label,
        nullif(parent_term_name, '') as parent_term_name,
        nullif(parent_term_set_label, '') as parent_level_label from terms_csv""")
    m.fail_if(
        "select t.term_label, t.parent_term_label from terms t where parent_term_label is not null "
        "and parent_term_label not in (select term_label from terms) limit 1",
        "term {0} has parent {1}, which is not a term; download the taxonomy again",
        R.TERM,
    )
    # A tree: each term's parent one level up, only the top level without a parent.
    m.fail_if(
        "select t.term_label, t.level, p.term_label, p.level from terms t join terms p "
        "on p.term_label = t.parent_term_label where p.level_order <> t.level_order - 1 limit 1",
        "term {0} ({1}) has parent {2} ({3}); a term's parent must be at the level just above it: "
        "download the taxonomy again",
        R.TERM,
    )
    m.fail_if(
        "select term_label, level from terms where parent_term_label is null "
        "and level_order > (select min(level_order) from terms) limit 1",
        "term {0} ({1}) has no parent; only the top level's terms are roots: download the taxonomy again",
        R.TERM,
    )
    n_cells = m.typed("cluster_csv", R.CLUSTER, "number_of_cells", "INTEGER", "label")
    m.unique(
        "cluster_csv",
        "cluster_alias",
        "cluster_alias {0} appears {1} times; each cluster must be listed once",
        R.CLUSTER,
    )
    # One term per cluster and level, and every term known.
    m.fail_if(
        "select cluster_alias, cluster_annotation_term_set_name, count(*) from ctc_csv "
        "group by 1, 2 having count(*) > 1 limit 1",
        "cluster {0} has {2} terms at level {1}; expected one",
        R.CLUSTER_MEMBERSHIP,
    )
    m.fail_if(
        "select cluster_alias, cluster_annotation_term_label from ctc_csv where "
        "cluster_annotation_term_label not in (select term_label from terms) limit 1",
        "cluster {0} names term {1}, which cluster_annotation_term.csv does not list",
        R.CLUSTER_MEMBERSHIP,
    )
    # Each cluster's path is the same in both files: its membership term at every level is the term table's
    # parent of its term one level down, at the level the membership names, ending at its own label.
    m.fail_if(
        "select a.cluster_alias, a.cluster_annotation_term_label, a.cluster_annotation_term_set_name, "
        "t.level from ctc_csv a join terms t on t.term_label = a.cluster_annotation_term_label "
        "where t.level <> a.cluster_annotation_term_set_name limit 1",
        "cluster {0} names {1} as its {2} term, but {1} is a {3} term; download the taxonomy again",
        R.CLUSTER_MEMBERSHIP,
    )
    m.fail_if(
        "select a.cluster_alias, a.cluster_annotation_term_label, b.cluster_annotation_term_label, "
        "t.parent_term_label from ctc_csv a join terms t on t.term_label = a.cluster_annotation_term_label "
        "join ctc_csv b on b.cluster_alias = a.cluster_alias "
        "join terms tb on tb.term_label = b.cluster_annotation_term_label "
        "and tb.level_order = t.level_order - 1 "
        "where t.parent_term_label is distinct from b.cluster_annotation_term_label limit 1",
        "cluster {0} puts {1} under {2}, but cluster_annotation_term.csv gives {1} the parent {3}; the "
        "two taxonomy files disagree: download the taxonomy again",
        R.CLUSTER_MEMBERSHIP,
    )
    m.fail_if(
        "select k.cluster_alias, k.label, a.cluster_annotation_term_label from cluster_csv k "
        "join ctc_csv a using (cluster_alias) join terms t on t.term_label = a.cluster_annotation_term_label "
        "where t.level_order = (select max(level_order) from terms) and a.cluster_annotation_term_label "
        "<> k.label limit 1",
        "cluster {0} is {1} in cluster.csv but {2} in the membership file; download the taxonomy again",
        R.CLUSTER,
    )
    m.fail_if(
        "select cluster_alias from cluster_csv where cluster_alias not in "
        "(select cluster_alias from ctc_csv) limit 1",
        "cluster {0} has no terms in cluster_to_cluster_annotation_membership.csv; download the "
        "taxonomy again",
        R.CLUSTER,
    )
    pivots = []
    for level in R.LEVELS:
        p = S.LEVEL_PREFIX[level]
        pivots.append(f"""max(case when t.level = '{level}' then t.term_label end) as {p}_label,
            max(case when t.level = '{level}' then t.term_name end) as {p}_name,
            max(case when t.level = '{level}' then t.color end) as {p}_color,
            max(case when t.level = '{level}' then t.term_order end) as {p}_order""")
    c.execute(f"""create temp table clusters as
        select k.label as cluster_label, k.cluster_alias, split_part(t_c.term_name, '-', 1) as species,
               {n_cells} as number_of_cells,
               {", ".join(f"p.{n}" for n in level_names() if n != "cluster_label")}
        from cluster_csv k
        join (select m.cluster_alias, {", ".join(pivots)} from ctc_csv m
              join terms t on t.term_label = m.cluster_annotation_term_label group by m.cluster_alias) p
          using (cluster_alias)
        left join terms t_c on t_c.term_label = k.label""")
    m.fail_if(
        "select cluster_alias from clusters where "
        + " or ".join(f"{S.LEVEL_PREFIX[lv]}_label is null" for lv in R.LEVELS)
        + " limit 1",
        "cluster {0} lacks a term at some level; download the taxonomy again",
        R.CLUSTER_MEMBERSHIP,
    )
    c.execute(
        "create temp table abbreviations as select "
        + ", ".join(S.ABBREVIATIONS.column_names)
        + " from abbr_csv"
    )
    c.execute(
        "create temp table term_abbreviations as select cluster_annotation_term_label as term_label, "
        "abbreviation_term from abbr_map_csv"
    )


def level_names() -> list[str]:
    return [f"{S.LEVEL_PREFIX[lv]}_{part}" for lv in R.LEVELS for part in ("label", "name", "color", "order")]
