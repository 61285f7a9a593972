// The dot plot: the chosen genes x the terms of a level (taxonomy order, the terms' own colours beside
// their names), colour = mean log2(CPM+1) (scaled per gene, or as it is), size = fraction of cells
// expressing; several species side by side, one panel each on a shared term axis. A click on a term shows
// its children at the next level (the `within` parameter of the dotplot analysis); the breadcrumb goes back.
import { api, apiUrl, esc, fillSelect, LEVELS, plotly, terms } from "./common.js";
import { table } from "./table.js";

const $ = (id) => document.getElementById(id);
let wired = false;
let lastKey = null;
let shown = []; // the plotted level's terms, for a click on a dot

function wire(page) {
  if (wired) return;
  wired = true;
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

// the dotplot analysis' parameters for a state (the page asks for them early, before plotly.js has run)
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
  crumbs(page).catch((e) => { $("dot-error").textContent = e.message; });
  if (!s.genes.length) {
    $("dot-error").textContent = "";
    if (window.Plotly) Plotly.purge(plot);
    plot.innerHTML = `<p class="empty">Add genes above to draw the dot plot.</p>`;
    Object.assign(plot.dataset, { nTerms: 0, nGenes: 0, request: "" });
    delete plot.dataset.wired;
    lastKey = null;
    page.setDownload({});
    return;
  }
  const key = JSON.stringify([params, s.scale]);
  let answer;
  let termList;
  try {
    [answer, termList] = await Promise.all([api("/query/dotplot", params), terms(s.level), plotly()]);
  } catch (e) {
    if (page.current(ticket)) $("dot-error").textContent = e.message;
    return;
  }
  if (!page.current(ticket)) return;
  $("dot-error").textContent = (answer.notes || []).join(" ");
  page.setCopies(page.namedCopies("dotplot", params, answer.sql));
  if (key === lastKey && plot.dataset.request === key) return;
  draw(page, plot, answer, termList, s);
  lastKey = key;
  plot.dataset.request = key;
}

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
  const gap = 0.02;
  const layout = {
    margin: { l: 10, r: 10, t: 40, b: 80 },
    height: Math.max(320, 22 * termNames.length + 150),
    showlegend: false,
    hovermode: "closest",
    yaxis: {
      type: "category", autorange: "reversed", automargin: true, categoryorder: "array",
      categoryarray: termNames, tickmode: "array", tickvals: termNames,
      ticktext: termNames.map((t) => `<span style="color:${byName.get(t)?.color || "#888"}">■</span> ${t}`),
    },
    annotations: [],
    plot_bgcolor: "#fff",
  };
  const traces = species.map((sp, i) => {
    const axis = i === 0 ? "" : String(i + 1);
    layout[`xaxis${axis}`] = {
      domain: [i / n + (i ? gap : 0), (i + 1) / n - (i < n - 1 ? gap : 0)], type: "category",
      categoryorder: "array", categoryarray: genes, tickangle: -45, automargin: true,
    };
    layout.annotations.push({
      text: `<b>${sp}</b>`, xref: `x${axis} domain`, yref: "paper", x: 0.5, y: 1, yanchor: "bottom",
      showarrow: false,
    });
    const mine = rows.filter((r) => r[c.species] === sp);
    return {
      type: "scatter", mode: "markers", xaxis: `x${axis}`, yaxis: "y", name: sp,
      x: mine.map((r) => r[c.gene_symbol]),
      y: mine.map((r) => r[c.term_name]),
      customdata: mine.map((r) => [sp, r[c.n_cells], r[c.mean_log2_cpm], r[c.fraction_expressing], r[c.scaled_mean]]),
      hovertemplate:
        "<b>%{y}</b> (%{customdata[0]}, %{customdata[1]:,} cells)<br>%{x}: mean log2(CPM+1) " +
        "%{customdata[2]:.3f} (scaled %{customdata[4]:.2f})<br>fraction expressing %{customdata[3]:.1%}<extra></extra>",
      marker: {
        size: mine.map((r) => 3 + 17 * Math.sqrt(r[c.fraction_expressing])),
        color: mine.map(value), colorscale: "Viridis", cmin: 0, cmax,
        line: { width: 0.5, color: "#444" },
        showscale: i === n - 1,
        colorbar: { title: { text: scaled ? "mean,<br>scaled" : "mean<br>log2(CPM+1)" }, thickness: 12, len: 0.5 },
      },
    };
  });
  layout.annotations.push({
    text: "dot area: fraction of the term's cells expressing the gene", xref: "paper", yref: "paper",
    x: 0, y: 0, yshift: -75, showarrow: false, xanchor: "left", font: { size: 11, color: "#555" },
  });
  plot.querySelector("p.empty")?.remove();
  shown = termList;
  Plotly.react(plot, traces, layout, { responsive: true, displaylogo: false }).then(() => {
    Object.assign(plot.dataset, {
      nTerms: termNames.length, nGenes: genes.length, nSpecies: species.length,
      drawnMs: Math.round(performance.now()), // since the page opened: what the benchmark reads
    });
    if (!plot.dataset.wired) {
      plot.dataset.wired = "1";
      plot.on("plotly_click", (ev) => {
        const t = shown.find((x) => x.term_name === ev.points?.[0]?.y);
        if (t) drill(page, t.term_label);
      });
    }
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
