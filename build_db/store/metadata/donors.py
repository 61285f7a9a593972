"""Donors, libraries and value sets: release CSVs to typed tables, keys and foreign keys checked."""

from __future__ import annotations

from ...release import layout as R
from .. import schema as S
from .views import MetadataViews


def build_donors(m: MetadataViews) -> None:
    """The donors, libraries and value_sets tables, with their keys and foreign keys checked."""
    c = m.con
    m.unique(
        "donor_csv",
        "donor_label",
        "donor_label {0} appears {1} times; each donor must be listed once",
        R.DONOR,
    )
    age = m.typed("donor_csv", R.DONOR, "donor_age_value", "DOUBLE", "donor_label")
    c.execute(
        "create temp table donors as select donor_label, donor_species, species_scientific_name, "
        f"species_genus, donor_sex, donor_age, {age} as donor_age_value, donor_age_unit, donor_nhash_id "
        "from donor_csv"
    )
    m.unique(
        "library_csv",
        "library_label",
        "library_label {0} appears {1} times; each library must be listed once",
        R.LIBRARY,
    )
    m.fail_if(
        "select l.library_label, l.donor_label from library_csv l anti join donors d using (donor_label) "
        "limit 1",
        "library {0} names donor {1}, which donor.csv does not list; download both again",
        R.LIBRARY,
    )
    c.execute(
        "create temp table libraries as select " + ", ".join(S.LIBRARIES.column_names) + " from library_csv"
    )
    order = m.typed("vs_csv", R.VALUE_SETS, '"order"', "INTEGER", "label")
    c.execute(
        'create temp table value_sets as select label, "table" as table_name, field, description, '
        f"{order} as value_order, external_identifier, parent_label, color_hex_triplet from vs_csv"
    )
