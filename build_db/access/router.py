"""Ad hoc SQL, routed (docs/architecture.md, decision 16): a question written against the documented views
is answered from the files that hold its answer cheapest, with the same rows and columns.

The store holds the same non-zeros twice (gene-major: `expression`, `expression_annotated`; cell-major:
`expression_annotated_by_cell`) and their sums per taxonomy term (`term_gene_sums`). Which one a question
reads is a physical choice, as a ClickHouse projection is; each rule here rewrites only questions whose
answer it provably keeps (tests/test_router.py compares a generated corpus, rewritten against unrewritten):

1. statistics: an aggregate over `expression_annotated` filtered to terms of one taxonomy level (equality
   or IN on its `*_name`), perhaps to species and genes, grouped by those columns, asking count(*),
   sum/avg of raw_count or log2_cpm: the same sums are in `term_gene_sums`, a few rows per term instead of
   every non-zero (sums of doubles may differ in their last bits: they are added in another order).
2. cells: a question on `expression_annotated` filtered on cells (a term, a region, a donor, cell labels
   or indexes) and not on genes reads `expression_annotated_by_cell`: the same rows, from the files sorted
   by cell, where only the selected cells' row groups are read.
3. counts: a question on `expression` or `expression_annotated` using only the columns of
   `expression_counts` (species, gene, cell, raw_count) reads `expression_counts`: the same rows without
   the joins that add names and log2 CPM (every stored non-zero has its cell: verify checks it).

Anything else, and anything the parser cannot read, runs as written; `Routed` says which and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import sqlglot
from sqlglot import exp

from ..release import layout as R
from ..store import schema as S
from .connect import StoreOrConnection, connect

if TYPE_CHECKING:
    import pandas as pd

ANNOTATED = "expression_annotated"
BY_CELL = "expression_annotated_by_cell"
EXPRESSION = "expression"
COUNTS = "expression_counts"
CELL_COUNTS = "expression_by_cell"
LEVEL_OF = {f"{S.LEVEL_PREFIX[lv]}_name": lv for lv in R.LEVELS}  # subclass_name -> Subclass
GENE_COLUMNS = {"gene_symbol", "gene_identifier", "gene_index"}
CELL_COLUMNS = {"cell_label", "cell_index", "donor_label", "region_of_interest_label", *LEVEL_OF}
COUNT_COLUMNS = {"species", "gene_bucket", "gene_index", "cell_index", "raw_count"}  # expression_counts'
ANNOTATED_COUNT_COLUMNS = COUNT_COLUMNS - {"gene_bucket"}  # of those, what expression_annotated has
NOT_NULL = {"raw_count", "log2_cpm", "cell_index", "gene_index", "species"}  # count(x) = count(*)
MEASURES = {"raw_count": "_hmba_sum_raw", "log2_cpm": "_hmba_sum_log2"}
N = "_hmba_n"


@dataclass(frozen=True)
class Routed:
    """What runs for a question: its SQL, the source that answers it and why."""

    sql: str
    source: str  # "statistics", "cell-major files", "expression_counts" or "as written"
    why: str

    @property
    def rewritten(self) -> bool:
        return self.source != "as written"

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "why": self.why, "sql": self.sql}

    def note(self) -> str:
        return f"answered from {self.source}: {self.why}" if self.rewritten else f"run as written: {self.why}"


def route(con: duckdb.DuckDBPyConnection, sql: str) -> Routed:
    """The SQL that answers `sql` with the same result from the cheapest source (module docstring). A
    question DuckDB cannot bind runs as written, so its error is its own (naming its columns and views)."""
    tree, why = _parse(sql)
    if tree is None:
        return Routed(sql, "as written", why)
    try:  # the names and types of its columns: a rewrite gives the same
        described = con.execute(f"describe {sql.strip().rstrip(';').strip()}").fetchall()
    except duckdb.Error:
        return Routed(sql, "as written", "DuckDB cannot bind it as written (its own error follows)")
    views = _views(con)
    for rule in (_statistics, _cells, _counts):
        routed = rule(described, tree, views)
        if routed is not None:
            return routed
    return Routed(sql, "as written", _why_not(tree))


def sql(store_or_con: StoreOrConnection, query: str, *, routed: bool = True) -> pd.DataFrame:
    """Run one question on the store and return its rows, read from the source that answers it cheapest
    (module docstring); `routed=False` runs it as written. attrs["route"]: source, why and the SQL run.

    Example:
        >>> q = "select gene_symbol, sum(raw_count) as n from expression_annotated "
        >>> q += "where subclass_name = 'STR D1 MSN' group by 1 order by n desc limit 20"
        >>> df = sql("data/demo-store", q)  # doctest: +SKIP
        >>> df.attrs["route"]["source"]  # doctest: +SKIP
        'statistics'
    """
    con = store_or_con if isinstance(store_or_con, duckdb.DuckDBPyConnection) else connect(store_or_con)
    chosen = route(con, query) if routed else Routed(query, "as written", "routing was turned off")
    df = con.execute(chosen.sql).df()
    df.attrs["route"] = chosen.as_dict()
    return df


def _parse(sql: str) -> tuple[exp.Select | None, str]:
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        parsed = [
            t for t in sqlglot.parse(sql, read="duckdb") if t is not None and not isinstance(t, exp.Semicolon)
        ]
    except (sqlglot.errors.SqlglotError, RecursionError) as e:
        return None, f"the router could not parse it ({str(e).splitlines()[0][:120]})"
    finally:
        logger.setLevel(level)
    if len(parsed) != 1 or not isinstance(parsed[0], exp.Query):
        return None, "not one query"
    return (parsed[0] if isinstance(parsed[0], exp.Select) else None), "a set operation (UNION, ...)"


def _views(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}


def _tables(tree: exp.Expr) -> list[exp.Table]:
    return list(tree.find_all(exp.Table))


def _only_table(tree: exp.Select, names: set[str]) -> exp.Table | None:
    """The query's one table when it reads one of `names` and nothing else (no join, CTE or subquery)."""
    tables = _tables(tree)
    if (
        len(tables) != 1
        or tables[0].name.lower() not in names
        or tree.args.get("joins")
        or tree.args.get("with")
    ):
        return None
    if any(isinstance(n, exp.Subquery | exp.Window) for n in tree.walk()):
        return None
    return tables[0]


def _conjuncts(where: exp.Expr | None) -> list[exp.Expr]:
    if where is None:
        return []
    node = where.this if isinstance(where, exp.Where) else where
    if isinstance(node, exp.Paren):
        return _conjuncts(node.this)
    if isinstance(node, exp.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def _literal_filter(pred: exp.Expr) -> str | None:
    """The column of `col = literal` or `col in (literals)`, else None."""
    if (
        isinstance(pred, exp.EQ)
        and isinstance(pred.this, exp.Column)
        and isinstance(pred.expression, exp.Literal)
    ):
        return pred.this.name.lower()
    if (
        isinstance(pred, exp.In)
        and isinstance(pred.this, exp.Column)
        and not pred.args.get("query")
        and pred.expressions
        and all(isinstance(e, exp.Literal) for e in pred.expressions)
    ):
        return pred.this.name.lower()
    return None


def _group_keys(tree: exp.Select) -> list[exp.Expr]:
    """The GROUP BY expressions, a position (`group by 1`) read as the select item it names."""
    group = tree.args.get("group")
    out = []
    for g in group.expressions if group else []:
        if isinstance(g, exp.Literal) and g.is_int and 0 < int(g.this) <= len(tree.expressions):
            g = tree.expressions[int(g.this) - 1].unalias()
        out.append(g)
    return out


def _columns(node: exp.Expr) -> set[str]:
    return {c.name.lower() for c in node.find_all(exp.Column)}


# --- rule 1: the statistics -------------------------------------------------------------------------------


def _statistics(described: list, tree: exp.Select, views: set[str]) -> Routed | None:
    table = _only_table(tree, {ANNOTATED, BY_CELL})
    if table is None or "term_gene_sums" not in views or tree.args.get("distinct"):
        return None
    filters = [_literal_filter(p) for p in _conjuncts(tree.args.get("where"))]
    if not filters or None in filters:
        return None
    levels = {LEVEL_OF[c] for c in filters if c in LEVEL_OF}
    if len(levels) != 1 or not set(filters) <= {"species", *GENE_COLUMNS, *LEVEL_OF}:
        return None
    (level,) = levels
    level_column = next(c for c in LEVEL_OF if LEVEL_OF[c] == level)
    allowed = {"species", *GENE_COLUMNS, level_column}
    group = tree.args.get("group")
    keys = []
    for g in _group_keys(tree):
        if not isinstance(g, exp.Column) or g.name.lower() not in allowed:
            return None
        keys.append(g.name.lower())
    if group and (group.args.get("all") or group.args.get("rollup") or group.args.get("cube")):
        return None
    aggregates = [a for a in tree.find_all(exp.AggFunc)]
    if not aggregates:
        return None
    for a in aggregates:
        if _measure(a) is None:
            return None
    for item in [*tree.expressions, *(tree.args["order"].expressions if tree.args.get("order") else [])]:
        outside = _columns_outside_aggregates(item)
        if not outside <= set(keys) | _aliases(tree):
            return None
    if tree.args.get("having") and not _columns_outside_aggregates(tree.args["having"]) <= set(keys):
        return None
    out = tree.copy()
    for a in list(out.find_all(exp.AggFunc)):
        a.replace(_measure(a))
    items = []
    for item, (name, type_, *_) in zip(out.expressions, described, strict=False):
        if item.find(exp.Sum):  # a rewritten aggregate: the question's own name and type
            items.append(exp.alias_(exp.cast(item.unalias(), type_), name, quoted=True))
        else:
            items.append(item)
    out.set("expressions", items)
    (source,) = _tables(out)
    source.replace(
        exp.Subquery(
            this=sqlglot.parse_one(_term_sums(level, level_column), read="duckdb"),
            alias=exp.TableAlias(this=exp.to_identifier(table.alias_or_name)),
        )
    )
    return Routed(
        out.sql(dialect="duckdb"),
        "statistics",
        f"its aggregates over {level} terms are sums term_gene_sums holds: a few rows per term, not every "
        "non-zero",
    )


def _measure(a: exp.AggFunc) -> exp.Expr | None:
    """An aggregate over expression_annotated as the same aggregate over term_gene_sums' rows."""
    if a.args.get("distinct") or isinstance(a.this, exp.Distinct):
        return None
    arg = a.this
    column = arg.name.lower() if isinstance(arg, exp.Column) else None
    n = exp.func("sum", exp.column(N))
    if isinstance(a, exp.Count) and (isinstance(arg, exp.Star) or column in NOT_NULL):
        return exp.func("coalesce", n, exp.Literal.number(0))
    if column not in MEASURES:
        return None
    total = exp.func("sum", exp.column(MEASURES[column]))
    if isinstance(a, exp.Sum):
        return total
    if isinstance(a, exp.Avg):
        return exp.Div(this=exp.cast(total, "double"), expression=n)
    return None


def _columns_outside_aggregates(node: exp.Expr) -> set[str]:
    out = set()
    for c in node.find_all(exp.Column):
        if c.find_ancestor(exp.AggFunc) is None:
            out.add(c.name.lower())
    return out


def _aliases(tree: exp.Select) -> set[str]:
    return {e.alias.lower() for e in tree.expressions if isinstance(e, exp.Alias)}


def _term_sums(level: str, level_column: str) -> str:
    return (
        f"select s.species, s.gene_index, g.gene_identifier, g.gene_symbol, t.term_name as {level_column}, "
        f"s.n_expressing as {N}, s.sum_raw as _hmba_sum_raw, s.sum_log2_cpm as _hmba_sum_log2 "
        "from term_gene_sums s join genes g on g.species = s.species and g.gene_index = s.gene_index "
        f"join taxonomy_terms t on t.term_label = s.term_label where s.level = '{level}'"
    )


# --- rule 2: the cell-major files -------------------------------------------------------------------------


def _cells(described: list, tree: exp.Select, views: set[str]) -> Routed | None:
    """Each reading of expression_annotated whose own SELECT filters on cells and not on genes (columns
    of a subquery are the subquery's) reads expression_annotated_by_cell instead."""
    if BY_CELL not in views:
        return None
    out = tree.copy()
    chosen: list[str] = []
    for table in list(out.find_all(exp.Table)):
        if table.name.lower() != ANNOTATED or table.args.get("db"):
            continue
        select = table.find_ancestor(exp.Select)
        if select is None or _unqualified_elsewhere(select):
            continue
        alias = table.alias_or_name.lower()
        own = [
            p
            for p in _conjuncts(select.args.get("where"))
            if all(c.table.lower() in ("", alias) for c in _own_columns(p, select))
        ]
        on_cells = [c for p in own for c in _own_columns(p, select) if c.name.lower() in CELL_COLUMNS]
        on_genes = [c for p in own for c in _own_columns(p, select) if c.name.lower() in GENE_COLUMNS]
        if not on_cells or on_genes:
            continue
        species = _one_species(own)
        if species is None:
            table.set("this", exp.to_identifier(BY_CELL))
            if not table.alias:
                table.set("alias", exp.TableAlias(this=exp.to_identifier(ANNOTATED)))
        else:
            table.replace(
                exp.Subquery(
                    this=sqlglot.parse_one(_by_cell_of(species), read="duckdb"),
                    alias=exp.TableAlias(this=exp.to_identifier(alias)),
                )
            )
        chosen.append(sorted(c.name.lower() for c in on_cells)[0])
    if not chosen:
        return None
    return Routed(
        out.sql(dialect="duckdb"),
        "cell-major files",
        f"filtered on cells ({', '.join(sorted(set(chosen)))}) and not on genes: "
        "expression_annotated_by_cell holds the same rows sorted by cell, and only those cells' row groups "
        "are read",
    )


def _one_species(own: list[exp.Expr]) -> str | None:
    """The species of a `species = 'X'` among a reading's own filters, else None."""
    for p in own:
        if (
            isinstance(p, exp.EQ)
            and isinstance(p.this, exp.Column)
            and p.this.name.lower() == "species"
            and isinstance(p.expression, exp.Literal)
            and p.expression.is_string
        ):
            return p.expression.this
    return None


def _by_cell_of(species: str) -> str:
    """expression_annotated_by_cell's rows and columns for one species, joined on integer keys alone: the
    view joins on (species, cell_rank) and (species, gene_index), a string hashed for every non-zero; with
    the species fixed the joins are on cell_rank and gene_index (Human --scale 0.1, the non-zeros of one
    region: 6.1 -> 3.0 s; the engine on the files with the labels joined after the sum: 1.9 s). The same
    columns in the same order as the view (tests/test_router.py holds them equal)."""
    x = "'" + species.replace("'", "''") + "'"
    return f"""
        select e.species, e.gene_index, g.gene_identifier, g.gene_symbol, e.cell_index, c.cell_label,
            c.donor_label, c.region_of_interest_label, c.neighborhood_name, c.class_name, c.subclass_name,
            c.group_name, c.cluster_name, e.raw_count,
            log2(e.raw_count / c.total_counts * 1e6 + 1) as log2_cpm
        from expression_by_cell as e
        join (select * from cells where species = {x}) as c on c.cell_rank = e.cell_rank
        join (select gene_index, gene_identifier, gene_symbol from genes where species = {x}) as g
            on g.gene_index = e.gene_index
        where e.species = {x}"""


def _own_columns(node: exp.Expr, select: exp.Select) -> list[exp.Column]:
    """The columns of `node` that belong to `select` itself, not to a subquery inside it."""
    return [c for c in node.find_all(exp.Column) if c.find_ancestor(exp.Select) is select]


def _unqualified_elsewhere(select: exp.Select) -> bool:
    """Whether the query joins other tables and names columns without saying whose: then which predicate
    filters which table is not known here, and the question runs as written."""
    if not select.args.get("joins"):
        return False
    return any(not c.table for c in select.find_all(exp.Column))


# --- rule 3: the stored counts alone ----------------------------------------------------------------------


def _counts(described: list, tree: exp.Select, views: set[str]) -> Routed | None:
    table = _only_table(tree, {EXPRESSION, ANNOTATED})
    if (
        table is None
        or COUNTS not in views
        or any(isinstance(n, exp.Star) and not n.find_ancestor(exp.Count) for n in tree.walk())
    ):
        return None
    used = _columns(tree) - _aliases(tree)
    allowed = COUNT_COLUMNS if table.name.lower() == EXPRESSION else ANNOTATED_COUNT_COLUMNS
    if not used or not used <= allowed:
        return None
    out = tree.copy()
    (t,) = _tables(out)
    keys = {c.name.lower() for g in _group_keys(out) for c in g.find_all(exp.Column)}
    where = out.args.get("where")
    on_genes = where is not None and any(
        c.name.lower() in ("gene_index", "gene_bucket") for c in where.find_all(exp.Column)
    )
    # per cell over every gene: the files sorted by cell; a filter on genes keeps the gene-major files
    by_cell = "cell_index" in keys and "gene_index" not in keys and "gene_bucket" not in used and not on_genes
    t.set("this", exp.to_identifier(CELL_COUNTS if by_cell and CELL_COUNTS in views else COUNTS))
    if not t.alias:
        t.set("alias", exp.TableAlias(this=exp.to_identifier(table.name)))
    if t.name == CELL_COUNTS:  # per cell: the files sorted by cell aggregate in order, not by hashing
        return Routed(
            out.sql(dialect="duckdb"),
            "cell-major files",
            f"it uses only the stored columns ({', '.join(sorted(used))}) and groups by cell: "
            "expression_by_cell holds the same rows sorted by cell",
        )
    return Routed(
        out.sql(dialect="duckdb"),
        "expression_counts",
        f"it uses only the stored columns ({', '.join(sorted(used))}): the same rows without the joins that "
        "add names and log2 CPM",
    )


def _why_not(tree: exp.Select) -> str:
    names = {t.name.lower() for t in _tables(tree)}
    if not names & {ANNOTATED, EXPRESSION, BY_CELL}:
        return "it reads no expression view"
    return (
        "no rewrite is known to keep its answer (a question filtered on genes, or on cells and genes, reads "
        "the gene-major files as written)"
    )
