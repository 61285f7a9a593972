"""The JSON API of `hmba-db serve`, on FastAPI: every answer from one snapshot, the library's numbers.

Routes (all under /api/v1, JSON unless `?format=csv` / `Accept: text/csv`, or `format=parquet` for tables):
health, queries, one route per named analysis (`query/{name}`, its parameters declared from its header),
genes (autocomplete), terms and terms/{label}, umap (columnar JSON or Arrow IPC), sql (the sandbox), and
export/anndata (an h5ad download). `/openapi.json` describes them; `/api/docs` is Swagger UI, served from
the swagger-ui-py package (no CDN). `/` is the explorer page (`explorer/`).

Bad input is a 4xx with `{"error": "one line"}`; a query past the time limit is a 504 that frees its
connection, and a client that goes away stops its work. Answers carry their build id (in the body and
`X-HMBA-Build`), an `ETag` of build id and request, and are kept in a bounded cache per build.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware

from .. import defaults as D
from ..access import results as out
from ..access.embedding import umap_points
from ..access.genes import search_genes
from ..access.queries import PARAM_TYPES, built_species, execute, get_query, list_queries, render
from ..access.sandbox import UnsafeQuery
from ..access.taxonomy import list_terms, term_detail
from ..errors import HmbaError
from ..release import layout as R
from ..store.paths import is_url
from ..version import __version__
from .snapshots import Busy, Stores

log = logging.getLogger("hmba-db.serve")
API = "/api/v1"
FORMATS = ("json", "csv", "parquet")
CACHE_BYTES = 64 * 2**20  # answers kept per server: a few hundred dot plots; the oldest go first
MAX_POINTS = 2_000_000  # UMAP points per answer at most (the largest species has 1.68 M cells)
MAX_GENE_HITS = 200
TOKEN_NEEDED = "this server needs a token: send Authorization: Bearer TOKEN (hmba-db serve --token)"


@dataclass
class ServeConfig:
    """What `hmba-db serve` was started with (passed to worker processes as JSON)."""

    store: str
    token: str | None = None
    timeout: float = D.SERVE_TIMEOUT
    export_timeout: float = 600.0
    max_export_mb: float = D.SERVE_MAX_EXPORT_MB
    sandbox_workers: int = D.SERVE_SQL_WORKERS
    sandbox_memory_limit: str = D.SQL_MEMORY_LIMIT
    sandbox_threads: int = D.SQL_THREADS
    sql_timeout: float = D.SQL_TIMEOUT
    sql_max_rows: int = D.SQL_MAX_ROWS
    pool_size: int = 4
    cache_bytes: int = CACHE_BYTES
    extra: dict = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, " ".join(str(message).split()), headers or {}


class _Guard:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware hides a client's disconnect from the routes):
    the token on /api requests, and a Server-Timing header on every answer."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.token and path.startswith("/api/") and not path.startswith("/api/docs"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
                response = JSONResponse(
                    {"error": TOKEN_NEEDED},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
        t0 = time.perf_counter()

        async def timed(message):
            if message["type"] == "http.response.start":
                took = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", took)]}
            await send(message)

        await self.app(scope, receive, timed)


class SqlRequest(BaseModel):
    sql: str = Field(..., description="One SELECT over the catalog's tables and views", max_length=100_000)
    max_rows: int = Field(1000, ge=0, le=1_000_000, description="Rows returned at most (the answer says so)")
    timeout: float = Field(D.SQL_TIMEOUT, gt=0, le=300, description="Seconds before the query is stopped")


class _Answers:
    """A byte-bounded LRU of finished answers, keyed by build id and request: a build never changes, so an
    answer is good as long as its build is the one served."""

    def __init__(self, budget: int):
        self.budget, self.size = budget, 0
        self.items: OrderedDict[tuple, tuple[bytes, str, dict]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
            return hit

    def put(self, key, value) -> None:
        n = len(value[0])
        if n > self.budget // 8:  # one answer may not push out most of the others
            return
        with self.lock:
            if key in self.items:
                return
            self.items[key] = value
            self.size += n
            while self.size > self.budget:
                _, (body, *_) = self.items.popitem(last=False)
                self.size -= len(body)


def _fmt(request: Request, allowed=FORMATS) -> str:
    fmt = request.query_params.get("format")
    if fmt is None:
        accept = request.headers.get("accept", "")
        fmt = "csv" if "text/csv" in accept else "json"
    if fmt not in allowed:
        raise ApiError(400, f"format={fmt}: choose {', '.join(allowed)}")
    return fmt


def _species_list(built: list[str], value: str | None) -> list[str]:
    """Species asked for (comma-separated, any case, or all), each in the store."""
    if value is None or value.strip().lower() in ("", "all"):
        return built
    out = []
    for item in value.split(","):
        try:
            match = R.species_named(item.strip())
        except HmbaError as e:
            raise ApiError(400, str(e)) from e
        if match not in built:
            raise ApiError(400, f"species={match}: not in this store (built: {', '.join(built)})")
        out.append(match)
    return out


def _one_species(built: list[str], value: str) -> str:
    chosen = _species_list(built, value)
    if len(chosen) != 1 or value.strip().lower() == "all":
        raise ApiError(400, f"species={value}: give one species ({', '.join(built)})")
    return chosen[0]


def create_app(config: ServeConfig) -> FastAPI:
    stores = Stores(
        config.store if "://" in config.store else Path(config.store),
        pool_size=config.pool_size,
        sandbox_options={
            "workers": config.sandbox_workers,
            "memory_limit": config.sandbox_memory_limit,
            "threads": config.sandbox_threads,
        },
    )
    answers = _Answers(config.cache_bytes)
    executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="hmba-serve")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        stores.close()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        lifespan=lifespan,
        title="hmba-db",
        version=__version__,
        description="The HMBA basal-ganglia snRNA-seq store over HTTP: named analyses, gene search, the "
        "taxonomy, UMAP coordinates, sandboxed SQL and AnnData downloads. Every answer names the store "
        "build it was read from (`build_id`).",
        docs_url=None,
        redoc_url=None,
    )
    app.state.stores = stores
    # Level 1: a 200,000-point UMAP (4.4 MiB of JSON) in 35 ms as 1.40 MiB, against 125 ms and 1.17 MiB at
    # level 5 (full Human); a dot plot's 61 KiB in 0.4 ms, against 1.4 ms, 6% larger.
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=1)

    def species_of(snap) -> list[str]:
        if not hasattr(snap, "species"):
            with snap.connection() as con:
                snap.species = built_species(con)
        return snap.species

    app.add_middleware(_Guard, token=config.token)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        parts = []
        for err in e.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body", "path"))
            parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
        return JSONResponse({"error": "; ".join(parts) + "; see /openapi.json"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        message = e.detail if isinstance(e.detail, str) else "bad request"
        if e.status_code == 404:
            message = f"{request.url.path}: no such page; the API is under {API} (see /api/docs)"
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse({"error": message}, status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(
            {"error": f"internal error ({type(e).__name__}); the server log has it"}, status_code=500
        )

    # --- running one request's work on one snapshot, stopped at its time limit or when the client goes ---

    async def run(request: Request, fn, *, timeout: float, snap=None, cancel: threading.Event | None = None):
        """fn(snap, con) in a worker thread on one snapshot's connection; a 504 past `timeout`, and an
        interrupted query when the client disconnects (its connection goes back to the pool either way)."""
        state: dict = {}

        def job():
            own = snap is None
            s = stores.current() if own else snap
            try:
                with s.connection() as con:
                    state["con"] = con
                    try:
                        return fn(s, con)
                    finally:
                        state.pop("con", None)
            finally:
                if own:
                    stores.release(s)

        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(executor, job)
        deadline = time.monotonic() + timeout
        why = None
        while True:
            done, _ = await asyncio.wait({fut}, timeout=0.2)
            if done:
                break
            if why is None and await request.is_disconnected():
                why = "gone"
            elif why is None and time.monotonic() > deadline:
                why = "late"
            if why is not None:
                if cancel is not None:
                    cancel.set()
                con = state.get("con")
                if con is not None:
                    con.interrupt()
        try:
            result = fut.result()
        except (duckdb.InterruptException, UnsafeQuery) as e:
            if why == "late" or (isinstance(e, duckdb.InterruptException) and why is None):
                raise ApiError(
                    504, f"the request ran longer than the server's {timeout:g} s limit and was stopped"
                ) from e
            if why == "gone":
                raise ApiError(499, "the client went away") from e
            raise
        if why == "late":
            raise ApiError(
                504, f"the request ran longer than the server's {timeout:g} s limit and was stopped"
            )
        return result

    async def answer(request: Request, make, *, key: tuple, timeout: float | None = None, cache: bool = True):
        """The cached or freshly made answer to a request, with its ETag and build id.

        make(snap, con) -> (body bytes, media type); the key names the request beyond its build."""
        snap = await asyncio.get_running_loop().run_in_executor(executor, stores.current)
        try:
            canonical = (request.url.path, key)
            etag = '"' + hashlib.sha1(repr((snap.build_id, canonical)).encode()).hexdigest()[:24] + '"'
            headers = {
                "ETag": etag,
                "X-HMBA-Build": snap.build_id,
                "Cache-Control": "private, no-cache" if config.token else "public, no-cache",
            }
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers=headers)
            hit = answers.get((snap.build_id, canonical)) if cache else None
            if hit is None:
                body, media = await run(request, make, timeout=timeout or config.timeout, snap=snap)
                if cache:
                    answers.put((snap.build_id, canonical), (body, media, {}))
            else:
                body, media, _ = hit
            return Response(body, media_type=media, headers=headers)
        finally:
            stores.release(snap)

    def json_body(payload: dict, snap) -> tuple[bytes, str]:
        payload = {**payload, "build_id": snap.build_id}
        return out.json_bytes(payload), "application/json"

    def frame_body(df, fmt: str, snap, extra: dict) -> tuple[bytes, str]:
        if fmt == "csv":
            return out.frame_csv(df).encode(), "text/csv; charset=utf-8"
        if fmt == "parquet":
            return out.frame_parquet(df), "application/vnd.apache.parquet"
        columns, rows, notes = out.frame_rows(df)
        return json_body(
            {**extra, "columns": columns, "rows": rows, "notes": extra.get("notes", []) + notes}, snap
        )

    def hmba_errors(fn, not_found_keys=()):
        """HmbaError -> 400 (404 for the keys that name a missing thing)."""

        def wrapped(snap, con):
            try:
                return fn(snap, con)
            except Busy as e:
                raise ApiError(503, str(e)) from e
            except UnsafeQuery as e:
                raise ApiError(400, str(e)) from e
            except HmbaError as e:  # the library's messages name the CLI's --param; here it is a parameter
                message = re.sub(r"--param (\w+)", r"\1", str(e))
                raise ApiError(404 if e.key in not_found_keys else 400, message) from e
            except duckdb.InterruptException:
                raise
            except duckdb.Error as e:
                log.error("DuckDB error: %s", e)
                raise ApiError(
                    503,
                    f"the store could not answer ({' '.join(str(e).split())[:300]}); run hmba-db verify "
                    "on it",
                ) from e

        return wrapped

    # --- routes ---

    @app.get(f"{API}/health", summary="Is the server up, and which build does it serve")
    async def health(request: Request):
        def make(snap, con):
            return json_body(
                {
                    "status": "ok",
                    # where the store is (its URL, or its absolute path on the server's machine): the
                    # explorer's "copy as Python" snippets name it
                    "store": config.store if is_url(config.store) else str(Path(config.store).resolve()),
                    "release": snap.info.get("release", ""),
                    "release_version": snap.info.get("release_version", ""),
                    "built_at": snap.info.get("built_at", ""),
                    "tool_version": __version__,
                    "species": species_of(snap),
                    "licence": dict(con.execute("select key, value from licence").fetchall()),
                },
                snap,
            )

        return await answer(request, make, key=())

    @app.get(f"{API}/queries", summary="The named analyses, their parameters, defaults and descriptions")
    async def queries(request: Request):
        def make(snap, con):
            return json_body({"queries": [_describe(q) for q in list_queries().values()]}, snap)

        return await answer(request, make, key=())

    def named_route(q):
        async def endpoint(request: Request, **_declared):
            fmt = _fmt(request, (*FORMATS, "sql"))
            given = {k: v for k, v in request.query_params.multi_items() if k != "format"}
            dup = [k for k in given if len(request.query_params.getlist(k)) > 1]
            if dup:
                raise ApiError(
                    400, f"parameter {dup[0]} is given twice; give it once (lists are comma-separated)"
                )
            unknown = sorted(set(given) - {p.name for p in q.params})
            if unknown:
                accepted = ", ".join(p.name for p in q.params) or "none"
                raise ApiError(
                    400, f"query {q.name} has no parameter {', '.join(unknown)}; it takes: {accepted}"
                )

            def make(snap, con):
                t0 = time.perf_counter()
                rendered = render(con, q, given)
                if fmt == "sql":  # the SQL it would run, not run
                    return (rendered.sql + ";\n").encode(), "text/plain; charset=utf-8"
                df = execute(con, rendered)
                elapsed = (time.perf_counter() - t0) * 1000
                shown = {
                    k: v for k, v in rendered.values.items() if k not in ("gene_indexes", "gene_buckets")
                }
                extra = {
                    "query": q.name,
                    "params": out.json_value(shown),
                    "sql": rendered.sql,
                    "elapsed_ms": round(elapsed, 2),
                    "notes": list(rendered.notes),
                }
                return frame_body(df, fmt, snap, extra)

            return await answer(request, hmba_errors(make), key=(fmt, tuple(sorted(given.items()))))

        params = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
        for p in q.params:
            params.append(
                inspect.Parameter(
                    p.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=str,
                    default=Query(p.default, description=f"{p.description} ({PARAM_TYPES[p.type]})")
                    if p.default is not None
                    else Query(..., description=f"{p.description} ({PARAM_TYPES[p.type]})"),
                )
            )
        params.append(
            inspect.Parameter(
                "format",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=str,
                default=Query(
                    "json",
                    pattern="^(json|csv|parquet|sql)$",
                    description="json, csv or parquet; sql: the SQL it would run, not run",
                ),
            )
        )
        endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # FastAPI reads it
        endpoint.__name__ = f"query_{q.name}"
        return endpoint

    for q in list_queries().values():
        app.add_api_route(
            f"{API}/query/{q.name}",
            named_route(q),
            methods=["GET"],
            summary=q.title,
            description=q.description,
            tags=["named analyses"],
        )

    @app.get(f"{API}/query/{{name}}", include_in_schema=False)
    async def unknown_query(name: str):
        try:
            get_query(name)
        except HmbaError as e:
            raise ApiError(404, str(e)) from e
        raise ApiError(404, f"no query named {name!r}")

    @app.get(f"{API}/genes", summary="Gene autocomplete: symbols and identifiers, prefix matches first")
    async def genes(
        request: Request,
        q: str = Query(
            ..., min_length=1, max_length=100, description="What was typed: part of a symbol or identifier"
        ),
        species: str = Query("all", max_length=100, description="Species, comma-separated, or all"),
        limit: int = Query(20, ge=1, le=MAX_GENE_HITS),
    ):
        def make(snap, con):
            chosen = _species_list(species_of(snap), species)
            hits = [asdict(h) for h in search_genes(con, q, chosen, limit)]
            return json_body({"q": q, "species": chosen, "hits": hits}, snap)

        return await answer(request, hmba_errors(make), key=(q, species, limit))

    @app.get(f"{API}/terms", summary="The terms of a taxonomy level, with cells per species")
    async def terms(
        request: Request,
        level: str = Query(
            "Group", max_length=40, description="Neighborhood, Class, Subclass, Group or Cluster"
        ),
        species: str = Query("all", max_length=100, description="Species, comma-separated, or all"),
    ):
        def make(snap, con):
            chosen = _species_list(species_of(snap), species)
            rows = list_terms(con, level, chosen)
            return json_body(
                {"level": rows[0]["level"] if rows else level, "species": chosen, "terms": rows}, snap
            )

        return await answer(request, hmba_errors(make), key=(level, species))

    @app.get(
        f"{API}/terms/{{label}}", summary="One term: parent, children, colour, cells by region and donor"
    )
    async def term(
        request: Request,
        label: str,
        species: str = Query("all", max_length=100, description="Species, comma-separated, or all"),
    ):
        def make(snap, con):
            chosen = _species_list(species_of(snap), species)
            return json_body(term_detail(con, label, chosen), snap)

        return await answer(request, hmba_errors(make, not_found_keys=("term",)), key=(label, species))

    @app.get(f"{API}/umap", summary="UMAP coordinates, clusters and one gene's log2(CPM+1), as columns")
    async def umap(
        request: Request,
        species: str = Query("Human", max_length=40),
        gene: str | None = Query(
            None, max_length=100, description="Colour by this gene (symbol or identifier)"
        ),
        max_points: int = Query(
            200_000, ge=1, le=MAX_POINTS, description="Most points; a fixed sample when fewer"
        ),
        format: str = Query(
            "json", pattern="^(json|arrow)$", description="json (columns) or arrow (Arrow IPC)"
        ),
    ):
        def make(snap, con):
            chosen = _one_species(species_of(snap), species)
            u = umap_points(con, chosen, gene, max_points)
            return _umap_body(u, format, snap.build_id)

        return await answer(request, hmba_errors(make), key=(species, gene, max_points, format))

    @app.post(f"{API}/sql", summary="One untrusted SELECT in the sandbox (read-only, capped)")
    async def sql(request: Request, body: SqlRequest):
        fmt = _fmt(request, ("json", "csv"))
        snap = await asyncio.get_running_loop().run_in_executor(executor, stores.current)
        cancel = threading.Event()
        try:
            cap = min(body.max_rows, config.sql_max_rows)
            limit = min(body.timeout, config.sql_timeout)

            def make(s, con):
                t0 = time.perf_counter()
                try:
                    result = s.sandbox().run(body.sql, timeout=limit, max_rows=cap, cancelled=cancel)
                except UnsafeQuery as e:
                    status = 504 if "time limit" in str(e) else 503 if "stayed busy" in str(e) else 400
                    raise ApiError(status, str(e)) from e
                except HmbaError as e:
                    raise ApiError(400, str(e)) from e
                elapsed = (time.perf_counter() - t0) * 1000
                extra = {
                    "max_rows": cap,
                    "truncated": result.truncated,
                    "elapsed_ms": round(elapsed, 2),
                    "notes": [f"stopped at {cap:,} rows (max_rows)"] if result.truncated else [],
                }
                return frame_body(result.frame, fmt, s, extra)

            body_bytes, media = await run(request, make, timeout=limit + 10, snap=snap, cancel=cancel)
            return Response(body_bytes, media_type=media, headers={"X-HMBA-Build": snap.build_id})
        finally:
            stores.release(snap)

    @app.get(f"{API}/export/anndata", summary="A selection of cells and genes as an h5ad download")
    async def export_anndata(
        request: Request,
        species: str = Query(..., max_length=40),
        cells: str | None = Query(None, max_length=2000, description="An SQL condition on the cells table"),
        genes: str | None = Query(
            None, max_length=20000, description="Gene symbols or identifiers, comma-separated"
        ),
    ):
        snap = await asyncio.get_running_loop().run_in_executor(executor, stores.current)
        try:
            gene_list = [g.strip() for g in genes.split(",") if g.strip()] if genes else None

            def make(s, con):
                from ..access.export import estimate_nnz, to_anndata

                chosen = _one_species(species_of(s), species)
                n_cells, n_genes, nnz = estimate_nnz(con, chosen, gene_list, cells)
                size_mb = (nnz * 8 + n_cells * 400 + n_genes * 100) / 2**20
                if size_mb > config.max_export_mb:
                    raise ApiError(
                        413,
                        f"the selection holds {n_cells:,} cells x {n_genes:,} genes, {nnz:,} non-zeros "
                        f"(~{size_mb:,.0f} MiB as h5ad), past this server's {config.max_export_mb:g} MiB "
                        "limit; narrow cells or genes, or use build_db.to_anndata on the store",
                    )
                adata = to_anndata(con, chosen, gene_list, cells)
                fd, path = tempfile.mkstemp(prefix="hmba-export-", suffix=".h5ad")
                os.close(fd)
                adata.write_h5ad(path)
                return path, chosen

            path, chosen = await run(request, hmba_errors(make), timeout=config.export_timeout, snap=snap)
            return FileResponse(
                path,
                media_type="application/x-hdf5",
                filename=f"hmba-{chosen}-{snap.build_id}.h5ad",
                headers={"X-HMBA-Build": snap.build_id},
                background=BackgroundTask(os.unlink, path),
            )
        finally:
            stores.release(snap)

    # --- the docs page and the explorer ---

    import swagger_ui

    static = Path(swagger_ui.__file__).parent / "static"
    app.mount("/api/docs/static", StaticFiles(directory=static), name="swagger")

    @app.get("/api/docs", include_in_schema=False)
    async def docs():
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="hmba-db API",
            swagger_js_url="/api/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/api/docs/static/swagger-ui.css",
            swagger_favicon_url="/api/docs/static/favicon-32x32.png",
        )

    from .explorer import mount_explorer

    if not mount_explorer(app):

        @app.get("/", include_in_schema=False)
        async def root():
            return RedirectResponse("/api/docs")

    app.state.config = config
    return app


def _describe(q) -> dict:
    return {
        "name": q.name,
        "title": q.title,
        "description": q.description,
        "params": [
            {
                "name": p.name,
                "type": p.type,
                "default": p.default,
                "required": p.default is None,
                "description": p.description,
                "accepts": PARAM_TYPES[p.type],
            }
            for p in q.params
        ],
        "plot": {"kind": q.plot.kind, **q.plot.options} if q.plot else None,
        "example": q.example,
        "url": f"{API}/query/{q.name}",
    }


def _umap_body(u: dict, fmt: str, build_id: str) -> tuple[bytes, str]:
    meta = {
        "species": u["species"],
        "n_cells": u["n_cells"],
        "n_points": u["n_points"],
        "sampled": u["sampled"],
        "gene": u["gene"],
        "clusters": u["clusters"],
        "build_id": build_id,
    }
    if fmt == "arrow":
        import pyarrow as pa

        cols = {"x": u["x"], "y": u["y"], "cluster": u["cluster"]}
        if "value" in u:
            cols["value"] = u["value"]
        table = pa.table(cols).replace_schema_metadata({"hmba": json.dumps(meta)})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream"
    # Coordinates to 1/1000 of a UMAP unit and log2(CPM+1) to 3 decimals: a few bytes a number.
    columns = {
        "x": np.round(u["x"].astype(np.float64), 3),
        "y": np.round(u["y"].astype(np.float64), 3),
        "cluster": np.ascontiguousarray(u["cluster"]),
    }
    if "value" in u:
        columns["value"] = np.round(u["value"].astype(np.float64), 3)
    return out.json_bytes({**meta, **columns}), "application/json"


def app_from_env() -> FastAPI:
    """The app of a uvicorn worker process (`--workers N`): its config in HMBA_SERVE_CONFIG."""
    return create_app(ServeConfig(**json.loads(os.environ["HMBA_SERVE_CONFIG"])))
