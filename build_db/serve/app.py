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
import math
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
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
from ..access.sandbox import GRACE as SANDBOX_GRACE
from ..access.sandbox import MAX_ROWS, UnsafeQuery
from ..access.taxonomy import list_terms, term_detail
from ..errors import HmbaError, StoreError
from ..release import layout as R
from ..store.catalog import sql_literal
from ..store.paths import is_url
from ..version import __version__
from .snapshots import POOL_WAIT, Busy, Stores

log = logging.getLogger("hmba-db.serve")
API = "/api/v1"
FORMATS = ("json", "csv", "parquet")
CACHE_BYTES = 64 * 2**20  # answers kept per server: a few hundred dot plots; the oldest go first
MAX_POINTS = 2_000_000  # UMAP points per answer at most (the largest species has 1.68 M cells)
MAX_GENE_HITS = 200
# Genes one request may name: a dot plot of 34 genes is a wide one, a pathway a few hundred; each unknown one
# costs a closest-symbol search, so past this a request is refused before any work (a 400).
MAX_GENES = 1000
MAX_EXPORT_GENES = 5000  # an export of chosen genes: a list of highly variable genes is 2,000-5,000
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")
SHORT_GRACE = 1.0  # seconds past a deadline before a request is answered whatever its work is doing
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
    # Host headers answered (DNS rebinding: a web page whose name resolves to 127.0.0.1 must not read a
    # token-less server); None answers any (a server listening on every address, without --allowed-hosts).
    allowed_hosts: list[str] | None = field(default_factory=lambda: list(LOCAL_NAMES))
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse what would switch a protection off without a word: an empty token, a limit of nan."""
        if self.token is not None and (not isinstance(self.token, str) or not self.token.strip()):
            raise HmbaError(
                "the token is empty: an empty token would let anyone in; give one with --token-file FILE or "
                "HMBA_TOKEN (a file holding an empty line gives an empty token), or none for no token"
            )
        for name in ("timeout", "export_timeout", "max_export_mb", "sql_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < math.inf:  # nan fails too
                raise HmbaError(f"{name}={value}: give a finite number above 0")
        for name in ("pool_size", "sandbox_workers", "sandbox_threads", "sql_max_rows"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise HmbaError(f"{name}={getattr(self, name)}: give a whole number from 1")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, " ".join(str(message).split()), headers or {}


class _Guard:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware hides a client's disconnect from the routes):
    the Host header against the names the server answers to, the token on /api requests, and a
    Server-Timing header on every answer."""

    def __init__(self, app, token: str | None, allowed_hosts: list[str] | None):
        self.app, self.token = app, token
        self.hosts = (
            None if allowed_hosts is None or "*" in allowed_hosts else {h.lower() for h in allowed_hosts}
        )

    def _host_ok(self, scope) -> bool:
        if self.hosts is None:
            return True
        given = dict(scope["headers"]).get(b"host")
        if given is None:  # no Host header (HTTP/1.0, a script): not a browser, so not a rebinding page
            return True
        name = given.decode("latin-1").strip().lower()
        if name.startswith("["):  # [::1]:8000
            name = name[1 : name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.rsplit(":", 1)[0]
        return name in self.hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._host_ok(scope):
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")[:100]
            response = JSONResponse(
                {
                    "error": f"Host {host!r} is not one this server answers to; open it by its own address, "
                    "or start it with --allowed-hosts NAME (the name a proxy or a browser uses)"
                },
                status_code=421,
            )
            return await response(scope, receive, send)
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
    timeout: float = Field(
        D.SQL_TIMEOUT, gt=0, le=300, allow_inf_nan=False, description="Seconds before the query is stopped"
    )
    route: bool = Field(
        True,
        description="Answer from the source that holds the answer cheapest (the cell-major files, the "
        "statistics), with the same result; the answer's `route` says which and why. false: as written",
    )


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


def _few_genes(name: str, genes: list[str], most: int = MAX_GENES) -> None:
    """A 400 before any work for a gene list past what one request may ask."""
    n = len([g for g in genes if g.strip()])
    if n > most:
        raise ApiError(
            400,
            f"{name}: {n:,} genes; one request takes at most {most:,} (split the list, or run "
            "build_db.run_query on the store for more)",
        )


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
    # One pool of threads per class of work, so one class waiting cannot take the threads of another: reads
    # (a connection of the snapshot's pool each), sandboxed SQL (a wait on a sandbox child, no connection),
    # exports (minutes, their own connections).
    executors = {
        "reads": ThreadPoolExecutor(max_workers=32, thread_name_prefix="hmba-read"),
        "sql": ThreadPoolExecutor(max_workers=32, thread_name_prefix="hmba-sql"),
        "export": ThreadPoolExecutor(max_workers=8, thread_name_prefix="hmba-export"),
        # taking the current snapshot (a readlink; a new build's opening now and then): never queued
        # behind reads that wait for a connection
        "snapshot": ThreadPoolExecutor(max_workers=4, thread_name_prefix="hmba-snapshot"),
    }
    executor = executors["snapshot"]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        stores.close()
        for ex in executors.values():
            ex.shutdown(wait=False, cancel_futures=True)

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

    app.add_middleware(_Guard, token=config.token, allowed_hosts=config.allowed_hosts)

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

    async def run(request: Request, fn, *, timeout: float, snap=None, kind: str = "reads", on_orphan=None):
        """fn(snap, con, stop) in a worker thread of its kind, on one snapshot: `con` is a connection of the
        readers' pool ("reads"), of the exports' own ("export"), or None ("sql": the work runs in the
        sandbox). Past `timeout` it is a 504 and a client that goes away a 499, each answered at once (the
        connection interrupted, `stop` set for work that looks at it): the request is answered within
        SHORT_GRACE of its deadline whatever the work is doing. A request that waits past its deadline for
        a connection is a 503 (the server is busy); its work never starts. `on_orphan(result)` cleans up
        after work that finished for a request already answered (an export's file)."""
        state: dict = {}
        lock = threading.Lock()
        stop = threading.Event()
        deadline = time.monotonic() + timeout
        held = stores.hold(snap) if snap is not None else None  # the work may outlive the request

        def job():
            s = held if held is not None else stores.current()
            try:
                if kind == "sql":
                    return fn(s, None, stop)
                left = deadline - time.monotonic()
                taken = s.export_connection() if kind == "export" else s.connection(min(POOL_WAIT, left))
                with taken as con:
                    if stop.is_set():  # answered while this waited for a connection: nothing to do
                        return None
                    with lock:
                        state["con"] = con
                    try:
                        return fn(s, con, stop)
                    finally:
                        with lock:
                            state.pop("con", None)
            finally:
                stores.release(s)

        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(executors[kind], job)
        why, stopped_at = None, 0.0
        while True:
            done, _ = await asyncio.wait({fut}, timeout=0.1)
            if done:
                break
            if why is None:
                if await request.is_disconnected():
                    why = "gone"
                elif time.monotonic() > deadline:
                    why = "late"
                if why is not None:
                    stopped_at = time.monotonic()
                    stop.set()
                    with lock:
                        con = state.get("con")
                        if con is not None:
                            con.interrupt()
            elif time.monotonic() - stopped_at > SHORT_GRACE:
                break  # it ends on its own; its answer is nobody's
        if why is not None:
            fut.add_done_callback(partial(_forget, on_orphan=on_orphan))
        if why == "late":
            raise ApiError(
                504, f"the request ran longer than the server's {timeout:g} s limit and was stopped"
            )
        if why == "gone":
            raise ApiError(499, "the client went away")
        try:
            return fut.result()
        except Busy as e:
            raise ApiError(503, str(e), {"Retry-After": "5"}) from e
        except duckdb.InterruptException as e:  # not ours: the server is stopping
            raise ApiError(503, "the server is stopping; try again shortly") from e

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
                body, media = await run(
                    request, lambda s, c, _stop: make(s, c), timeout=timeout or config.timeout, snap=snap
                )
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
        """The library's errors as HTTP: the user's mistakes a 400 (404 for the keys that name a missing
        thing), the store's damage (StoreError, a DuckDB error on our own SQL) and a busy server a 503."""

        def wrapped(snap, con, *rest):
            try:
                return fn(snap, con, *rest)
            except Busy as e:
                raise ApiError(503, str(e), {"Retry-After": "5"}) from e
            except UnsafeQuery as e:
                raise ApiError(_unsafe_status(e), str(e)) from e
            except StoreError as e:
                log.error("the store could not answer: %s", e)
                raise ApiError(503, str(e)) from e
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
            for p in q.params:
                if p.type == "genes" and p.name in given:
                    _few_genes(p.name, given[p.name].split(","))

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
        try:
            cap = min(body.max_rows, config.sql_max_rows)
            limit = min(body.timeout, config.sql_timeout)

            def make(s, _con, stop):  # no connection: the statement runs in a sandbox child
                t0 = time.perf_counter()
                result = s.sandbox().run(
                    body.sql, timeout=limit, max_rows=cap, cancelled=stop, route=body.route
                )
                elapsed = (time.perf_counter() - t0) * 1000
                extra = {
                    "max_rows": cap,
                    "truncated": result.truncated,
                    "elapsed_ms": round(elapsed, 2),
                    "route": result.route,
                    "notes": [f"stopped at {cap:,} rows (max_rows)"] if result.truncated else [],
                }
                return frame_body(result.frame, fmt, s, extra)

            # A wait for a free sandbox child (at most the limit), then the statement (the limit, and the
            # sandbox's grace before it kills the child): the server's own deadline comes after both.
            body_bytes, media = await run(
                request, hmba_errors(make), timeout=2 * limit + SANDBOX_GRACE + 2, snap=snap, kind="sql"
            )
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
        gene_list = [g.strip() for g in genes.split(",") if g.strip()] if genes else None
        if gene_list is not None:
            _few_genes("genes", gene_list, MAX_EXPORT_GENES)
        snap = await asyncio.get_running_loop().run_in_executor(executor, stores.current)
        try:

            def make(s, con, stop):
                from ..access.export import cells_condition, estimate_nnz, to_anndata

                chosen = _one_species(species_of(s), species)
                selection = None
                if cells is not None:
                    # The user's condition runs in the sandbox (its memory, threads and time caps, in a
                    # process whose death is not the server's); the export reads the cells it names.
                    where = cells_condition(con, cells)
                    result = s.sandbox().run(
                        f"select cell_label from cells where species = {sql_literal(chosen)} and {where} "
                        "order by cell_index",
                        timeout=config.sql_timeout,
                        max_rows=MAX_ROWS,
                        cancelled=stop,
                    )
                    selection = result.frame["cell_label"].tolist()
                    if not selection:
                        raise ApiError(400, f"cells={cells!r}: no {chosen} cell matches")
                n_cells, n_genes, nnz = estimate_nnz(con, chosen, gene_list, selection)
                size_mb = (nnz * 8 + n_cells * 400 + n_genes * 100) / 2**20
                if size_mb > config.max_export_mb:
                    raise ApiError(
                        413,
                        f"the selection holds {n_cells:,} cells x {n_genes:,} genes, {nnz:,} non-zeros "
                        f"(~{size_mb:,.0f} MiB as h5ad), past this server's {config.max_export_mb:g} MiB "
                        "limit; narrow cells or genes, or use build_db.to_anndata on the store",
                    )
                adata = to_anndata(con, chosen, gene_list, selection)
                if cells is not None:
                    adata.uns["hmba_db"]["cells"] = cells  # the condition, not a count of labels
                fd, path = tempfile.mkstemp(prefix="hmba-export-", suffix=".h5ad")
                os.close(fd)
                adata.write_h5ad(path)
                return path, chosen

            path, chosen = await run(
                request,
                hmba_errors(make),
                timeout=config.export_timeout,
                snap=snap,
                kind="export",
                on_orphan=lambda made: os.unlink(made[0]),
            )
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


def _unsafe_status(e: Exception) -> int:
    """A sandbox refusal as HTTP: past its time limit 504, no free child 503, the statement's fault 400."""
    text = str(e)
    return 504 if "time limit" in text else 503 if "stayed busy" in text else 400


def _forget(fut, on_orphan=None) -> None:
    """The end of work whose request was already answered: its error retrieved (nothing logged for it),
    its result handed to `on_orphan` to clean up."""
    if fut.cancelled() or fut.exception() is not None:
        return
    if on_orphan is not None and fut.result() is not None:
        on_orphan(fut.result())


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
