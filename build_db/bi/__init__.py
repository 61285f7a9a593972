"""BI tools on the store, driven from here: Apache Superset (`superset.py`, its own environment) and
Evidence (`evidence.py`, npm), each set up, provisioned and checked end to end (`make test-bi`)."""
