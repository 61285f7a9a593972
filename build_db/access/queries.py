"""Named analyses: the SQL files in queries/, their headers, typed parameters, execution and plots.

A query file starts with a header of SQL comments:

    -- name: markers
    -- title: Top marker genes of a taxonomy term
    -- description: Genes most specific to one term against the rest of its level ...
    -- param species species = Human: Species
    -- param n int = 20: How many genes
    -- plot: bar x=gene_symbol y=log2_fold_change

then one SELECT that refers to a parameter as `$name`. Parameters are checked against their type and
put into the SQL as literals (through sqlglot, so quoting is sqlglot's). A `genes` (or `gene`) parameter
is resolved to the genes of each species in the query first: its SQL may use `$gene_indexes` and
`$gene_buckets` (literal lists, so DuckDB prunes folders and row groups) and the table `selected_genes`
(species, gene_order, gene_symbol, gene_identifier, gene_index, gene_bucket).
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import sqlglot
from sqlglot import exp

from ..errors import HmbaError, StoreError
from ..release import layout as R
from . import genes as G
from .connect import StoreOrConnection, connect
from .genes import Resolved, resolve

QUERIES_DIR = Path(__file__).resolve().parents[2] / "queries"
PARAM_TYPES = {
    "species": "one species: Human, Macaque or Marmoset",
    "species_list": "species, comma-separated, or all (the built ones)",
    "level": "a taxonomy level: Neighborhood, Class, Subclass, Group or Cluster",
    "genes": "gene symbols or identifiers, comma-separated",
    "gene": "one gene symbol or identifier",
    "term": "a taxonomy term of the query's level, by name or label",
    "parent_term": "a taxonomy term of the level above the query's level, by name or label, or all",
    "int": "an integer",
    "float": "a number",
    "text": "text",
}
GENE_TYPES = ("genes", "gene")
DERIVED = ("gene_indexes", "gene_buckets")  # placeholders a genes parameter provides
SELECTED_GENES = "selected_genes"
SELECTED_COLUMNS = ("species", "gene_order", "gene_symbol", "gene_identifier", "gene_index", "gene_bucket")
PLOTS = {
    "heatmap": ("x", "y", "value"),
    "dotplot": ("x", "y", "color", "size"),
    "scatter": ("x", "y", "color"),
    "bar": ("x", "y"),
}
MAX_NUMBER = 1e15  # larger int parameters overflow DuckDB's literals; none of ours needs more
_PARAM = re.compile(r"^(\w+)\s+(\w+)\s*(?:=\s*(.*?))?\s*:\s+(.+)$")


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None  # None: required
    description: str


@dataclass(frozen=True)
class Plot:
    kind: str
    options: dict[str, str]


@dataclass(frozen=True)
class NamedQuery:
    name: str
    title: str
    description: str
    params: tuple[Param, ...]
    plot: Plot | None
    sql: str  # the body after the header, with $placeholders
    path: Path
    example: dict[str, str] = field(default_factory=dict)  # README example parameters (-- example: k=v ...)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def usage(self) -> str:
        parts = [
            f"{p.name}={p.default}" if p.default is not None else f"{p.name}=<{p.type}>" for p in self.params
        ]
        return " ".join(f"--param {shlex.quote(x)}" for x in parts)  # copy-paste safe: term=STRd D1 ...


def parse_query_file(path: Path) -> NamedQuery:
    """Read a query file's header and check its SQL: it parses, and every $placeholder is declared."""
    path = Path(path)
    header: dict[str, list[str]] = {}
    body: list[str] = []
    in_header = True
    for line in path.read_text().splitlines():
        m = re.match(r"^--\s*(?:(name|title|description|plot|example):|(param)\s)\s*(.*)$", line)
        if in_header and m:
            header.setdefault(m[1] or m[2], []).append(m[3].strip())
        elif in_header and line.startswith("--") and "description" in header and not body:
            header["description"].append(line[2:].strip())  # a description continues on plain comment lines
        else:
            in_header = in_header and not line.strip()
            body.append(line)
    where = f"{path}: "
    for key in ("name", "title", "description"):
        if not header.get(key):
            raise HmbaError(f"{where}the header has no '-- {key}:' line; see queries/README.md", path=path)
    name = header["name"][0]
    if name != path.stem:
        raise HmbaError(f"{where}'-- name: {name}' differs from the file name; rename one", path=path)
    params = []
    for text in header.get("param", []):
        m = _PARAM.match(text)
        if not m or m[2] not in PARAM_TYPES:
            raise HmbaError(
                f"{where}bad parameter line '-- param {text}'; write '-- param NAME TYPE [= DEFAULT]: "
                f"description' with TYPE one of {', '.join(PARAM_TYPES)}",
                path=path,
            )
        params.append(Param(m[1], m[2], m[3], m[4]))
    if sum(p.type in GENE_TYPES for p in params) > 1:
        raise HmbaError(f"{where}at most one genes/gene parameter per query", path=path)
    plot = None
    if header.get("plot"):
        kind, *opts = header["plot"][0].split()
        options = dict(o.split("=", 1) for o in opts)
        if kind not in PLOTS or not set(PLOTS[kind]) <= set(options):
            raise HmbaError(
                f"{where}bad plot line; write e.g. '-- plot: heatmap x=COL y=COL value=COL' "
                f"(kinds: {', '.join(f'{k} ' + ' '.join(v) for k, v in PLOTS.items())})",
                path=path,
            )
        plot = Plot(kind, options)
    try:
        example = dict(kv.split("=", 1) for kv in shlex.split(" ".join(header.get("example", []))))
    except ValueError:
        raise HmbaError(
            f"{where}bad '-- example:' line; write NAME=VALUE pairs, quoted where a value holds spaces "
            "('term=STR D1 MSN')",
            path=path,
        ) from None
    q = NamedQuery(
        name,
        header["title"][0],
        " ".join(header["description"]),
        tuple(params),
        plot,
        "\n".join(body).strip().rstrip(";"),
        path,
        example,
    )
    tree = _parse(q)
    declared = {p.name for p in params} | (
        set(DERIVED) if any(p.type in GENE_TYPES for p in params) else set()
    )
    used = {ph.this for ph in tree.find_all(exp.Placeholder)}
    if used - declared:
        raise HmbaError(
            f"{where}${', $'.join(sorted(used - declared))} not declared as a parameter", path=path
        )
    uses_selected = any(t.name == SELECTED_GENES for t in tree.find_all(exp.Table))
    if uses_selected and not any(p.type in GENE_TYPES for p in params):
        raise HmbaError(f"{where}uses {SELECTED_GENES} but declares no genes parameter", path=path)
    return q


_TREES: dict[str, exp.Query] = {}


def _parse(q: NamedQuery) -> exp.Query:
    """The query's syntax tree: a fresh copy of a cached parse (render edits it)."""
    if q.sql in _TREES:
        return _TREES[q.sql].copy()
    try:
        trees = sqlglot.parse(q.sql, read="duckdb")
    except sqlglot.errors.ParseError as e:
        raise HmbaError(f"{q.path}: the SQL does not parse: {' '.join(str(e).split())}", path=q.path) from e
    tree = trees[0] if len(trees) == 1 else None
    if not isinstance(tree, exp.Query):
        raise HmbaError(f"{q.path}: a query file holds exactly one SELECT", path=q.path)
    _TREES[q.sql] = tree
    return tree.copy()


_PARSED: dict[tuple, NamedQuery] = {}


def list_queries(directory: Path = QUERIES_DIR) -> dict[str, NamedQuery]:
    """Every named query, by name, in file-name order (parsed once per file version)."""
    out = {}
    for path in sorted(Path(directory).glob("*.sql")):
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in _PARSED:
            _PARSED[key] = parse_query_file(path)
        out[_PARSED[key].name] = _PARSED[key]
    return out


def get_query(name: str, directory: Path = QUERIES_DIR) -> NamedQuery:
    queries = list_queries(directory)
    if name not in queries:
        close = difflib.get_close_matches(name, list(queries), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise HmbaError(f"no query named {name!r}; {hint}`hmba-db queries` lists them", key=name)
    return queries[name]


@dataclass
class Rendered:
    query: NamedQuery
    sql: str
    values: dict[str, object]
    notes: list[str]


def built_species(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The species built into a store, in the release's order."""
    # from the genes table, which the parameters are resolved against anyway (Spark's resolver holds it);
    # once per build (a query each time was a sixth of rendering a dotplot)
    key = G.cache_key(con, "built_species")
    if key not in G.CACHE:
        have = {r[0] for r in con.execute("select distinct species from genes").fetchall()}
        G.CACHE[key] = [s for s in R.SPECIES if s in have]
    return list(G.CACHE[key])


def _one_species(value: str, built: list[str], pname: str) -> str:
    match = R.species_named(value, f"--param {pname}")
    if match not in built:
        raise HmbaError(
            f"--param {pname}={value}: {match} is not in this store (built: {', '.join(built)}); "
            f"build it with hmba-db build --species {match}",
            key=pname,
        )
    return match


def _split(value) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(x).strip() for x in items if str(x).strip()]


def _term(con, value: str, level: str | None, pname: str) -> str:
    where, args = ("where level = ?", [level]) if level else ("", [])
    terms = con.execute(f"select term_label, term_name from taxonomy_terms {where}", args).fetchall()
    v = value.strip().lower()
    for label, name in terms:
        if v in (label.lower(), (name or "").lower()):
            return label
    close = difflib.get_close_matches(value, [n for _, n in terms if n], n=3, cutoff=0.5)
    scope = f" at level {level}" if level else ""
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise HmbaError(
        f"--param {pname}={value}: no taxonomy term{scope} with that name or label{hint}", key=pname
    )


def _parent_term(con, value: str, level: str | None, pname: str) -> str:
    """`all`, or the label of a term of the level just above `level` (a drill-down's parent)."""
    if value.strip().lower() == "all":
        return "all"
    if level is None or level == R.LEVELS[0]:
        raise HmbaError(
            f"--param {pname}={value}: no level lies above {level or 'this query'}; give {pname}=all",
            key=pname,
        )
    return _term(con, value, R.LEVELS[R.LEVELS.index(level) - 1], pname)


def render(con: duckdb.DuckDBPyConnection, query: NamedQuery, params: dict) -> Rendered:
    """Validate the parameters, resolve genes and terms, and return the query's SQL with literals."""
    unknown = set(params) - {p.name for p in query.params}
    if unknown:
        accepted = ", ".join(p.name for p in query.params) or "none"
        raise HmbaError(
            f"query {query.name} has no parameter {', '.join(sorted(unknown))}; it takes: {accepted}",
            key=sorted(unknown)[0],
        )
    built = built_species(con)
    raw = {p.name: params.get(p.name, p.default) for p in query.params}
    values: dict[str, Any] = {}
    notes: list[str] = []
    for p in query.params:
        if raw[p.name] is None:
            raise HmbaError(
                f"query {query.name} needs --param {p.name}=... ({PARAM_TYPES[p.type]}: {p.description})",
                key=p.name,
            )
    scope: list[str] = list(built)
    level = None
    for p in query.params:  # species and level first: genes and terms are resolved within them
        v = raw[p.name]
        if p.type == "species":
            values[p.name] = _one_species(str(v), built, p.name)
            scope = [values[p.name]]
        elif p.type == "species_list":
            items = _split(v)
            if not items:
                raise HmbaError(
                    f"--param {p.name}={v}: give species, comma-separated, or all ({', '.join(built)})",
                    key=p.name,
                )
            chosen = (
                built
                if [x.lower() for x in items] == ["all"]
                else [_one_species(x, built, p.name) for x in items]
            )
            values[p.name] = chosen
            scope = chosen
        elif p.type == "level":
            values[p.name] = level = R.level_named(v, f"--param {p.name}")
    selected: list[Resolved] = []
    for p in query.params:
        v = raw[p.name]
        if p.type in ("int", "float"):
            try:
                values[p.name] = int(str(v)) if p.type == "int" else float(str(v))
            except (TypeError, ValueError, OverflowError):
                raise HmbaError(f"--param {p.name}={v}: expected {PARAM_TYPES[p.type]}", key=p.name) from None
            if not math.isfinite(values[p.name]) or abs(values[p.name]) > MAX_NUMBER:
                # nan compares false with everything: min_fraction=nan returned 0 rows, silently
                raise HmbaError(
                    f"--param {p.name}={v}: expected a finite number (at most {MAX_NUMBER:.0e} in size)",
                    key=p.name,
                )
        elif p.type == "text":
            values[p.name] = str(v)
        elif p.type == "term":
            values[p.name] = _term(con, str(v), level, p.name)
        elif p.type == "parent_term":
            values[p.name] = _parent_term(con, str(v), level, p.name)
        elif p.type in GENE_TYPES:
            tokens = _split(v)
            if p.type == "gene" and len(tokens) != 1:
                raise HmbaError(f"--param {p.name}={v}: give exactly one gene", key=p.name)
            selected = resolve(con, tokens, scope, what=f"--param {p.name}", notes=notes)
            values[p.name] = tokens[0] if p.type == "gene" else tokens
            values["gene_indexes"] = sorted({r.gene_index for r in selected})
            values["gene_buckets"] = sorted({r.gene_bucket for r in selected})
    tree = _parse(query)
    lists = [p.name for p in query.params if p.type == "species_list"]
    if selected and lists:
        _per_species(tree, selected, lists[0])
    for ph in list(tree.find_all(exp.Placeholder)):
        _substitute(ph, values[ph.this])
    if selected:
        for table in list(tree.find_all(exp.Table)):
            if table.name == SELECTED_GENES and not table.args.get("db"):
                table.replace(_values_table(selected, table.alias or SELECTED_GENES))
    return Rendered(query, tree.sql(dialect="duckdb", pretty=True, copy=False), values, notes)


def _per_species(tree: exp.Expr, selected: list[Resolved], species_param: str) -> None:
    """A SELECT filtering on the species list and `$gene_indexes` becomes a UNION ALL of one SELECT per
    species, each with that species' own gene indexes and buckets: a gene's index differs between species,
    so one list for all of them would read each species' row groups for the other species' genes too."""
    by_species: dict[str, list[Resolved]] = {}
    for r in selected:
        by_species.setdefault(r.species, []).append(r)
    if len(by_species) < 2:
        return
    for select in list(tree.find_all(exp.Select)):
        where = select.args.get("where")
        names = {ph.this for ph in where.find_all(exp.Placeholder)} if where else set()
        if not {"gene_indexes", species_param} <= names:
            continue
        parts = []
        for species, rows in by_species.items():
            part = select.copy()
            own = {
                species_param: [species],
                "gene_indexes": sorted({r.gene_index for r in rows}),
                "gene_buckets": sorted({r.gene_bucket for r in rows}),
            }
            for ph in list(part.args["where"].find_all(exp.Placeholder)):
                if ph.this in own:
                    _substitute(ph, own[ph.this])
            parts.append(part)
        union: exp.Query = parts[0]
        for part in parts[1:]:
            union = exp.union(union, part, distinct=False)
        select.replace(union)


def _substitute(ph: exp.Placeholder, value) -> None:
    if not isinstance(value, list):
        ph.replace(exp.convert(value))
        return
    literals = [exp.convert(v) for v in value]
    parent = ph.parent
    if isinstance(parent, exp.In) and parent.args.get("field") is ph:  # x in $list
        parent.set("field", None)
        parent.set("expressions", literals)
    elif isinstance(parent, exp.In):  # x in ($list)
        items: list[exp.Expr] = []
        for e in parent.expressions:
            items.extend(literals if e is ph else [e])
        parent.set("expressions", items)
    else:  # anywhere else, a list value: [a, b, ...]
        ph.replace(exp.Array(expressions=literals))


def _values_table(rows: list[Resolved], alias: str) -> exp.Expression:
    """`(VALUES (...), ...) AS alias(columns)`, built as nodes (no SQL text generated and parsed again:
    this is most of a query's rendering time otherwise)."""

    def literal(v) -> exp.Expression:
        if isinstance(v, str):
            return exp.Literal.string(v)
        return exp.Literal.number(int(v))

    return exp.Values(
        expressions=[exp.Tuple(expressions=[literal(v) for v in r]) for r in rows],
        alias=exp.TableAlias(
            this=exp.to_identifier(alias), columns=[exp.to_identifier(c) for c in SELECTED_COLUMNS]
        ),
    )


@dataclass
class Prepared:
    """A named query with its parameters resolved for one engine: its SQL in that engine's dialect, run or
    not (the CLI's --show-sql prints it without running it)."""

    rendered: Rendered
    engine: str
    target: Any  # the DuckDB connection, or the SparkSession

    @property
    def sql(self) -> str:
        if self.engine == "spark":
            from .spark import to_spark_sql

            return to_spark_sql(self.rendered.sql)
        return self.rendered.sql

    def run(self) -> pd.DataFrame:
        if self.engine == "spark":
            from .spark import execute_spark

            return execute_spark(self.target, self.rendered)
        return execute(self.target, self.rendered)


def prepare(
    store_or_con: StoreOrConnection, name: str, *, engine: str = "duckdb", spark: Any = None, **params: object
) -> Prepared:
    """Check a named query's parameters and resolve its genes and terms, for DuckDB or Spark."""
    if engine == "spark":
        from .spark import local_session, resolver

        if isinstance(store_or_con, duckdb.DuckDBPyConnection):
            raise HmbaError("engine='spark' takes the store's path or URI, not a DuckDB connection")
        spark = spark if spark is not None else local_session()
        return Prepared(render(resolver(spark, store_or_con), get_query(name), params), engine, spark)
    if engine != "duckdb":
        raise HmbaError(f"engine={engine!r}: choose duckdb or spark", key="engine")
    con = store_or_con if isinstance(store_or_con, duckdb.DuckDBPyConnection) else connect(store_or_con)
    return Prepared(render(con, get_query(name), params), engine, con)


def run_query(
    store_or_con: StoreOrConnection, name: str, *, engine: str = "duckdb", spark: Any = None, **params: object
) -> pd.DataFrame:
    """Run a named query; returns a DataFrame (attrs: query name, the SQL run, notes, the parameters as
    resolved).

    `engine="spark"` runs it on Spark instead (the SQL transpiled by sqlglot): `store_or_con` is then the
    store's path or Hadoop URI (`s3a://...`), `spark` a SparkSession (default: a local[2] one).

    Example:
        >>> run_query("data/demo-store", "markers", term="STRd D1 Matrix MSN", n=10)  # doctest: +SKIP
        >>> run_query("s3a://b/store", "dotplot", engine="spark", spark=spark, genes="DRD1")  # doctest: +SKIP
    """
    return prepare(store_or_con, name, engine=engine, spark=spark, **params).run()


def execute(con: duckdb.DuckDBPyConnection, rendered: Rendered) -> pd.DataFrame:
    """Run a rendered query; a DuckDB error becomes a one-line StoreError (the query's SQL is ours and its
    parameters were checked, so a failure is the store's: a missing, damaged or unreadable file). attrs:
    name, SQL, notes."""
    name = rendered.query.name
    try:
        df = con.execute(rendered.sql).df()
    except duckdb.InterruptException:
        raise
    except duckdb.Error as e:
        raise StoreError(
            f"query {name} failed: {' '.join(str(e).split())}; run hmba-db verify on the store", key=name
        ) from e
    df.attrs.update(query=name, sql=rendered.sql, notes=rendered.notes, params=rendered.values)
    return df
