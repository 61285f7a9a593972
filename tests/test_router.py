"""Routed ad hoc SQL answers what the question as written answers (decision 16): a generated corpus of
questions (filters on taxonomy, region, donor, cells and genes; aggregates and rows; both layouts; three
species), each run routed and as written on the tiny store, column for column and row for row."""

from __future__ import annotations

import math
import random

import pytest
from click.testing import CliRunner

import build_db
from build_db.access.router import _by_cell_of, route
from build_db.cli import main
from build_db.release import layout as R

LEVEL_COLUMNS = ["neighborhood_name", "class_name", "subclass_name", "group_name", "cluster_name"]
AGGREGATES = [
    "count(*)",
    "sum(raw_count)",
    "avg(log2_cpm)",
    "sum(log2_cpm)",
    "avg(raw_count)",
    "count(raw_count)",
    "min(raw_count)",  # no rewrite keeps these: the question runs as written
    "max(log2_cpm)",
    "count(distinct cell_index)",
]
KEYS = ["species", "gene_symbol", "gene_identifier", "gene_index", "donor_label", "region_of_interest_label"]


@pytest.fixture(scope="module")
def values(con) -> dict:
    """What the generator draws filters from: the tiny store's own names (and a few it does not have)."""

    def column(sql: str) -> list:
        return [r[0] for r in con.execute(sql).fetchall()]

    out = {
        f"{c}": column(f"select distinct {c} from cells where {c} is not null order by 1") + ["No such term"]
        for c in LEVEL_COLUMNS
    }
    out["region_of_interest_label"] = column("select distinct region_of_interest_label from cells order by 1")
    out["donor_label"] = column("select distinct donor_label from cells order by 1")
    out["cell_label"] = column("select cell_label from cells order by cell_index")
    out["gene_symbol"] = column(
        "select distinct gene_symbol from genes where gene_symbol is not null order by 1"
    )
    out["gene_identifier"] = column("select gene_identifier from genes order by 1")
    return out


def _lit(v) -> str:
    return str(v) if isinstance(v, int) else "'" + str(v).replace("'", "''") + "'"


def _filter(rng: random.Random, values: dict, column: str) -> str:
    if column == "species":
        chosen = rng.sample(["Human", "Macaque", "Marmoset"], rng.choice([1, 1, 2]))
    elif column == "gene_index":
        chosen = [rng.randrange(400) for _ in range(rng.choice([1, 2]))]
    elif column == "cell_label":
        chosen = rng.sample(values["cell_label"], 3)
    else:
        pool = values[column]
        chosen = rng.sample(pool, min(len(pool), rng.choice([1, 1, 2])))
    if len(chosen) == 1:
        return f"{column} = {_lit(chosen[0])}"
    return f"{column} in ({', '.join(_lit(v) for v in chosen)})"


def _question(rng: random.Random, values: dict) -> str:
    if rng.random() < 0.25:
        return _summable(rng, values)
    level = rng.choice(LEVEL_COLUMNS)
    pool = [
        "species",
        level,
        "gene_symbol",
        "gene_index",
        "gene_identifier",
        "donor_label",
        "region_of_interest_label",
        "cell_label",
    ]
    weights = [4, 6, 3, 1, 1, 2, 2, 1]
    where = []
    for column, w in zip(pool, weights, strict=True):
        if rng.random() < w / 10:
            where.append(_filter(rng, values, column))
    if rng.random() < 0.1:
        where.append(f"cell_index < {rng.randrange(50, 900)}")
    if rng.random() < 0.05:
        where.append(f"raw_count > {rng.randrange(1, 4)}")
    table = rng.choices(["expression_annotated", "expression_annotated_by_cell", "expression"], [7, 2, 2])[0]
    if (
        table == "expression"
    ):  # its columns: species, gene_bucket, gene_index, cell_index, raw_count, log2_cpm
        where = [w for w in where if w.split()[0] in ("species", "gene_index", "cell_index", "raw_count")]
    shape = rng.choice(["grouped", "grouped", "grouped", "total", "rows"])
    clause = f" where {' and '.join(where)}" if where else ""
    if shape == "rows":
        columns = ["species", "gene_index", "cell_index", "raw_count"] + (
            [] if table == "expression" else rng.sample(["gene_symbol", "cell_label", level, "log2_cpm"], 2)
        )
        order = " order by species, gene_index, cell_index limit 200" if rng.random() < 0.5 else ""
        return f"select {', '.join(columns)} from {table}{clause}{order}"
    aggregates = rng.sample(AGGREGATES, rng.choice([1, 2, 3]))
    if shape == "total":
        return f"select {', '.join(aggregates)} from {table}{clause}"
    keys_pool = ["species", "gene_index", "cell_index"] if table == "expression" else KEYS + [level]
    keys = rng.sample(keys_pool, rng.choice([1, 1, 2]))
    named = [f"{a} as m{i}" if rng.random() < 0.5 else a for i, a in enumerate(aggregates)]
    by = ", ".join(keys) if rng.random() < 0.5 else ", ".join(str(i + 1) for i in range(len(keys)))
    order = f" order by {', '.join(keys)}" if rng.random() < 0.5 else ""
    return f"select {', '.join(keys + named)} from {table}{clause} group by {by}{order}"


def _summable(rng: random.Random, values: dict) -> str:
    """A question shaped as the statistics hold (terms of one level, perhaps species and genes), which the
    router may rewrite, or not (a term another species lacks, an aggregate it cannot take)."""
    level = rng.choice(LEVEL_COLUMNS)
    where = [_filter(rng, values, level)]
    for column in ("species", "gene_symbol", "gene_index"):
        if rng.random() < 0.3:
            where.append(_filter(rng, values, column))
    keys = rng.sample(
        ["species", "gene_symbol", "gene_identifier", "gene_index", level], rng.choice([0, 1, 2])
    )
    aggregates = rng.sample(AGGREGATES[:6], rng.choice([1, 2, 3]))
    table = rng.choice(["expression_annotated", "expression_annotated_by_cell"])
    having = f" having count(*) > {rng.randrange(1, 5)}" if keys and rng.random() < 0.2 else ""
    group = f" group by {', '.join(keys)}" if keys else ""
    order = f" order by {', '.join(keys)}" if keys and rng.random() < 0.5 else ""
    columns = ", ".join(keys + aggregates)
    return f"select {columns} from {table} where {' and '.join(where)}{group}{having}{order}"


def _rows(con, sql: str, ordered: bool) -> tuple[list, list]:
    result = con.execute(sql)
    names = [d[0] for d in result.description]
    rows = result.fetchall()
    if not ordered:
        rows.sort(
            key=lambda r: tuple((x is None, round(x, 6) if isinstance(x, float) else str(x)) for x in r)
        )
    return names, rows


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def test_a_generated_corpus_routed_equals_as_written(con, values):
    rng = random.Random(20261207)
    seen: dict[str, int] = {}
    differences = []
    n = 0
    while n < 1100:
        sql = _question(rng, values)
        routed = route(con, sql)
        seen[routed.source] = seen.get(routed.source, 0) + 1
        if "join (select * from cells where species =" in routed.sql.lower():  # one species, integer keys
            seen["one species"] = seen.get("one species", 0) + 1
        elif "from expression_by_cell" in routed.sql.lower():  # the stored counts, per cell
            seen["counts per cell"] = seen.get("counts per cell", 0) + 1
        n += 1
        ordered = " order by " in sql and " limit " in sql
        want_names, want = _rows(con, sql, ordered)
        got_names, got = _rows(con, routed.sql, ordered)
        types_want = [r[1] for r in con.execute(f"describe {sql}").fetchall()]
        types_got = [r[1] for r in con.execute(f"describe {routed.sql}").fetchall()]
        same = (
            want_names == got_names
            and types_want == types_got
            and len(want) == len(got)
            and all(_same(x, y) for r, s in zip(want, got, strict=True) for x, y in zip(r, s, strict=True))
        )
        if not same:
            differences.append((sql, routed.source, want[:3], got[:3]))
    assert differences == [], differences[:3]
    # Every rule was exercised, and the corpus is not all one kind (a test that cannot fail otherwise)
    assert seen.get("statistics", 0) >= 100, seen
    assert seen.get("cell-major files", 0) >= 100, seen
    assert 50 <= seen.get("one species", 0) < seen["cell-major files"], seen  # both forms of the rule
    assert seen.get("expression_counts", 0) >= 50, seen
    assert seen.get("counts per cell", 0) >= 10, seen
    assert seen.get("as written", 0) >= 100, seen


def test_the_routes_of_the_issue_s_questions(con):
    cases = {
        "select gene_symbol, sum(raw_count) as n from expression_annotated "
        "where subclass_name = 'STR D1 MSN' group by 1 order by n desc limit 20": "statistics",
        "select gene_symbol, avg(log2_cpm), count(*) from expression_annotated "
        "where species = 'Human' and group_name in ('Astrocyte', 'Oligo OPALIN') group by 1": "statistics",
        "select donor_label, gene_index, sum(raw_count) from expression_annotated "
        "where subclass_name = 'STR D1 MSN' group by all": "cell-major files",
        "select gene_symbol, sum(raw_count) from expression_annotated where region_of_interest_label = 'PuC' "
        "group by 1": "cell-major files",
        "select cell_label, count(*) as genes from expression_annotated where donor_label = 'H18.30.001' "
        "group by 1": "cell-major files",
        "select gene_index, sum(raw_count) from expression "
        "where species = 'Human' group by 1": "expression_counts",
        "select avg(log2_cpm) from expression_annotated where gene_symbol = 'PLP1' "
        "and group_name = 'Astrocyte' and donor_label = 'H18.30.001'": "as written",
        "select * from expression_annotated where gene_symbol = 'PLP1'": "as written",
        "select cell_index, count(*) as genes from expression "
        "where species = 'Human' group by 1": "cell-major files",  # per cell, every gene: sorted by cell
        "select cell_index, sum(raw_count) from expression "
        "where species = 'Human' and gene_index = 5 group by 1": "expression_counts",  # one gene: by gene
    }
    for sql, source in cases.items():
        assert route(con, sql).source == source, sql


def test_what_the_router_cannot_read_runs_as_written(con, tiny_store):
    for sql, why in [
        ("select 1 from expression_annotated where", "could not parse"),
        ("select no_such_column from expression_annotated where subclass_name = 'x'", "cannot bind"),
        ("select 1 union select 2", "set operation"),
    ]:
        r = route(con, sql)
        assert r.source == "as written" and why in r.why, (sql, r)
    r = CliRunner().invoke(main, ["sql", str(tiny_store), "select no_such_column from expression_annotated"])
    assert r.exit_code == 1 and "no_such_column" in r.output and "Candidate bindings" in r.output
    assert r.output.count("\n") == 1


def test_explain_and_the_python_function_say_which_source_answered(tiny_store, con):
    sql = (
        "select gene_symbol, sum(raw_count) as n from expression_annotated "
        "where class_name = 'Nonneuron' group by 1"
    )
    df = build_db.sql(tiny_store, sql)
    assert df.attrs["route"]["source"] == "statistics" and "term_gene_sums" in df.attrs["route"]["sql"]
    plain = build_db.sql(con, sql, routed=False)
    assert plain.attrs["route"]["source"] == "as written"
    merged = df.merge(plain, on="gene_symbol")
    assert len(merged) == len(df) == len(plain) and (merged.n_x == merged.n_y).all()
    r = CliRunner().invoke(main, ["sql", str(tiny_store), sql, "--explain", "--format", "csv"])
    assert (
        r.exit_code == 0 and "route: answered from statistics" in r.stderr and "route: ran SELECT" in r.stderr
    )
    r = CliRunner().invoke(
        main, ["sql", str(tiny_store), sql, "--explain", "--as-written", "--format", "csv"]
    )
    assert "route: run as written: --as-written" in r.stderr
    r = CliRunner().invoke(main, ["sql", str(tiny_store), sql, "--safe", "--explain", "--format", "csv"])
    assert r.exit_code == 0 and "route: answered from statistics" in r.stderr, r.output


@pytest.mark.parametrize("species", R.SPECIES)
def test_the_one_species_reading_has_the_view_s_columns_and_rows(con, species):
    """What the router reads for one species' cell-side question: expression_annotated_by_cell's columns,
    in order, and its rows for that species."""

    one = _by_cell_of(species)
    assert (
        con.execute(f"describe {one}").fetchall()
        == con.execute("describe select * from expression_annotated_by_cell").fetchall()
    )
    got = con.execute(f"select * from ({one}) order by cell_index, gene_index").fetchall()
    want = con.execute(
        "select * from expression_annotated_by_cell where species = ? order by cell_index, gene_index",
        [species],
    ).fetchall()
    assert len(got) == len(want) > 0 and got == want
