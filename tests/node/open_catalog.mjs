// Opens an hmba-db catalog read-only with the DuckDB Node client, the way a BI plugin embeds DuckDB 1.x:
// prints the DuckDB version, the tables and views with their comments, a column listing and a query.
import { DuckDBInstance } from '@duckdb/node-api';

const path = process.argv[2];
const instance = await DuckDBInstance.create(path, { access_mode: 'READ_ONLY' });
const con = await instance.connect();
const rows = async (sql) => (await con.runAndReadAll(sql)).getRowObjectsJson();
const out = {
  version: (await rows('select version() as v'))[0].v,
  tables: await rows(`select table_name as name, comment from duckdb_tables() where not internal
                      union all select view_name, comment from duckdb_views() where not internal order by 1`),
  columns: await rows(`select column_name, data_type, comment from duckdb_columns()
                       where table_name = 'cells' order by column_index`),
  expression: await rows(`select species, count(*)::integer as n, sum(raw_count)::bigint as total
                          from expression group by species order by species`),
};
console.log(JSON.stringify(out));
