// One gene in one term, across dissected regions and donors (the gene_in_term analysis: the region x Group
// and donor x Group statistics of the term's Groups, or the gene's rows for a Cluster): two bar charts of
// mean log2(CPM+1) (the fraction expressing and the pseudobulk in their hover text), and the table.
import { apiUrl, fillSelect, LEVELS, plotly, terms } from "./common.js";
import { table } from "./table.js";

const $ = (id) => document.getElementById(id);
let wired = false;

function wire(page) {
  if (wired) return;
  wired = true;
  $("reg-species").addEventListener("change", (e) => page.set({ species: e.target.value }));
  $("reg-gene").addEventListener("change", (e) => page.set({ gene: e.target.value }));
  $("reg-level").addEventListener("change", (e) => page.set({ tlevel: e.target.value, term: "" }));
  $("reg-term").addEventListener("change", (e) => page.set({ term: e.target.value }));
}

// The term controls the regions and markers views share: a level, then a term of it with cells in the
// species (the state's term if it is one, else the drilled-into term, else the level's first).
export async function pickTerm(page, levelSelect, termSelect) {
  const s = page.state;
  const species = page.oneSpecies();
  const level = fillSelect(levelSelect, LEVELS.map((l) => [l, l]), LEVELS.includes(s.tlevel) ? s.tlevel : "Subclass");
  const list = (await terms(level)).filter((t) => t.n_cells[species] > 0);
  const options = list.map((t) => [t.term_label, `${t.term_name} (${t.n_cells[species].toLocaleString("en")} cells)`]);
  const wanted = [s.term, s.within].map((v) => list.find((t) => t.term_label === v || t.term_name === v))
    .find(Boolean);
  const label = fillSelect(termSelect, options, wanted ? wanted.term_label : options[0]?.[0]);
  return { species, level, term: list.find((t) => t.term_label === label) };
}

function bars(el, rows, c, title) {
  const text = rows.map((r) => `${r[c.name]}<br>${r[c.n_cells].toLocaleString("en")} cells<br>mean ` +
    `${r[c.mean_log2_cpm].toFixed(3)}, ${(100 * r[c.fraction_expressing]).toFixed(1)}% expressing<br>` +
    `pseudobulk ${r[c.pseudobulk_cpm].toFixed(1)} CPM`);
  return Plotly.react(el, [{
    type: "bar", x: rows.map((r) => r[c.label]), y: rows.map((r) => r[c.mean_log2_cpm]),
    hovertext: text, hoverinfo: "text",
    // one colour (viridis' blue): the fraction expressing is in the hover text and the table (a colour
    // scale on bars made plotly warn in the console for every bar)
    marker: { color: "#3b528b" },
  }], {
    title: { text: title, font: { size: 14 } }, height: 340, margin: { l: 50, r: 10, t: 40, b: 90 },
    yaxis: { title: { text: "mean log2(CPM+1)" }, rangemode: "tozero" },
    xaxis: { type: "category", tickangle: -45, automargin: true },
  }, { responsive: true, displaylogo: false });
}

export async function render(page, ticket) {
  wire(page);
  const s = page.state;
  fillSelect($("reg-species"), page.species.map((x) => [x, x]), page.oneSpecies());
  const gene = fillSelect($("reg-gene"), s.genes.map((g) => [g, g]), s.gene || s.genes[0]);
  let picked;
  try {
    picked = await pickTerm(page, $("reg-level"), $("reg-term"));
  } catch (e) {
    $("reg-error").textContent = e.message;
    return;
  }
  if (!page.current(ticket)) return;
  if (!gene || !picked.term) {
    $("reg-error").textContent = gene ? "No term of this level has cells in this species." : "Add a gene above.";
    page.setDownload({});
    page.setCopies({});
    return;
  }
  const params = { species: picked.species, gene, level: picked.level, term: picked.term.term_label };
  page.setDownload({ url: apiUrl("/query/gene_in_term", { ...params, format: "csv" }), filename: `${gene}-in-${picked.term.term_name}.csv` });
  page.setCopies(page.namedCopies("gene_in_term", params, ""));
  const answer = await page.analysis(ticket, "gene_in_term", params, "reg-error");
  if (!answer) return;
  $("reg-error").textContent = (answer.notes || []).join(" ");
  const c = Object.fromEntries(answer.columns.map((n, i) => [n, i]));
  const byRegion = answer.rows.filter((r) => r[c.dimension] === "region");
  const byDonor = answer.rows.filter((r) => r[c.dimension] === "donor");
  const name = `${answer.rows[0]?.[c.gene_symbol] || gene} in ${picked.term.term_name} (${picked.species})`;
  await plotly();
  await Promise.all([
    bars($("regions-plot"), byRegion, c, `${name}: by dissected region`),
    bars($("donors-plot"), byDonor, c, `by donor`),
  ]);
  $("regions-plot").dataset.nBars = byRegion.length;
  $("donors-plot").dataset.nBars = byDonor.length;
  table($("reg-table"), answer.columns, answer.rows);
}
