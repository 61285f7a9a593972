"""The `hmba-db` command line: a thin shell over the library; it parses arguments and formats output."""

from __future__ import annotations

import errno
import math
import os
import re
import shlex
import sys
from pathlib import Path

import click

from . import defaults as D
from .errors import HmbaError
from .release import layout as R

# --- options several commands share, declared once (as sqlite-utils' output_options) -------------------


def species_option(help: str, default: str | None = None):
    """--species, comma-separated, any case (checked by _species)."""
    return click.option("--species", default=default, show_default=default is not None, help=help)


one_species_option = click.option(
    "--species", required=True, help="One species: Human, Macaque or Marmoset (any case)."
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output.")
jobs_option = click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=D.JOBS,
    show_default=True,
    help="Worker processes (decompression and sorting are CPU-bound: one per core).",
)
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format (results to stdout, messages to stderr).",
)


def _species(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    lookup = {s.lower(): s for s in R.SPECIES}
    bad = [n for n in names if n.lower() not in lookup]
    if bad:
        raise click.BadParameter(f"unknown species {', '.join(bad)}; choose from {', '.join(R.SPECIES)}")
    return tuple(lookup[n.lower()] for n in names)


def _parts(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in R.ALL_PARTS]
    if bad:
        raise click.BadParameter(f"unknown part {', '.join(bad)}; choose from {', '.join(R.ALL_PARTS)}")
    return names


def _genes(value: str) -> int | None:
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number; give a gene count or 'all'") from None
    if n < 100:
        raise click.BadParameter("give at least 100 genes (the marker genes must fit), or 'all'")
    return n


class Finite(click.FloatRange):
    """A float option that must be a finite number: `--timeout nan` compares false with every bound, so a
    plain float (or FloatRange) takes it and the limit silently switches off; inf is no limit either."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class _StoreOrUrl(click.ParamType):
    """A store's folder (a Path), or the URL of a published store / a Hadoop URI for Spark (a str)."""

    name = "store"

    def convert(self, value, param, ctx):
        if isinstance(value, Path):
            return value
        from .store.paths import is_url

        return value if is_url(str(value)) else Path(value)


STORE_OR_URL = _StoreOrUrl()


class _Group(click.Group):
    """Every failure is one line (`Error: ...`, exit 1): our own errors, and the system's (a full disk, a
    permission, memory) with what to do."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HmbaError as e:
            raise click.ClickException(str(e)) from e
        except BrokenPipeError:
            # Whoever read our output went away (`| head`): stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            hint = {
                errno.ENOSPC: "free space and run the same command again (a build or download resumes)",
                errno.EACCES: "check the permissions, or choose another place",
                errno.EROFS: "that file system is read-only; choose another place",
            }.get(e.errno or 0, "check the path and run again")
            raise click.ClickException(f"{where}{e.strerror or e}; {hint}") from e
        except MemoryError as e:
            raise click.ClickException(
                "out of memory; ask for less at once (a LIMIT, fewer genes or cells, --format csv)"
            ) from e
        except (KeyboardInterrupt, RuntimeError) as e:
            # Ctrl-C: Python's KeyboardInterrupt, or DuckDB's "Query interrupted" when it came mid-query
            if isinstance(e, RuntimeError) and "interrupted" not in str(e).lower():
                raise
            raise click.ClickException(
                "interrupted; run the same command again to go on (a build or download resumes where it "
                "stopped, and publishes nothing half-written)"
            ) from None
        except Exception as e:
            if type(e).__module__.split(".")[0] not in ("duckdb", "_duckdb"):
                raise
            # A store file DuckDB cannot read (damaged, truncated, replaced): say which command to run.
            raise click.ClickException(
                _over_http(e)
                or f"{' '.join(str(e).split())}; run `hmba-db verify` on the store, and rebuild "
                "it if that fails"
            ) from e


def _over_http(e: Exception) -> str | None:
    """A DuckDB error reading a published store's file over HTTP, with what to do; None for others."""
    message = " ".join(str(e).split())
    if not re.search(r"HTTP (GET|HEAD) error|HTTP Error", message, re.I):
        return None
    return (
        f"{message}; the server of the published store lacks that file or does not answer: upload every "
        "file published.json lists, or publish again for the URL it is served at"
    )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hmba-db")
def main() -> None:
    """Build and query a columnar database of the HMBA basal-ganglia snRNA-seq release.

    Example:

        hmba-db synth data/release && hmba-db check data/release
    """


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--scale",
    type=Finite(min=0, min_open=True),
    default=0.001,
    show_default=True,
    help="Fraction of the real cell counts (1 = 1,683,105 Human, 839,102 Macaque, 414,575 Marmoset).",
)
@click.option(
    "--genes",
    default="all",
    show_default=True,
    help="Genes per species: a number (markers always included) or 'all' for the real counts.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed; same seed, same release.")
@species_option("Comma-separated species.", default=",".join(R.SPECIES))
@jobs_option
@click.option(
    "--raw-dtype",
    type=click.Choice(R.RAW_DTYPES),
    default="float32",
    show_default=True,
    help="Stored dtype of the raw counts.",
)
@click.option(
    "--index-dtype",
    type=click.Choice(["auto", "int32", "int64"]),
    default="auto",
    show_default=True,
    help="CSR indices/indptr dtype; auto switches to int64 at 2^31-1 non-zeros like the ABC writer.",
)
@click.option("--force", is_flag=True, help="Replace OUT if it already holds files.")
@click.option(
    "--release-only",
    is_flag=True,
    help="Only the two HMBA-BG directories, every matrix cell in cell_metadata.csv (default: the bucket's "
    "shape: other datasets in the manifest, the MapMyCells pair, ~0.5% of cells outside cell_metadata).",
)
@quiet_option
def synth(out, scale, genes, seed, species, jobs, raw_dtype, index_dtype, force, release_only, quiet):
    """Write a synthetic HMBA-BG release under OUT, in the bucket's own tree.

    Same file names, CSV columns, h5ad layout and manifest (sizes, md5s) as the real release, with marker
    genes expressed where they belong and the real release's quirks.

    Example:

        hmba-db synth data/release --scale 0.01 --genes all --seed 1
    """
    from .release.synth import synth as run

    run(
        out,
        scale=scale,
        genes=_genes(genes),
        seed=seed,
        species=_species(species) or R.SPECIES,
        jobs=jobs,
        raw_dtype=raw_dtype,
        index_dtype=index_dtype,
        force=force,
        bucket_shape=not release_only,
        quiet=quiet,
    )


@main.command()
@click.argument("dest", type=click.Path(path_type=Path), required=False)
@species_option("Comma-separated species.", default=",".join(R.SPECIES))
@click.option(
    "--release",
    "version",
    default=R.VERSION,
    show_default=True,
    help="Release version: its manifest names the taxonomy directory and version to fetch.",
)
@click.option(
    "--list-releases", is_flag=True, help="List the bucket's release versions and what each names; no DEST."
)
@click.option(
    "--what",
    "what",
    default=",".join(R.PARTS),
    show_default=True,
    help="Parts: raw, log2, metadata, taxonomy, mapmycells (the build needs raw, metadata and taxonomy; "
    "log2 only for its cross-check; mapmycells is the taxonomy's MapMyCells pair, ~1 GB, not needed).",
)
@click.option("--base-url", default=R.BUCKET_URL, show_default=True, help="Where the bucket is served.")
@click.option("--dry-run", is_flag=True, help="List the files and sizes; download nothing.")
@click.option(
    "--jobs", type=click.IntRange(min=1), default=4, show_default=True, help="Files fetched in parallel."
)
@quiet_option
def download(dest, species, version, what, base_url, dry_run, jobs, quiet, list_releases):
    """Download the release (or part of it) into DEST, in the bucket's layout, resumably and verified.

    Plain HTTPS with Range requests, no AWS credentials. Only the HMBA-BG release's two directories of the
    bucket-wide manifest are fetched. A partial file resumes where it stopped; every file is checked
    against the manifest's md5 before it is renamed into place; files already here and verified are
    skipped (a recorded file whose size or mtime changed is hashed again). DEST is a cache the official
    abc_atlas_access client also uses, both ways.

    Example:

        hmba-db download data/real-release --species Marmoset --what raw,metadata,taxonomy
    """
    from .release.download import download as run

    if list_releases:
        from .release.download import list_releases as listing

        for r in listing(base_url):
            if "error" in r:
                click.echo(f"{r['version']}  (its manifest cannot be read: {r['error']})")
                continue
            named = "; ".join(
                f"{d} ({', '.join(f'{k} {v}' for k, v in kinds.items())})"
                for d, kinds in r["directories"].items()
            )
            click.echo(f"{r['version']}  {named}")
            click.echo(
                f"{'':10}download --release {r['version']} reads {R.EXPRESSION_DIR} and {r['taxonomy']}"
            )
        return
    if dest is None:
        raise click.UsageError("give DEST, the folder to download into (or --list-releases)")

    plan = run(
        dest,
        species=_species(species) or R.SPECIES,
        what=_parts(what),
        version=version,
        base_url=base_url,
        dry_run=dry_run,
        jobs=jobs,
        quiet=quiet,
    )
    if dry_run:
        for e in plan.entries:
            state = "here" if e.relative_path in plan.present else "fetch"
            click.echo(f"{state:5s} {e.size:>16,}  {e.relative_path}")
        if plan.ignored:
            click.echo(
                f"ignored {sum(plan.ignored.values()):,} files of {len(plan.ignored)} other datasets in the "
                f"manifest ({', '.join(plan.ignored)})"
            )
        click.echo(
            f"{len(plan.entries)} files, {plan.total_bytes / 1e9:,.2f} GB in all; "
            f"{plan.bytes_to_fetch / 1e9:,.2f} GB to download"
        )


@main.command()
@click.argument("release", type=click.Path(path_type=Path))
@species_option("Comma-separated species to require (default: all in the manifest).")
@click.option(
    "--what",
    "what",
    default=",".join(R.PARTS),
    show_default=True,
    help="Parts to require: raw, log2, metadata, taxonomy.",
)
@click.option(
    "--md5", is_flag=True, help="Also verify every file's md5 against the manifest (reads every byte)."
)
@click.option("--release", "version", default=R.VERSION, show_default=True, help="Release version.")
def check(release, species, what, md5, version):
    """Validate a release directory before any long work; exit 0 when clean, 1 otherwise.

    Checks the manifest (our two directories of it), every file's presence and size (md5 with --md5), CSV
    headers, h5ad structure, that matrices agree with the metadata, and the metadata's own consistency
    (keys unique, foreign keys resolving, values typed, the taxonomy a tree both taxonomy files agree on).
    One line per problem, naming the file and the fix; `note:` lines say what is fine but worth knowing
    (files of other datasets ignored, matrix cells that cell_metadata.csv leaves out, optional columns
    absent).

    Example:

        hmba-db check data/release --species Marmoset --md5
    """
    from .release.check import check_release
    from .store.metadata import check_metadata

    report = check_release(
        release, species=_species(species), parts=_parts(what), md5=md5, version=version, keep_cells=True
    )
    check_metadata(report, version)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for p in report.problems:
        click.echo(str(p))
    if not report.ok:
        click.echo(f"{len(report.problems)} problem(s) in {release}", err=True)
        sys.exit(1)
    shapes = ", ".join(f"{k} {v[0]:,} x {v[1]:,}" for k, v in report.shapes.items() if k.endswith("/raw"))
    click.echo(f"OK: {report.files} files checked{' with md5' if md5 else ''}; {shapes or 'no matrices'}")


@main.command()
@click.argument("release", type=click.Path(path_type=Path))
@click.argument("store", type=click.Path(path_type=Path))
@species_option("Comma-separated species (default: every species with a raw matrix).")
@jobs_option
@click.option(
    "--bucket-nnz",
    type=click.IntRange(min=1),
    default=D.BUCKET_TARGET_NNZ,
    show_default=True,
    help="Target non-zeros per bucket (gene and cell buckets): ~64 buckets for full Human by default.",
)
@click.option(
    "--bucket-genes",
    type=click.IntRange(min=1),
    default=D.MAX_BUCKET_GENES,
    show_default=True,
    help="At most this many genes per bucket (keeps the sort cache-friendly).",
)
@click.option("--release", "version", default=R.VERSION, show_default=True, help="Release version.")
@click.option(
    "--force",
    is_flag=True,
    help="Replace STORE even if that drops species it has or files a build did not write (listed otherwise).",
)
@click.option(
    "--keep-old",
    type=Finite(min=0),
    default=D.KEEP_OLD_HOURS,
    show_default=True,
    help="Hours a replaced build's snapshot stays for readers that opened it before the rebuild.",
)
@click.option(
    "--cell-major/--no-cell-major",
    default=True,
    show_default=True,
    help="Also write the cell-major copy (expression_by_cell) that makes a cell selection's AnnData fast; "
    "without it the store and staging are ~45% smaller and the build a fifth faster.",
)
@quiet_option
def build(
    release, store, species, jobs, bucket_nnz, bucket_genes, version, force, keep_old, cell_major, quiet
):
    """Build the store at STORE from the release directory RELEASE.

    Checks the release first, transposes each species' raw matrix into gene-bucketed Parquet sorted by
    (gene, cell), verifies every non-zero against the source, and publishes the result as a new snapshot
    of the store: readers already connected keep the build they opened, new connections get this one.
    A killed build resumes where it stopped when run again with the same arguments.

    Example:

        hmba-db build data/release data/store --species Marmoset
    """
    from .store.build import build as run

    run(
        release,
        store,
        species=_species(species),
        jobs=jobs,
        bucket_nnz=bucket_nnz,
        bucket_genes=bucket_genes,
        version=version,
        force=force,
        keep_old=keep_old * 3600,
        quiet=quiet,
        cell_major=cell_major,
    )


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@species_option("Comma-separated species to verify (default: all).")
def verify(store, species):
    """Reconcile the store with the numbers its build took from the source; exit 1 on any difference.

    Per species and gene bucket: non-zeros, sum of counts and two position checksums; per cell: total
    counts and genes detected; and the Parquet sort order. The statistics: every level the sum of its
    children, region and donor sums adding up to the Group's, cell counts, and a sample of genes summed
    again from the expression files.

    Example:

        hmba-db verify data/store
    """
    from .progress import plural
    from .store.paths import files_root, read_build_record
    from .store.verify import verify_store

    problems = verify_store(store, list(_species(species) or ()))
    for p in problems:
        click.echo(p)
    if problems:
        click.echo(f"{len(problems)} problem(s) in {store}", err=True)
        sys.exit(1)
    info = read_build_record(files_root(store))
    for sp, meta in info["species"].items():
        if species and sp not in (_species(species) or ()):
            continue
        click.echo(
            f"OK: {sp}: {meta['nnz']:,} non-zeros in {plural(meta['buckets'], 'gene bucket')} and "
            f"{plural(meta.get('cell_buckets', 0), 'cell bucket')}, "
            f"{meta['cells']:,} cells, "
            f"sum {meta['sum']:,}: counts, checksums and per-cell totals reconcile"
            + ("; statistics additive and recomputed" if (files_root(store) / "aggregates").exists() else "")
        )


def _read_sql(query: str) -> str:
    if query == "-":
        query = sys.stdin.read()
    if not query.strip():
        raise click.BadParameter("empty SQL; give a query or - to read it from stdin", param_hint="SQL")
    return query


def _emit(df, fmt: str) -> None:
    from .access.results import frame_text

    text, said = frame_text(df, fmt)
    sys.stdout.write(text)
    for line in said:
        click.echo(line, err=True)


@main.command()
@click.argument("store", type=STORE_OR_URL)
@click.argument("query", metavar="SQL")
@format_option
@click.option(
    "--safe",
    is_flag=True,
    help="Treat the SQL as untrusted: one SELECT over the catalog's tables only, DuckDB's sandbox on.",
)
@click.option(
    "--timeout",
    type=Finite(min=0, min_open=True),
    default=D.SQL_TIMEOUT,
    show_default=True,
    help="With --safe: seconds before stopping.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=0),
    default=D.SQL_MAX_ROWS,
    show_default=True,
    help="Rows returned at most with --safe, and shown by --format table (csv and json stream every row).",
)
@click.option(
    "--memory-limit",
    default=D.SQL_MEMORY_LIMIT,
    show_default=True,
    help="With --safe: DuckDB memory the query may use.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=D.SQL_THREADS,
    show_default=True,
    help="With --safe: threads the query may use.",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Also say (on stderr) which source answered and why, and the SQL that ran.",
)
@click.option(
    "--as-written",
    is_flag=True,
    help="Run the SQL as written: no routing to the cell-major files or the statistics.",
)
def sql(store, query, fmt, safe, timeout, max_rows, memory_limit, threads, explain, as_written):
    """Run SQL against the store's catalog (read-only) and print the result.

    SQL is a query string, or - to read it from stdin. A question is answered from the files that hold
    its answer cheapest, with the same result (docs/sql.md, "Which view answers which question"): one
    filtered on cells and not on genes from the cell-major files, an aggregate the statistics hold from
    them; --explain says which, --as-written turns it off. With --safe the query is treated as untrusted
    (docs/sql.md, "Untrusted SQL"). Tables: cells, genes, taxonomy_terms, clusters, donors, libraries,
    value_sets, ...; views: expression_annotated (by gene), expression_annotated_by_cell (by cell),
    term_gene_means (per term, zeros filled), ... (docs/data-dictionary.md; recipes: docs/sql.md).

    Example:

        hmba-db sql data/demo-store "select species, count(*) as cells from cells group by species"
    """
    import duckdb

    from .access.connect import connect

    query = _read_sql(query)
    if safe and isinstance(store, str):
        raise click.ClickException(
            f"{store}: --safe runs on a local store only (its sandbox allows no network access); "
            "run untrusted SQL against a local copy of the store"
        )
    if safe:
        from .access.sandbox import run_safe

        result = run_safe(
            store,
            query,
            timeout=timeout,
            max_rows=max_rows,
            memory_limit=memory_limit,
            threads=threads,
            route=not as_written,
        )
        if explain:
            _explain(result.route)
        _emit(result.frame, fmt)
        if result.truncated:
            click.echo(f"(stopped at {max_rows:,} rows: --max-rows)", err=True)
        return
    from .access.router import Routed, route

    con = connect(store)
    chosen = Routed(query, "as written", "--as-written") if as_written else route(con, query)
    if explain:
        _explain(chosen.as_dict())
    try:
        rel = con.sql(chosen.sql)
        if rel is None:
            click.echo("(statement ran; no result)", err=True)
            return
        _stream(rel.to_arrow_reader(STREAM_ROWS), fmt, max_rows)
    except duckdb.Error as e:
        raise click.ClickException(_over_http(e) or " ".join(str(e).split())) from e


def _explain(route: dict | None) -> None:
    if route is None:
        return
    said = "answered from" if route["source"] != "as written" else "run"
    click.echo(f"route: {said} {route['source']}: {route['why']}", err=True)
    if route["source"] != "as written":
        click.echo(f"route: ran {route['sql']}", err=True)


STREAM_ROWS = 65_536  # rows per Arrow batch written out: a few MB, whatever the result's size


def _stream(reader, fmt: str, max_rows: int) -> None:
    """Write a result batch by batch, so a result larger than memory never becomes one DataFrame: csv and
    json stream every row; the aligned table needs all its rows at once, so it stops at max_rows."""
    if fmt == "table":
        from .access.connect import first_rows

        table, truncated = first_rows(reader, max_rows)
        _emit(table.to_pandas(), fmt)
        if truncated:
            click.echo(
                f"(stopped at {max_rows:,} rows: --max-rows; --format csv streams every row)", err=True
            )
        return
    from .access.results import write_stream

    for note in write_stream(reader, fmt, sys.stdout):
        click.echo(f"note: {note}", err=True)


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
def info(store):
    """Summarise a store: species, cells, genes, non-zeros, size, and what it was built from.

    Example:

        hmba-db info data/demo-store
    """
    from .access.info import store_info

    info = store_info(store, sizes=True)
    click.echo(f"store     {info['store_dir']} ({info['size_bytes'] / 2**20:,.1f} MiB)")
    if info["snapshot"] != Path(info["store_dir"]).name:
        older = info["older_snapshots"]
        kept = f"; {len(older)} older kept for open readers ({', '.join(older)})" if older else ""
        click.echo(f"snapshot  {info['snapshot']}{kept}")
    click.echo(f"built     {info['built_at']} by hmba-db {info['tool_version']}")
    click.echo(f"release   {info['release']} (version {info['release_version']})")
    if info["licence"].get("taxonomy"):
        click.echo(f"taxonomy  {info['licence']['taxonomy']}")
    click.echo("species   cells        with cluster  not in cell_metadata  genes    non-zeros      buckets")
    for sp in info["species"]:
        click.echo(
            f"{sp['species']:9s} {sp['cells']:<12,} {sp['with_cluster']:<13,} "
            f"{sp['not_in_cell_metadata']:<21,} {sp['genes']:<8,} {sp['nnz']:<14,} {sp['gene_buckets']}"
        )
    for rel, src in info["sources"].items():
        how = {"hashed": " (the file's, hashed by the build)", "trusted": " (download's record, unchanged)"}
        click.echo(f"source    {rel} md5 {src['md5']}{how.get(src.get('md5_checked'), '')}")
    licence = info["licence"]
    if licence.get("data_licence"):
        click.echo(
            f"licence   {licence['data_licence']} ({licence['data_licence_url']}): cite {licence['citation']}"
        )


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
def relocate(store):
    """Repair a moved or copied store: point the catalog's views at where STORE is now.

    The catalog stores absolute paths so that any program can open it from anywhere without setup; after
    moving the folder, run this once (connect() also works around a move in read-only sessions).

    Example:

        mkdir -p /srv/hmba && mv data/store /srv/hmba/ && hmba-db relocate /srv/hmba/store
    """
    from .store.catalog import relocate as run

    old, new = run(store)
    click.echo(f"views now read {new}" + (f" (were {old})" if old and old != new else ""))


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option(
    "--base-url",
    required=True,
    metavar="URL",
    help="Where STORE will be served: https://HOST/PATH or s3://BUCKET/PATH (the folder of STORE's files).",
)
def publish(store, base_url):
    """Write STORE/published.duckdb: a catalog for STORE served at URL, read over HTTP(S) or S3.

    Its views name every Parquet file by URL (a web server has no folder listing); the small tables are
    inside it. Upload the files STORE/published.json lists (or the whole folder) to URL, then open it with
    build_db.connect(URL), `hmba-db sql URL ...`, or plain DuckDB: ATTACH 'URL/published.duckdb' (READ_ONLY).
    Later builds of STORE publish it again for the same URL (upload the new files then).

    Example:

        hmba-db publish data/store --base-url https://example.org/hmba/store
    """
    from .store.publish import publish as run

    record = run(store, base_url)
    n, size = len(record["files"]), record["bytes"]
    click.echo(f"wrote {Path(store) / 'published.duckdb'} for {record['base_url']}")
    click.echo(
        f"serve these {n:,} files ({size / 2**20:,.1f} MiB; listed in {Path(store) / 'published.json'})"
    )
    click.echo(
        f"open with: build_db.connect({record['base_url']!r}) or ATTACH {record['catalog_url']!r} (READ_ONLY)"
    )


@main.command()
@click.argument("name", required=False)
def queries(name):
    """List the named analyses (queries/*.sql) with their parameters; with NAME, show one and its SQL.

    Example:

        hmba-db queries markers
    """
    from .access.queries import get_query, list_queries

    if name:
        q = get_query(name)
        click.echo(f"{q.name}: {q.title}\n\n{q.description}\n")
        for p in q.params:
            default = f"default {shlex.quote(p.default)}" if p.default is not None else "required"
            click.echo(f"  --param {p.name}=...  {p.description} [{p.type}, {default}]")
        if q.plot:
            click.echo(
                f"\n--plot draws a {q.plot.kind}: {' '.join(f'{k}={v}' for k, v in q.plot.options.items())}"
            )
        click.echo(f"\n{q.path}:\n\n{q.sql}")
        return
    for q in list_queries().values():
        click.echo(f"{q.name:<26} {q.title}")
        click.echo(f"{'':<26} {q.usage()}")


def _params(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{v!r}: write NAME=VALUE, e.g. genes=DRD1,DRD2", param_hint="--param")
        if key.strip() in out:  # the later one silently won before: genes=DRD1 then genes=DRD2 asked DRD2
            raise click.BadParameter(
                f"{key.strip()} is given twice; give it once (lists are comma-separated, e.g. "
                f"{key.strip()}={out[key.strip()]},{value.strip()})",
                param_hint="--param",
            )
        out[key.strip()] = value.strip()
    return out


@main.command()
@click.argument("store", type=STORE_OR_URL)
@click.argument("name")
@click.option(
    "--param", "-p", "params", multiple=True, metavar="NAME=VALUE", help="A parameter; repeat for more."
)
@format_option
@click.option(
    "--plot", type=click.Path(path_type=Path), help="Also draw the analysis's picture to this file."
)
@click.option("--show-sql", is_flag=True, help="Print the SQL with parameters filled in, and do not run it.")
@click.option(
    "--engine",
    type=click.Choice(["duckdb", "spark"]),
    default="duckdb",
    show_default=True,
    help="Run on DuckDB, or on Spark (local[2]; STORE may then be a Hadoop URI such as s3a://...).",
)
def query(store, name, params, fmt, plot, show_sql, engine):
    """Run the named analysis NAME on STORE (`hmba-db queries` lists them and their parameters).

    Gene symbols are checked and resolved to their (species, gene_index, gene_bucket) first, so the query
    reads only those genes' files and row groups; an unknown symbol lists the closest known ones.

    Example:

        hmba-db query data/demo-store markers --param term=Astrocyte --param level=Subclass --plot m.png
    """
    import time

    from .access.queries import get_query, prepare

    q = get_query(name)
    if plot:
        if q.plot is None:
            raise click.ClickException(f"query {name} has no picture (no '-- plot:' line)")
        from .access.plots import plot_path

        plot = plot_path(plot)  # before the query runs: a bad path costs nothing
    prepared = prepare(store, name, engine=engine, **_params(params))
    rendered = prepared.rendered
    for note in rendered.notes:
        click.echo(f"note: {note}", err=True)
    if show_sql:
        click.echo(prepared.sql)
        return
    t0 = time.perf_counter()
    df = prepared.run()
    took = time.perf_counter() - t0
    _emit(df, fmt)
    click.echo(f"({len(df):,} rows in {took * 1000:.0f} ms)", err=True)
    if plot:
        from .access.plots import draw

        # What the user asked for (a term by its name, as typed), then the defaults as resolved.
        given = _params(params)
        shown = {
            k: given.get(k, v)
            for k, v in rendered.values.items()
            if k not in ("gene_indexes", "gene_buckets")
        }
        term = q.param("term")
        if "term" in shown and "term" not in given and term is not None:
            shown["term"] = term.default
        title = f"{q.title}\n" + ", ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in shown.items()
        )
        assert q.plot is not None  # checked before the query ran
        click.echo(f"plot written to {draw(df, q.plot, title, plot)}", err=True)


@main.group()
def export() -> None:
    """Export from a store into other tools' formats: an AnnData (h5ad) file, a MapMyCells reference.

    Example:

        hmba-db export anndata data/store astro.h5ad --species Human --cells "group_name = 'Astrocyte'"
    """


@export.command("anndata")
@click.argument("store", type=STORE_OR_URL)
@click.argument("out", type=click.Path(path_type=Path))
@one_species_option
@click.option(
    "--cells",
    default=None,
    help="A SQL condition on the cells table choosing the cells (default: all the species' cells).",
)
@click.option("--genes", default=None, help="Gene symbols or identifiers, comma-separated (default: all).")
@click.option(
    "--read",
    type=click.Choice(["auto", "by_gene", "by_cell"]),
    default="auto",
    show_default=True,
    help="Which layout to read: auto takes the one holding fewer rows for the selection.",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@quiet_option
def export_anndata(store, out, species, cells, genes, read, force, quiet):
    """Write a selection of cells x genes (raw counts, cells and genes tables as obs and var) as an h5ad
    file, as build_db.to_anndata returns it.

    The selection's size is counted and said first; the file is written beside OUT and renamed into place,
    so an interrupted export leaves no half-written OUT.

    Example:

        hmba-db export anndata data/store astro.h5ad --species Human --cells "group_name = 'Astrocyte'"
    """
    import time

    from .access.connect import connect
    from .access.export import estimate_nnz, to_anndata

    out = Path(out)
    if out.exists() and not force:
        raise click.ClickException(f"{out}: exists; pass --force to replace it, or choose another name")
    if out.suffix != ".h5ad":
        raise click.ClickException(f"{out}: name the file .h5ad (the AnnData file format)")
    if not out.parent.is_dir():
        raise click.ClickException(f"{out.parent}: no such folder; create it or choose another place")
    gene_list = [g.strip() for g in genes.split(",") if g.strip()] if genes else None
    con = connect(store)
    t0 = time.perf_counter()
    n_cells, n_genes, nnz = estimate_nnz(con, species, gene_list, cells)
    if not quiet:
        click.echo(f"reading {n_cells:,} cells x {n_genes:,} genes ({nnz:,} non-zeros)", err=True)
    adata = to_anndata(con, species, gene_list, cells, read=read)
    tmp = out.with_name(f".{out.name}.writing")
    if not quiet:
        click.echo(f"writing {out} ({time.perf_counter() - t0:.1f} s so far)", err=True)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    click.echo(
        f"{out}: {adata.n_obs:,} cells x {adata.n_vars:,} genes, {adata.X.nnz:,} non-zeros "
        f"({out.stat().st_size / 2**20:,.1f} MiB) in {time.perf_counter() - t0:.1f} s"
    )


@export.command("mapmycells")
@click.argument("store", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@one_species_option
@click.option(
    "--cells",
    default=None,
    help="A SQL condition on the cells table choosing the reference cells (default: all with a cluster).",
)
@click.option(
    "--min-cells", type=click.IntRange(min=1), default=1, show_default=True, help="Smallest cluster kept."
)
@click.option(
    "--markers-per-child",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Marker genes chosen per child node in query_markers.json.",
)
@click.option(
    "--markers-per-node",
    type=click.IntRange(min=1),
    default=None,
    help="Instead: this many marker genes per parent node, taken in turn from its children's rankings "
    "(e.g. 1000 for a list as long as cell_type_mapper's own; docs/python.md says when).",
)
@click.option("--force", is_flag=True, help="Replace a reference already in OUT (never other files).")
def export_mapmycells(store, out, species, cells, min_cells, markers_per_child, markers_per_node, force):
    """Write a MapMyCells reference for one species: OUT/precomputed_stats.h5 and OUT/query_markers.json.

    Without --cells the sums come from the store's statistics (seconds); with --cells they are summed from
    the expression store for the selected cells only. cell_type_mapper's from_specified_markers maps cells
    with the two files (docs/python.md: MapMyCells).

    Example:

        hmba-db export mapmycells data/store ref --species Human --cells "region_of_interest_label = 'PuR'"
    """
    from .access.mapmycells import export_mapmycells as run

    ctx = click.get_current_context()
    source = ctx.get_parameter_source("markers_per_child")
    if markers_per_node and source is not None and source.name != "DEFAULT":
        raise click.UsageError("give --markers-per-child or --markers-per-node, not both")
    ref = run(
        store,
        out,
        species,
        cells=cells,
        min_cells=min_cells,
        markers_per_child=markers_per_child,
        markers_per_node=markers_per_node,
        force=force,
    )
    click.echo(
        f"{ref.stats}: {len(ref.clusters):,} clusters x {len(ref.genes):,} genes, {int(ref.n_cells.sum()):,} "
        f"cells, from the {ref.source}"
    )
    click.echo(f"{ref.markers}: {ref.markers_summary()}")


@main.command()
@click.argument("store", type=STORE_OR_URL)
@click.option(
    "--host", default=D.SERVE_HOST, show_default=True, help="Address to listen on (0.0.0.0: every one)."
)
@click.option("--port", type=click.IntRange(1, 65535), default=D.SERVE_PORT, show_default=True, help="Port.")
@click.option(
    "--token",
    default=None,
    help="Require `Authorization: Bearer TOKEN` on every /api request (every local user sees it in `ps`: "
    "prefer --token-file or HMBA_TOKEN).",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Read the token from this file (its first line), e.g. /etc/hmba/token (mode 600).",
)
@click.option(
    "--allowed-hosts",
    default=None,
    metavar="NAMES",
    help="Host names requests may carry, comma-separated (* for any): the name a reverse proxy or a "
    "browser uses. Default: the listening address's own (127.0.0.1, localhost, ::1 for a local one); any "
    "for 0.0.0.0.",
)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Server processes.")
@click.option(
    "--timeout",
    type=Finite(min=0.1),
    default=D.SERVE_TIMEOUT,
    show_default=True,
    help="Seconds a request may run before a 504.",
)
@click.option(
    "--max-export-mb",
    type=Finite(min=0, min_open=True),
    default=D.SERVE_MAX_EXPORT_MB,
    show_default=True,
    help="Largest AnnData download (estimated before it is made); larger selections get a 413.",
)
@click.option(
    "--sql-memory-limit",
    default=D.SQL_MEMORY_LIMIT,
    show_default=True,
    help="Memory of each sandboxed SQL query.",
)
@click.option(
    "--sql-workers",
    type=click.IntRange(min=1),
    default=D.SERVE_SQL_WORKERS,
    show_default=True,
    help="Sandbox processes running untrusted SQL at once.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Server log detail (debug logs every request).",
)
def serve(
    store,
    host,
    port,
    token,
    token_file,
    allowed_hosts,
    workers,
    timeout,
    max_export_mb,
    sql_memory_limit,
    sql_workers,
    log_level,
):
    """Serve STORE over HTTP: a JSON API (/api/v1, described at /openapi.json and /api/docs) and the
    explorer page at /.

    STORE is a local store or a published store's URL. Each request answers from one build; a rebuild of
    STORE is picked up between requests. Nothing is written to the store. docs/serve.md tells how to run
    it for a lab (a systemd unit, TLS behind a reverse proxy, --token).

    Example:

        hmba-db serve data/demo-store --port 8000
    """
    from .serve.app import ServeConfig
    from .serve.run import hosts_for, token_from
    from .serve.run import serve as run

    run(
        ServeConfig(
            store=str(store),
            token=token_from(token, token_file, os.environ.get("HMBA_TOKEN")),
            allowed_hosts=hosts_for(host, allowed_hosts),
            timeout=timeout,
            max_export_mb=max_export_mb,
            sandbox_workers=sql_workers,
            sandbox_memory_limit=sql_memory_limit,
        ),
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


@main.command("connect-info")
@click.argument("store", type=click.Path(path_type=Path))
def connect_info(store):
    """Print how to connect BI tools (Superset, Metabase, Tableau, Power BI, Grafana, DBeaver) to STORE.

    Every recipe opens STORE/catalog.duckdb read-only; no init statement is needed.

    Example:

        hmba-db connect-info data/demo-store
    """
    from .access.bi import recipes

    click.echo(recipes(store))


if __name__ == "__main__":
    main()
