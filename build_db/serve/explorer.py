"""The explorer page at `/`: our own HTML, CSS and JavaScript (`explorer/`, shipped in the package) over the
`/api/v1` routes. It draws its plots itself (SVG, and WebGL for the UMAP), so it needs no plot library, no
CDN, no internet and no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).parent / "explorer"


def mount_explorer(app) -> bool:
    """Serve the page at `/` and its files under `/explorer/`."""
    if not (HERE / "index.html").exists():
        return False

    app.mount("/explorer", StaticFiles(directory=HERE), name="explorer")

    @app.get("/", include_in_schema=False)
    async def page():
        # no-cache: the page revalidates (ETag) so a new version of the package shows at once
        return FileResponse(HERE / "index.html", headers={"Cache-Control": "no-cache"})

    return True
