"""`make bench`: the shared server under abuse (issue 32's trial, rerun), on 127.0.0.1, bounded in time.

    python -m build_db.tools.bench_abuse STORE [--seconds 60] [--json OUT]

1. The usual load: `wrk` with 32 connections asking dot plots of new genes (never a cached answer) and 16
   asking gene autocomplete, for a third of `--seconds` after 5 s of warm-up: each class's p50/p95.
2. The same load for `--seconds`, with 16 more clients abusing the server beside it (64 in all): slow
   sandboxed SQL keeping every sandbox child busy, a flood of 600 made-up genes a request, memory bombs in
   /sql and in an export's cells condition, clients that go away mid-request. The normal requests must all
   answer 2xx; each abuse class must be refused (4xx, 503 or 504), never a 500; the p95s are reported
   beside the usual ones.
3. The server's memory (its own process, and with its sandbox children) sampled every half second: first,
   peak and last.
4. schemathesis over /openapi.json (bounded): 0 server errors (a 504 time limit is not one).

Exit 1 on a normal request that failed, an abuse answered 500, or a schemathesis server error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

from .bench import _tree_rss
from .bench_serve import WRK_SCRIPT, _genes
from .served import Server

API = "/api/v1"
SLOW_SQL = "select count(*) from cells a, cells b, cells c"
LIST_BOMB = "select sum(len(range(300000000))) from cells"
EXPORT_BOMB = "length(repeat(cell_label, 400000)) > 0"


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _wrk(url: str, paths: list[str], clients: int, seconds: float, out: dict) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: `make bench` installs it (Debian package wrk)")
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(WRK_SCRIPT % ", ".join(json.dumps(p) for p in paths))
    try:
        r = subprocess.run(
            [wrk, "-t1", f"-c{clients}", f"-d{int(seconds)}s", "--timeout", "30s", "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        script.unlink()
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT"))
    n, status_errors, socket_errors, p50, p95, _ = line.split()[1:]
    out.update(
        requests=int(n),
        errors=int(status_errors) + int(socket_errors),
        p50_ms=float(p50),
        p95_ms=float(p95),
        clients=clients,
    )


def _normal_paths(store: Path, seed: int) -> tuple[list[str], list[str]]:
    """Dot plots of three genes, each set asked once (no answer comes from the cache), and autocomplete of
    a symbol's first two to four letters."""
    symbols = _genes(store, 4000, seed)
    rng = random.Random(seed)
    dotplots = [
        f"{API}/query/dotplot?genes={','.join(rng.sample(symbols, 3))}&level=Group"
        f"&min_cells={rng.randint(0, 9)}"
        for _ in range(20_000)
    ]
    prefixes = sorted({s[: rng.randint(2, 4)] for s in symbols})
    autocomplete = [f"{API}/genes?q={urllib.parse.quote(p)}&limit={rng.randint(5, 25)}" for p in prefixes]
    return dotplots, autocomplete


def _normal(url: str, store: Path, seconds: float, seed: int) -> dict:
    dotplots, autocomplete = _normal_paths(store, seed)
    out: dict = {"dotplot": {}, "autocomplete": {}}
    threads = [
        threading.Thread(target=_wrk, args=(url, dotplots, 32, seconds, out["dotplot"])),
        threading.Thread(target=_wrk, args=(url, autocomplete, 16, seconds, out["autocomplete"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for cls, got in out.items():
        if "p95_ms" not in got:
            raise SystemExit(f"wrk did not measure the {cls} load (is wrk installed? make bench installs it)")
    return out


class _Abuser:
    """One abusive client: repeats its request until told to stop, counting the statuses it gets."""

    def __init__(self, port: int, kind: str, stop: threading.Event, seed: int):
        self.port, self.kind, self.stop, self.rng = port, kind, stop, random.Random(seed)
        self.statuses: Counter = Counter()

    def request(self) -> tuple[str, str, bytes | None]:
        if self.kind == "slow sql":
            return "POST", f"{API}/sql", json.dumps({"sql": SLOW_SQL, "timeout": 20}).encode()
        if self.kind == "sql memory bomb":
            return "POST", f"{API}/sql", json.dumps({"sql": LIST_BOMB, "timeout": 20}).encode()
        if self.kind == "unknown genes":
            made_up = ",".join(f"ZZ{self.rng.randrange(10**9)}X" for _ in range(600))
            return "GET", f"{API}/query/dotplot?genes={made_up}", None
        if self.kind == "export memory bomb":
            cells = urllib.parse.quote(EXPORT_BOMB)
            return "GET", f"{API}/export/anndata?species=Human&genes=PLP1&cells={cells}", None
        # "goes away": a slow statement, the connection closed half a second after asking
        return "POST", f"{API}/sql", json.dumps({"sql": SLOW_SQL, "timeout": 20}).encode()

    def run(self) -> None:
        while not self.stop.is_set():
            method, path, body = self.request()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
                if self.kind == "goes away":
                    time.sleep(0.5)
                    conn.close()
                    self.statuses["closed"] += 1
                    continue
                self.statuses[conn.getresponse().status] += 1
            except OSError as e:
                self.statuses[type(e).__name__] += 1
            finally:
                conn.close()


def _schemathesis(url: str, examples: int) -> dict:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    counts: Counter = Counter()
    failures: list = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid schema fails here, as it should

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            response = case.call(base_url=url, timeout=120)
            counts[response.status_code // 100 * 100] += 1
            if response.status_code >= 500 and response.status_code != 504:
                failures.append((case.method, case.path, response.status_code, response.text[:200]))

        check()
    return {"requests": sum(counts.values()), "by_class": dict(counts), "server_errors": failures}


def measure(store: Path, seconds: float, examples: int, seed: int = 0) -> dict:
    s = Server(store)
    try:
        pid = s.proc.pid
        _normal(s.url, store, 5.0, seed + 2)  # warm-up (first look-ups load the gene indexes): not counted
        baseline = _normal(s.url, store, max(5.0, seconds / 3), seed)
        memory: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                memory.append((_rss_mib(pid), _tree_rss(pid) / 2**20))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()
        kinds = (
            ["slow sql"] * 6
            + ["unknown genes"] * 4
            + ["sql memory bomb"] * 2
            + ["export memory bomb"] * 2
            + ["goes away"] * 2
        )
        abusers = [_Abuser(s.port, kind, stop, seed + i) for i, kind in enumerate(kinds)]
        threads = [threading.Thread(target=a.run) for a in abusers]
        for t in threads:
            t.start()
        time.sleep(2)  # the sandbox saturated before the measured load starts
        loaded = _normal(s.url, store, seconds, seed + 1)
        stop.set()
        for t in threads:
            t.join()
        time.sleep(1)
        memory.append((_rss_mib(pid), _tree_rss(pid) / 2**20))
        sampler.join()
        abuse: dict[str, Counter] = {}
        for a in abusers:
            abuse.setdefault(a.kind, Counter()).update(a.statuses)
        fuzz = _schemathesis(s.url, examples)
    finally:
        code = s.stop()
    own = [m[0] for m in memory]
    tree = [m[1] for m in memory]
    return {
        "store": str(store),
        "seconds": seconds,
        "baseline": baseline,
        "loaded": loaded,
        "abuse": {k: {str(s): n for s, n in v.items()} for k, v in abuse.items()},
        "memory_mib": {
            "server_first": own[0],
            "server_peak": max(own),
            "server_last": own[-1],
            "with_sandbox_peak": max(tree),
        },
        "schemathesis": fuzz,
        "exit_code": code,
    }


def failures(m: dict) -> list[str]:
    out = []
    for cls in ("dotplot", "autocomplete"):
        for phase in ("baseline", "loaded"):
            if m[phase][cls]["errors"]:
                out.append(f"{phase} {cls}: {m[phase][cls]['errors']} of {m[phase][cls]['requests']} failed")
    for kind, statuses in m["abuse"].items():
        if statuses.get("500"):
            out.append(f"abuse '{kind}': {statuses['500']} answered 500")
    if m["schemathesis"]["server_errors"]:
        out.append(f"schemathesis: {len(m['schemathesis']['server_errors'])} server errors")
    if m["exit_code"] != 0:
        out.append(f"the server exited {m['exit_code']} on Ctrl-C")
    return out


def table(m: dict) -> str:
    b, load, mem, fz = m["baseline"], m["loaded"], m["memory_mib"], m["schemathesis"]
    rows = [
        "| what | usual load alone | with the abuse beside it |",
        "|---|---|---|",
    ]
    for cls, label in (("dotplot", "dot plot, 3 new genes x Group"), ("autocomplete", "gene autocomplete")):
        x, y = b[cls], load[cls]
        usual = f"{x['p50_ms']:.1f} / {x['p95_ms']:.1f} ms, {x['requests']:,}, {x['errors']}"
        abused = f"{y['p50_ms']:.1f} / {y['p95_ms']:.1f} ms, {y['requests']:,}, {y['errors']}"
        rows.append(f"| {label} ({x['clients']} clients): p50 / p95, requests, errors | {usual} | {abused} |")
    rows.append("")
    rows.append("| abuse class (clients) | answers by status |")
    rows.append("|---|---|")
    for kind, statuses in m["abuse"].items():
        shown = ", ".join(f"{s}: {n:,}" for s, n in sorted(statuses.items()))
        rows.append(f"| {kind} | {shown} |")
    rows.append("")
    rows.append(
        f"Server memory (its own process): {mem['server_first']:.0f} MiB at the start, peak "
        f"{mem['server_peak']:.0f}, {mem['server_last']:.0f} at the end; with its sandbox children, peak "
        f"{mem['with_sandbox_peak']:.0f} MiB. schemathesis: {fz['requests']:,} requests "
        f"({', '.join(f'{k}: {v:,}' for k, v in sorted(fz['by_class'].items()))}), "
        f"{len(fz['server_errors'])} server errors."
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--seconds", type=float, default=60.0, help="the abuse run (the usual load: a third)")
    ap.add_argument("--examples", type=int, default=25, help="schemathesis examples per operation")
    ap.add_argument("--json", type=Path, help="write the measurements here too")
    args = ap.parse_args(argv)
    m = measure(args.store, args.seconds, args.examples)
    print(table(m))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(m, indent=2))
    bad = failures(m)
    for line in bad:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
