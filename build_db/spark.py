"""The store on Apache Spark: `build_db.spark.register(spark, store_uri)` is public API; the code lives in
`access/spark.py`. Named queries run there with `build_db.run_query(store, name, engine="spark")`."""

from .access.spark import execute_spark, local_session, register, resolver, spark_schema, to_spark_sql

__all__ = ["execute_spark", "local_session", "register", "resolver", "spark_schema", "to_spark_sql"]
