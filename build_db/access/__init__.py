"""The access side: opening a store (connect), symbol resolution, named queries and Python analyses,
AnnData export, plots, sandboxed SQL and BI recipes."""
