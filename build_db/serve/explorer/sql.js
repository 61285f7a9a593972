// The SQL console: one SELECT in the server's sandbox (POST /api/v1/sql: read-only, time, memory and row
// caps); the answer as a table, its CSV, and the sandbox's one-line refusal when it refuses.
import { api, csvText, py, shellQuote } from "./common.js";
import { table } from "./table.js";

const $ = (id) => document.getElementById(id);
const EXAMPLE = "select species, group_name, count(*) as cells\nfrom cells\nwhere group_name is not null\n" +
  "group by all\norder by cells desc\nlimit 20";
let wired = false;
let lastKey = null;
let result = null;

function wire(page) {
  if (wired) return;
  wired = true;
  const run = () => {
    lastKey = null; // Run again runs again
    page.set({ sql: $("sql-text").value }, { push: true });
  };
  $("sql-run").addEventListener("click", run);
  $("sql-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
  });
  $("sql-max").addEventListener("change", (e) => { e.target.value = Math.min(100000, Math.max(1, parseInt(e.target.value, 10) || 1000)); });
}

export async function render(page, ticket) {
  wire(page);
  const text = page.state.sql || EXAMPLE;
  if (document.activeElement !== $("sql-text")) $("sql-text").value = text;
  const maxRows = parseInt($("sql-max").value, 10) || 1000;
  const store = page.health.store;
  page.setCopies({
    python: `import build_db\n\nframe = build_db.sql(${py(store)}, ${py(text)})\n`,
    sql: text.trim().replace(/;?$/, ";\n"),
    cli: `hmba-db sql --safe ${shellQuote(store)} ${shellQuote(text.replace(/\s+/g, " ").trim())}`,
  });
  page.setDownload({ make: () => result && csvText(result.columns, result.rows), filename: "query.csv" });
  const key = JSON.stringify([text, maxRows]);
  if (key === lastKey || !page.state.sql) return; // the example waits for Run
  $("sql-status").textContent = "running…";
  $("sql-error").textContent = "";
  let answer;
  try {
    answer = await api("/sql", {}, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sql: text, max_rows: maxRows }),
    });
  } catch (e) {
    if (!page.current(ticket)) return;
    $("sql-status").textContent = "";
    $("sql-error").textContent = e.message;
    $("sql-table").innerHTML = "";
    result = null;
    lastKey = key;
    return;
  }
  if (!page.current(ticket)) return;
  result = answer;
  lastKey = key;
  const routed = answer.route && answer.route.source !== "as written" ? `; answered from ${answer.route.source}` : "";
  $("sql-status").textContent = `${answer.rows.length.toLocaleString("en")} rows in ${answer.elapsed_ms} ms` +
    routed + (answer.truncated ? ` (stopped at ${answer.max_rows.toLocaleString("en")}: raise "rows at most" for more)` : "");
  $("sql-status").title = answer.route ? `${answer.route.why}\n\n${answer.route.sql}` : "";
  table($("sql-table"), answer.columns, answer.rows);
}
