// The dot plot: the chosen genes x the terms of a level (taxonomy order, the terms' own colours beside
// their names), colour = mean log2(CPM+1) (scaled per gene, or as it is), size = fraction of cells
// expressing; several species side by side, one panel each on a shared term axis. A click on a term shows
// its children at the next level (the `within` parameter of the dotplot analysis); the breadcrumb goes back.
// Drawn as SVG by this module (a few thousand dots at most): the page's first picture needs no plot library,
// which cost a fresh browser ~1 s to fetch and run.
import { api, apiUrl, esc, fillSelect, LEVELS, terms } from "./common.js";
import { VIRIDIS, viridis } from "./colours.js";
import { FAMILY, fmt, hoverCard, textWidth } from "./svg.js";
import { table } from "./table.js";

const $ = (id) => document.getElementById(id);
let wired = false;
let lastKey = null;

let redraw = null; // the drawn plot again, at the container's new width
let drawnWidth = 0;

function wire(page) {
  if (wired) return;
  wired = true;
  new ResizeObserver(() => {
    const w = $("dotplot").clientWidth;
    if (redraw && w && Math.abs(w - drawnWidth) > 40) redraw();
  }).observe($("dotplot"));
  $("dot-species").addEventListener("change", (e) => page.set({ species: e.target.value }, { push: true }));
  $("dot-level").addEventListener("change", (e) => page.set({ level: e.target.value, within: "all" }, { push: true }));
  $("dot-scale").addEventListener("change", (e) => page.set({ scale: e.target.value }));
  $("dot-min-cells").addEventListener("change", (e) => page.set({ min_cells: String(Math.max(0, parseInt(e.target.value, 10) || 0)) }));
  $("crumbs").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-level]");
    if (b) page.set({ level: b.dataset.level, within: b.dataset.within }, { push: true });
  });
  $("dot-table").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-term]");
    if (!b) return;
    if (b.dataset.go === "drill") drill(page, b.dataset.term);
    else page.set({ view: b.dataset.go, term: b.dataset.term, tlevel: page.state.level }, { push: true });
  });
}

function drill(page, label) {
  const i = LEVELS.indexOf(page.state.level);
  if (i < LEVELS.length - 1) page.set({ level: LEVELS[i + 1], within: label }, { push: true });
}

// The path from the top level to `within` (a term of the level above the plotted one), from the term lists.
async function crumbs(page) {
  const s = page.state;
  const box = $("crumbs");
  const top = `<button type="button" class="link" data-level="${LEVELS[0]}" data-within="all">All ${LEVELS[0]}s</button>`;
  if (s.within === "all") {
    box.innerHTML = `${top} › <span aria-current="page">all ${esc(s.level)}s</span>`;
    return;
  }
  const i = LEVELS.indexOf(s.level);
  const lists = await Promise.all(LEVELS.slice(0, i).map((lv) => terms(lv)));
  const chain = [];
  let label = s.within;
  for (let k = i - 1; k >= 0 && label; k--) {
    const t = lists[k].find((x) => x.term_label === label || x.term_name === label);
    if (!t) break;
    chain.unshift(t);
    label = t.parent_label;
  }
  box.innerHTML = [top, ...chain.map((t, k) => k === chain.length - 1
    ? `<span aria-current="page">${esc(t.term_name)}: its ${esc(s.level)}s</span>`
    : `<button type="button" class="link" data-level="${LEVELS[LEVELS.indexOf(t.level) + 1]}" data-within="${esc(t.term_label)}">${esc(t.term_name)}</button>`)].join(" › ");
}

// the dotplot analysis' parameters for a state (the page asks for them early, before its modules have run)
export function request(s) {
  return { species: s.species, genes: s.genes.join(","), level: s.level, min_cells: s.min_cells, within: s.within };
}

export async function render(page, ticket) {
  wire(page);
  const s = page.state;
  const species = fillSelect($("dot-species"),
    [["all", "all species, side by side"], ...page.species.map((x) => [x, x])], s.species);
  fillSelect($("dot-level"), LEVELS.map((l) => [l, l]), s.level);
  $("dot-scale").value = s.scale === "raw" ? "raw" : "scaled";
  $("dot-min-cells").value = s.min_cells;
  const plot = $("dotplot");
  const params = request({ ...s, species });
  page.setCopies(page.namedCopies("dotplot", params, ""));
  page.setDownload({ url: apiUrl("/query/dotplot", { ...params, format: "csv" }), filename: `dotplot-${s.level}.csv` });
  // the breadcrumb is in place when the plot is (a test, or a user, reading both sees one state)
  const crumbed = crumbs(page).catch((e) => { $("dot-error").textContent = e.message; });
  if (!s.genes.length) {
    $("dot-error").textContent = "";
    plot.innerHTML = `<p class="empty">Add genes above to draw the dot plot.</p>`;
    redraw = null;
    Object.assign(plot.dataset, { nTerms: 0, nGenes: 0, request: "" });
    lastKey = null;
    page.setDownload({});
    return;
  }
  const key = JSON.stringify([params, s.scale]);
  let answer;
  let termList;
  try {
    [answer, termList] = await Promise.all([api("/query/dotplot", params), terms(s.level), crumbed]);
  } catch (e) {
    if (page.current(ticket)) $("dot-error").textContent = e.message;
    return;
  }
  if (!page.current(ticket)) return;
  $("dot-error").textContent = (answer.notes || []).join(" ");
  page.setCopies(page.namedCopies("dotplot", params, answer.sql));
  if (key === lastKey && plot.dataset.request === key) return;
  draw(page, plot, answer, termList, s);
  redraw = () => draw(page, plot, answer, termList, s);
  lastKey = key;
  plot.dataset.request = key;
}

const ROW = 22; // pixels per term
const rgbText = (c) => `rgb(${c.map(Math.round).join(",")})`;

function draw(page, plot, answer, termList, s) {
  const c = Object.fromEntries(answer.columns.map((name, i) => [name, i]));
  const rows = answer.rows;
  const byName = new Map(termList.map((t) => [t.term_name, t]));
  const termNames = [...new Set(rows.map((r) => r[c.term_name]))];
  const genes = [...new Set(rows.map((r) => r[c.gene_symbol]))];
  const species = page.species.filter((x) => rows.some((r) => r[c.species] === x));
  const scaled = s.scale !== "raw";
  const value = (r) => (scaled ? r[c.scaled_mean] : r[c.mean_log2_cpm]);
  const cmax = scaled ? 1 : Math.max(1e-9, ...rows.map((r) => r[c.mean_log2_cpm]));
  const n = Math.max(1, species.length);
  // geometry: term labels | a panel per species (a column per gene) | the colour scale
  const labelW = 24 + Math.max(40, ...termNames.map(textWidth));
  const geneH = 14 + 0.72 * Math.max(20, ...genes.map(textWidth)); // gene names at -45 degrees
  const scaleW = 110;
  const width = Math.max(480, plot.clientWidth || 900);
  drawnWidth = plot.clientWidth;
  const col = Math.max(22, Math.min(44, (width - labelW - scaleW - 24 * n) / (n * Math.max(1, genes.length))));
  const panelW = col * Math.max(1, genes.length);
  const panelX = (k) => labelW + k * (panelW + 24); // where species k's panel starts
  const top = 30;
  const height = top + ROW * termNames.length + geneH + 30;
  const row = new Map(termNames.map((t, i) => [t, i]));
  const gx = new Map(genes.map((g, i) => [g, i]));
  const svg = [];
  svg.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${panelX(n) + scaleW}" height="${height}" ` +
    `font-family="${FAMILY}" font-size="12" role="img" aria-label="Dot plot of ${esc(genes.join(", "))} by ${esc(s.level)}">`);
  termNames.forEach((t, i) => {
    const y = top + i * ROW + ROW / 2;
    const term = byName.get(t);
    svg.push(`<g class="term" data-term="${esc(term?.term_label || "")}"><rect x="2" y="${y - 5}" width="10" height="10" rx="2" fill="${esc(term?.color || "#888")}"/>` +
      `<text x="18" y="${y + 4}">${esc(t)}</text></g>`);
    svg.push(`<line x1="${labelW}" x2="${panelX(n) - 24}" y1="${y}" y2="${y}" stroke="#eef0f4"/>`);
  });
  species.forEach((sp, k) => {
    const x0 = panelX(k);
    svg.push(`<text x="${x0 + panelW / 2}" y="${top - 12}" text-anchor="middle" font-weight="600">${esc(sp)}</text>`);
    svg.push(`<rect x="${x0}" y="${top}" width="${panelW}" height="${ROW * termNames.length}" fill="none" stroke="#d8dde6"/>`);
    genes.forEach((g, j) => {
      const x = x0 + j * col + col / 2, y = top + ROW * termNames.length + 10;
      svg.push(`<text x="${x}" y="${y}" text-anchor="end" transform="rotate(-45 ${x} ${y})">${esc(g)}</text>`);
    });
  });
  const at = new Map(species.map((sp, k) => [sp, panelX(k)]));
  rows.forEach((r, i) => {
    if (!at.has(r[c.species])) return;
    const x = at.get(r[c.species]) + gx.get(r[c.gene_symbol]) * col + col / 2;
    const y = top + row.get(r[c.term_name]) * ROW + ROW / 2;
    const radius = (3 + 17 * Math.sqrt(r[c.fraction_expressing])) / 2; // the area follows the fraction
    svg.push(`<circle class="dot" data-i="${i}" data-species="${esc(r[c.species])}" data-gene="${esc(r[c.gene_symbol])}" ` +
      `cx="${fmt(x, 1)}" cy="${fmt(y, 1)}" r="${fmt(radius, 2)}" fill="${rgbText(viridis(value(r) / cmax))}" stroke="#444" stroke-width="0.5"/>`);
  });
  const sx = panelX(n) + 10, sh = Math.min(160, Math.max(80, ROW * termNames.length / 2));
  // the highest value at the top
  const stops = [...VIRIDIS].reverse().map((v, i) => `<stop offset="${i / (VIRIDIS.length - 1)}" stop-color="${v}"/>`).join("");
  svg.push(`<defs><linearGradient id="dot-viridis" x1="0" x2="0" y1="0" y2="1">${stops}</linearGradient></defs>`);
  svg.push(`<text x="${sx}" y="${top + 4}" font-size="11">${scaled ? "mean, scaled" : "mean log2(CPM+1)"}</text>`);
  svg.push(`<rect x="${sx}" y="${top + 12}" width="12" height="${sh}" fill="url(#dot-viridis)"/>`);
  svg.push(`<text x="${sx + 16}" y="${top + 20}" font-size="11">${fmt(cmax, scaled ? 0 : 2)}</text>`);
  svg.push(`<text x="${sx + 16}" y="${top + 12 + sh}" font-size="11">0</text>`);
  svg.push(`<text x="2" y="${height - 6}" font-size="11" fill="#555">dot area: fraction of the term's cells expressing the gene</text>`);
  svg.push("</svg>");
  plot.innerHTML = `<div class="plot-svg">${svg.join("")}</div>`;
  const tip = hoverCard(plot, "dotplot-hover");
  const svgEl = plot.querySelector("svg");
  svgEl.addEventListener("mouseover", (e) => {
    const dot = e.target.closest("circle.dot");
    if (!dot) return;
    const r = rows[+dot.dataset.i];
    tip.show(dot, `<b>${esc(r[c.term_name])}</b> (${esc(r[c.species])}, ${Number(r[c.n_cells]).toLocaleString("en")} cells)<br>` +
      `${esc(r[c.gene_symbol])}: mean log2(CPM+1) ${fmt(r[c.mean_log2_cpm], 3)} (scaled ${fmt(r[c.scaled_mean], 2)})<br>` +
      `fraction expressing ${fmt(100 * r[c.fraction_expressing], 1)}%`);
  });
  svgEl.addEventListener("mouseleave", () => tip.hide());
  svgEl.addEventListener("click", (e) => {
    const dot = e.target.closest("circle.dot");
    const label = dot ? byName.get(rows[+dot.dataset.i][c.term_name])?.term_label : e.target.closest("g.term")?.dataset.term;
    if (label) drill(page, label);
  });
  Object.assign(plot.dataset, {
    nTerms: termNames.length, nGenes: genes.length, nSpecies: species.length,
    drawnMs: Math.round(performance.now()), // since the page opened: what the benchmark reads
  });
  const canDrill = s.level !== LEVELS[LEVELS.length - 1];
  table($("dot-table"), answer.columns, rows, {
    cell: (col, v) => {
      if (col !== "term_name") return null;
      const t = byName.get(v);
      if (!t) return esc(v);
      const go = (what, text) => `<button type="button" class="link" data-go="${what}" data-term="${esc(t.term_label)}">${text}</button>`;
      return (canDrill ? go("drill", esc(v)) : esc(v)) + ` <small>${go("regions", "regions")} · ${go("markers", "markers")}</small>`;
    },
  });
}
