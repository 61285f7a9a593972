"""The taxonomy as a browser asks for it: the terms of a level with their cells per species, and one term
with its parent, children, colour and its cells by region and by donor."""

from __future__ import annotations

import difflib

import duckdb

from ..errors import HmbaError
from ..release import layout as R
from ..store import schema as S


def level_of(value: str) -> str:
    """A taxonomy level by name, ignoring case."""
    return R.level_named(value)


def _counts(con: duckdb.DuckDBPyConnection, species: list[str], level: str | None = None) -> dict:
    where, args = ("and level = ?", [level]) if level else ("", [])
    rows = con.execute(
        "select term_label, species, n_cells from term_cell_counts "
        f"where species in (select unnest(?)) {where}",
        [species, *args],
    ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for label, s, n in rows:
        out.setdefault(label, {})[s] = int(n)
    return out


def list_terms(con: duckdb.DuckDBPyConnection, level: str, species: list[str]) -> list[dict]:
    """The terms of one level in taxonomy order: label, name, colour, order, parent, and cells per species
    (0 where a species has none). Terms with no cell in any of the species are left out.

    Example:
        >>> list_terms(connect("data/demo-store"), "Group", ["Human"])[0]["term_name"]  # doctest: +SKIP
    """
    level = level_of(level)
    species = [species] if isinstance(species, str) else list(species)  # "Human" is one species
    counts = _counts(con, species, level)
    rows = con.execute(
        "select term_label, term_name, color, term_order, parent_term_label, parent_term_name "
        "from taxonomy_terms where level = ? order by term_order",
        [level],
    ).fetchall()
    out = []
    for label, name, color, order, parent, parent_name in rows:
        n = counts.get(label, {})
        if not any(n.values()):
            continue
        out.append(
            {
                "term_label": label,
                "term_name": name,
                "level": level,
                "color": color,
                "term_order": order,
                "parent_label": parent,
                "parent_name": parent_name,
                "n_cells": {s: n.get(s, 0) for s in species},
            }
        )
    return out


def find_term(con: duckdb.DuckDBPyConnection, value: str) -> tuple[str, str, str]:
    """(label, name, level) of a term given by label or by name, ignoring case; a name shared by two
    levels (a Group and its only Subclass) is the finer level's. An HmbaError lists the closest names."""
    rows = con.execute(
        "select term_label, term_name, level, level_order from taxonomy_terms order by level_order desc"
    ).fetchall()
    v = str(value).strip().lower()
    for label, name, level, _ in rows:
        if v in (label.lower(), (name or "").lower()):
            return label, name, level
    close = difflib.get_close_matches(str(value), sorted({r[1] for r in rows if r[1]}), n=3, cutoff=0.5)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise HmbaError(f"no taxonomy term with the label or name {value!r}{hint}", key="term")


def term_detail(con: duckdb.DuckDBPyConnection, value: str, species: list[str]) -> dict:
    """One term (by label or name): its level, colour, order, parent, children (with their cells per
    species), and its cells per species, per dissected region and per donor.

    Example:
        >>> term_detail(connect("data/demo-store"), "STR D1 MSN", ["Human"])["children"]  # doctest: +SKIP
    """
    species = [species] if isinstance(species, str) else list(species)  # "Human" is one species
    label, _, level = find_term(con, value)
    ((name, color, order, parent, parent_name, parent_level),) = con.execute(
        "select t.term_name, t.color, t.term_order, t.parent_term_label, t.parent_term_name, p.level "
        "from taxonomy_terms t left join taxonomy_terms p on p.term_label = t.parent_term_label "
        "where t.term_label = ?",
        [label],
    ).fetchall()
    child_level = R.LEVELS[R.LEVELS.index(level) + 1] if level != R.LEVELS[-1] else None
    children = []
    if child_level:
        counts = _counts(con, species, child_level)
        for c_label, c_name, c_color, c_order in con.execute(
            "select term_label, term_name, color, term_order from taxonomy_terms "
            "where parent_term_label = ? order by term_order",
            [label],
        ).fetchall():
            n = counts.get(c_label, {})
            children.append(
                {
                    "term_label": c_label,
                    "term_name": c_name,
                    "level": child_level,
                    "color": c_color,
                    "term_order": c_order,
                    "n_cells": {s: n.get(s, 0) for s in species},
                }
            )
    p = S.LEVEL_PREFIX[level]
    by_region = [
        {"species": s, "region_of_interest_label": r, "region_of_interest_name": rn, "n_cells": int(n)}
        for s, r, rn, n in con.execute(
            "select species, region_of_interest_label, any_value(region_of_interest_name), count(*) "
            f"from cells where {p}_label = ? and species in (select unnest(?)) group by 1, 2 "
            "order by species, min(region_order), 2",
            [label, species],
        ).fetchall()
    ]
    by_donor = [
        {"species": s, "donor_label": d, "donor_sex": sex, "donor_age": age, "n_cells": int(n)}
        for s, d, sex, age, n in con.execute(
            "select species, donor_label, any_value(donor_sex), any_value(donor_age), count(*) from cells "
            f"where {p}_label = ? and species in (select unnest(?)) group by 1, 2 order by 1, 2",
            [label, species],
        ).fetchall()
    ]
    own = _counts(con, species, level).get(label, {})
    return {
        "term_label": label,
        "term_name": name,
        "level": level,
        "color": color,
        "term_order": order,
        "parent": {"term_label": parent, "term_name": parent_name, "level": parent_level} if parent else None,
        "children": children,
        "n_cells": {s: own.get(s, 0) for s in species},
        "by_region": by_region,
        "by_donor": by_donor,
    }
