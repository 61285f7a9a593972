// The markers of a term against the rest of its level (the markers analysis) as a sortable table; a click
// on a gene adds it to the chosen genes (the dot plot's).
import { apiUrl, esc, fillSelect } from "./common.js";
import { pickTerm } from "./regions.js";
import { table } from "./table.js";

const $ = (id) => document.getElementById(id);
let wired = false;

function wire(page) {
  if (wired) return;
  wired = true;
  $("mk-species").addEventListener("change", (e) => page.set({ species: e.target.value }));
  $("mk-level").addEventListener("change", (e) => page.set({ tlevel: e.target.value, term: "" }));
  $("mk-term").addEventListener("change", (e) => page.set({ term: e.target.value }));
  $("mk-n").addEventListener("change", (e) => page.set({ n: String(Math.min(500, Math.max(1, parseInt(e.target.value, 10) || 20))) }));
  $("mk-table").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-add]");
    if (!b) return;
    page.addGene(b.dataset.add);
    $("mk-error").textContent = `${b.dataset.add} added to the dot plot's genes.`;
  });
}

export async function render(page, ticket) {
  wire(page);
  const s = page.state;
  fillSelect($("mk-species"), page.species.map((x) => [x, x]), page.oneSpecies());
  $("mk-n").value = s.n;
  let picked;
  try {
    picked = await pickTerm(page, $("mk-level"), $("mk-term"));
  } catch (e) {
    $("mk-error").textContent = e.message;
    return;
  }
  if (!page.current(ticket) || !picked.term) return;
  const params = { species: picked.species, level: picked.level, term: picked.term.term_label, n: s.n };
  page.setDownload({ url: apiUrl("/query/markers", { ...params, format: "csv" }), filename: `markers-${picked.term.term_name}.csv` });
  page.setCopies(page.namedCopies("markers", params, ""));
  const answer = await page.analysis(ticket, "markers", params, "mk-error");
  if (!answer) return;
  $("mk-error").textContent = answer.rows.length ? (answer.notes || []).join(" ")
    : "No gene passes the analysis' thresholds for this term.";
  table($("mk-table"), answer.columns, answer.rows, {
    caption: `Markers of ${picked.term.term_name} (${picked.level}, ${picked.species}) against the rest of the level`,
    cell: (col, v) => col === "gene_symbol" && v
      ? `<button type="button" class="link" data-add="${esc(v)}" title="Add ${esc(v)} to the dot plot">${esc(v)}</button>`
      : null,
  });
}
