"""The explorer page at `/`: our own HTML, CSS and JavaScript (`explorer/`, shipped in the package) over the
`/api/v1` routes, and plotly.js from the `plotly` package on PyPI (its bundled `plotly.min.js`), so the page
needs no CDN, no internet and no build step of its own."""

from __future__ import annotations

import gzip
import hashlib
from functools import cache
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).parent / "explorer"
PLOTLY_URL = "/explorer/vendor/plotly.min.js"


@cache
def _plotly() -> tuple[bytes, bytes, str]:
    """plotly.min.js as shipped by the plotly package, plain and gzipped once (4.8 MB -> ~1.4 MB: gzip on
    every request would cost ~0.1 s of a core), with its ETag."""
    import plotly

    data = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    etag = '"' + hashlib.sha1(data).hexdigest()[:20] + '"'
    return data, gzip.compress(data, compresslevel=6, mtime=0), etag


def mount_explorer(app) -> bool:
    """Serve the page at `/`, its files under `/explorer/`, plotly.js at PLOTLY_URL."""
    if not (HERE / "index.html").exists():
        return False

    @app.get(PLOTLY_URL, include_in_schema=False)
    async def plotly_js(request: Request):
        plain, packed, etag = _plotly()
        headers = {"ETag": etag, "Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(packed, media_type="text/javascript", headers=headers)
        return Response(plain, media_type="text/javascript", headers=headers)

    app.mount("/explorer", StaticFiles(directory=HERE), name="explorer")

    @app.get("/", include_in_schema=False)
    async def page():
        # no-cache: the page revalidates (ETag) so a new version of the package shows at once
        return FileResponse(HERE / "index.html", headers={"Cache-Control": "no-cache"})

    return True
