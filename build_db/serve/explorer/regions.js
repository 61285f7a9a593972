// One gene in one term, across dissected regions and donors (the gene_in_term analysis: the region x Group
// and donor x Group statistics of the term's Groups, or the gene's rows for a Cluster): two bar charts of
// mean log2(CPM+1) (the fraction expressing and the pseudobulk in their hover text; SVG drawn here), and the
// table.
import { apiUrl, esc, fillSelect, LEVELS, terms } from "./common.js";
import { FAMILY, fmt, hoverCard, textWidth, ticks } from "./svg.js";
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

const BAR = "#3b528b"; // one colour (viridis' blue): the fraction expressing is in the hover text and the table

// A bar chart (SVG) of mean log2(CPM+1) by region or donor, the rest of each row in its hover text.
function bars(el, rows, c, title) {
  const labels = rows.map((r) => String(r[c.label]));
  const width = Math.max(320, el.clientWidth || 600);
  const left = 58, top = 30, plotH = 220;
  const bottom = 16 + 0.72 * Math.max(20, ...labels.map(textWidth));
  const band = Math.max(6, Math.min(60, (width - left - 10) / Math.max(1, rows.length)));
  const [end, marks] = ticks(Math.max(0, ...rows.map((r) => r[c.mean_log2_cpm])));
  const y = (v) => top + plotH - (plotH * v) / end;
  const svg = [`<svg xmlns="http://www.w3.org/2000/svg" width="${left + band * rows.length + 10}" height="${top + plotH + bottom}" ` +
    `font-family="${FAMILY}" font-size="12" role="img" aria-label="${esc(title)}">`];
  svg.push(`<text x="${left}" y="16" font-weight="600" font-size="13">${esc(title)}</text>`);
  for (const m of marks) {
    svg.push(`<line x1="${left}" x2="${left + band * rows.length}" y1="${y(m)}" y2="${y(m)}" stroke="#eef0f4"/>`);
    svg.push(`<text x="${left - 6}" y="${y(m) + 4}" text-anchor="end" font-size="11">${+m.toFixed(3)}</text>`);
  }
  svg.push(`<text transform="translate(14 ${top + plotH / 2}) rotate(-90)" text-anchor="middle" font-size="11">mean log2(CPM+1)</text>`);
  rows.forEach((r, i) => {
    const x = left + i * band, v = r[c.mean_log2_cpm];
    svg.push(`<rect class="bar" data-i="${i}" x="${fmt(x + band * 0.1, 1)}" y="${fmt(y(v), 2)}" width="${fmt(band * 0.8, 1)}" ` +
      `height="${fmt(y(0) - y(v), 2)}" fill="${BAR}"/>`);
    const lx = x + band / 2, ly = top + plotH + 12;
    svg.push(`<text x="${lx}" y="${ly}" text-anchor="end" transform="rotate(-45 ${lx} ${ly})">${esc(labels[i])}</text>`);
  });
  svg.push(`<line x1="${left}" x2="${left + band * rows.length}" y1="${y(0)}" y2="${y(0)}" stroke="#888"/>`);
  svg.push("</svg>");
  el.innerHTML = `<div class="plot-svg">${svg.join("")}</div>`;
  const tip = hoverCard(el, `${el.id}-hover`);
  const svgEl = el.querySelector("svg");
  svgEl.addEventListener("mouseover", (e) => {
    const bar = e.target.closest("rect.bar");
    if (!bar) return;
    const r = rows[+bar.dataset.i];
    tip.show(bar, `<b>${esc(r[c.name])}</b><br>${Number(r[c.n_cells]).toLocaleString("en")} cells<br>mean ` +
      `${fmt(r[c.mean_log2_cpm], 3)}, ${fmt(100 * r[c.fraction_expressing], 1)}% expressing<br>` +
      `pseudobulk ${fmt(r[c.pseudobulk_cpm], 1)} CPM`);
  });
  svgEl.addEventListener("mouseleave", () => tip.hide());
  el.dataset.nBars = rows.length;
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
  bars($("regions-plot"), byRegion, c, `${name}: by dissected region`);
  bars($("donors-plot"), byDonor, c, "by donor");
  table($("reg-table"), answer.columns, answer.rows);
}
