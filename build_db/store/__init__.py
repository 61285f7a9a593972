"""The store side: release -> store (the build's steps: transposition, metadata tables, statistics, the
catalog), its declared schema, and verification against the source."""
