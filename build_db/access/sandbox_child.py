"""The sandbox's child process: one sandboxed catalog connection, one untrusted statement at a time.

Started by `sandbox.Sandbox` as `python -m build_db.access.sandbox_child FD_IN FD_OUT CONFIG_JSON`. Before it
opens the catalog it caps its own address space (RLIMIT_AS), so no statement can take more memory than that:
an allocation past it fails (DuckDB reports it as out of memory) or, where nothing catches it, the process
dies and its parent says so. The parent kills it outright past the time limit and a grace period, because
DuckDB's interrupt is cooperative and a list-building statement never looks at it. It also dies with its
parent (PR_SET_PDEATHSIG), so a killed server or CLI leaves no child behind.

Frames on the pipes are `multiprocessing.connection` messages: a request is JSON
{"sql", "max_rows", "timeout", "route"}; an answer is a JSON header {"ok": true, "truncated", "route"}
followed by the rows as an Arrow IPC stream, or {"ok": false, "kind": "timeout" | "memory" | "error",
"message"}. With "route", the statement is routed here (access/router.py), where it runs, so even the
router's look at it (DuckDB binding it) happens under the sandbox.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import weakref
from multiprocessing.connection import Connection
from pathlib import Path

import duckdb

from ..defaults import SQL_MEMORY_LIMIT, SQL_TEMP_LIMIT, SQL_THREADS
from ..errors import HmbaError
from .connect import connect

DEFAULT_MEMORY_LIMIT = SQL_MEMORY_LIMIT  # build_db/defaults.py says why
DEFAULT_THREADS = SQL_THREADS
DEFAULT_TEMP_LIMIT = SQL_TEMP_LIMIT
NICE = 10  # added to the child's niceness: the scheduler gives it what the server's readers leave


class UnsafeQuery(HmbaError):
    """A query the sandbox refuses or stops, with the reason."""


def main(fd_in: int, fd_out: int, config: dict) -> None:
    from ..progress import die_with_parent

    die_with_parent()
    # Untrusted statements yield the CPU to the server's own readers: with the sandbox saturated on a
    # 2-core machine, a dot plot and an autocomplete keep their usual times (tools/bench_abuse.py).
    os.nice(NICE)
    cap = int(config["address_space"])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    requests, answers = Connection(fd_in, writable=False), Connection(fd_out, readable=False)
    import pyarrow as pa

    from .connect import first_rows

    try:
        con = safe_connect(
            config["store"],
            memory_limit=config["memory_limit"],
            threads=config["threads"],
            temp_limit=config["temp_limit"],
            spill=config.get("spill"),
        )
    except Exception as e:  # noqa: BLE001 - told to the parent in one line, whatever it is
        answers.send_bytes(json.dumps({"ok": False, "kind": "error", "message": str(e)}).encode())
        return
    answers.send_bytes(json.dumps({"ok": True, "ready": True}).encode())
    while True:
        try:
            request = json.loads(requests.recv_bytes())
        except EOFError:  # the parent closed the pipe: done
            return
        # The watchdog: at the deadline it interrupts the statement and marks it late. DuckDB looks at an
        # interrupt only between vectors, so a statement can still end after it (a list-building one took
        # 2.9 s under a 1 s limit and answered; here the same one ran out of memory at 14.7 s): whatever a
        # late statement ends in, the answer is the time limit's.
        late = threading.Event()

        def watchdog(late=late):
            late.set()
            con.interrupt()

        timer = threading.Timer(float(request["timeout"]), watchdog)
        timer.start()
        header: dict
        payload = None
        routed = None
        try:
            max_rows = int(request["max_rows"])
            sql = request["sql"]
            if request.get("route"):
                from .router import route

                routed = route(con, sql)
                sql = routed.sql
            reader = con.sql(sql).to_arrow_reader(min(max_rows + 1, 100_000))
            table, truncated = first_rows(reader, max_rows)
            if not late.is_set():
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
                payload = sink.getvalue()
            header = {"ok": True, "truncated": truncated, "route": routed.as_dict() if routed else None}
        except (duckdb.OutOfMemoryException, MemoryError) as e:
            header = {"ok": False, "kind": "memory", "message": " ".join(str(e).split())}
        except Exception as e:  # noqa: BLE001 - any DuckDB error is the query's, told in one line
            header = {"ok": False, "kind": "error", "message": " ".join(str(e).split())}
        finally:
            timer.cancel()
        if late.is_set():
            header, payload = {"ok": False, "kind": "timeout", "message": "past the time limit"}, None
        try:
            answers.send_bytes(json.dumps(header).encode())
            if payload is not None:
                answers.send_bytes(payload)
        except MemoryError:  # the answer itself does not fit under the cap
            answers.send_bytes(json.dumps({"ok": False, "kind": "memory", "message": "answer"}).encode())


def safe_connect(
    store: Path,
    *,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    threads: int = DEFAULT_THREADS,
    temp_limit: str = DEFAULT_TEMP_LIMIT,
    spill: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """A read-only catalog connection with DuckDB's own sandbox and resource limits on, and locked.

    `spill`: the folder DuckDB may spill to, which the caller removes; by default a new temporary folder,
    removed when the connection is collected or the process exits normally."""
    store = Path(store).absolute()
    con = connect(store, private=True)  # an instance of its own: the locked settings stay here
    root = str(store.resolve())
    if spill is None:
        spill = tempfile.mkdtemp(prefix="hmba-db-sandbox-")
        weakref.finalize(con, shutil.rmtree, spill, True)
    try:
        con.execute("set memory_limit = ?", [memory_limit])
        con.execute("set threads = ?", [int(threads)])
        con.execute("set temp_directory = ?", [spill])
        con.execute("set max_temp_directory_size = ?", [temp_limit])
    except duckdb.Error as e:
        con.close()
        raise UnsafeQuery(
            f"bad sandbox limit ({' '.join(str(e).split())}); give memory as e.g. 2GB and threads >= 1"
        ) from e
    con.execute("set allowed_directories = [?]", [root + "/"])
    con.execute("set enable_external_access = false")
    con.execute("set lock_configuration = true")
    return con


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]))
