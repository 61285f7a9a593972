"""`hmba-db serve`: the store over HTTP, a JSON API (`app.py`) on one snapshot per request (`snapshots.py`),
and the explorer page; `run.py` starts it under uvicorn."""
