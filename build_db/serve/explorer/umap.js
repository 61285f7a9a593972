// The UMAP of a species in WebGL (scatter.js: one draw call, no plot library), coloured by a gene's
// log2(CPM+1) on viridis or by the terms of a level in their own colours. All the species' cells up to the
// chosen number, else the server's fixed sample (the same cells every time, as umap_by_gene gives), and the
// page says which. Hovering a cell shows its five labels.
import { api, csvText, esc, fillSelect, LEVELS, py } from "./common.js";
import { rgb, VIRIDIS, viridis } from "./colours.js";
import { Scatter } from "./scatter.js";

const $ = (id) => document.getElementById(id);
const PREFIX = Object.fromEntries(LEVELS.map((l) => [l, l.toLowerCase()]));
let wired = false;
let shown = null; // the drawn answer, for hover and the CSV
let lastKey = null;

function wire(page) {
  if (wired) return;
  wired = true;
  $("um-species").addEventListener("change", (e) => page.set({ species: e.target.value }));
  $("um-color").addEventListener("change", (e) => {
    const [kind, what] = e.target.value.split(":");
    page.set(kind === "gene" ? { color: "gene", gene: what } : { color: what });
  });
  $("um-points").addEventListener("change", (e) => page.set({ points: e.target.value }));
}

function hover(i) {
  if (!shown || i < 0) return;
  const code = shown.cluster[i];
  const path = code >= 0 ? shown.clusters[code] : null;
  const lines = path
    ? LEVELS.map((l) => `<div><span class="swatch" style="background:${esc(path[`${PREFIX[l]}_color`])}"></span>${l}: <b>${esc(path[PREFIX[l]])}</b></div>`)
    : ["<div>no cluster</div>"];
  if (shown.value) lines.push(`<div>${esc(shown.gene.gene_symbol)}: log2(CPM+1) <b>${shown.value[i].toFixed(3)}</b></div>`);
  $("um-hover").innerHTML = lines.join("");
}

// The /umap parameters a state asks for, from the state alone (the page asks for them early when the link
// opens on this view): the species, the points, and the gene when colouring by one.
export function request(s, species) {
  const gene = LEVELS.includes(s.color) ? null : s.gene || s.genes[0] || null;
  return { species, max_points: /^\d+$/.test(s.points) ? s.points : "300000", ...(gene ? { gene } : {}) };
}

export async function render(page, ticket) {
  wire(page);
  const s = page.state;
  const species = fillSelect($("um-species"), page.species.map((x) => [x, x]), page.oneSpecies());
  const choices = [...s.genes.map((g) => [`gene:${g}`, `gene ${g}`]), ...LEVELS.map((l) => [`level:${l}`, `${l} (colours of the taxonomy)`])];
  const wanted = LEVELS.includes(s.color) ? `level:${s.color}` : `gene:${s.gene || s.genes[0]}`;
  const [kind, what] = fillSelect($("um-color"), choices, choices.some(([v]) => v === wanted) ? wanted : choices[0][0]).split(":");
  const gene = kind === "gene" ? what : null;
  const offered = [["300000", "all, up to 300,000"], ["100000", "100,000"], ["1000000", "up to 1,000,000 (slow)"]];
  if (/^\d+$/.test(s.points) && !offered.some(([v]) => v === s.points)) offered.push([s.points, `up to ${(+s.points).toLocaleString("en")}`]);
  const points = fillSelect($("um-points"), offered, s.points);
  const params = { species, max_points: points, ...(gene ? { gene } : {}) };
  // (the same as request(s, species) unless a select had to fall back to its first option)
  const key = JSON.stringify(params);
  copies(page, species, gene, kind === "level" ? what : null, points);
  page.setDownload({
    make: () => shown && toCsv(shown),
    filename: `umap-${species}${gene ? "-" + gene : ""}.csv`,
  });
  let answer = shown;
  if (key !== lastKey) {
    $("um-note").textContent = "loading…";
    try {
      answer = await api("/umap", params);
    } catch (e) {
      if (page.current(ticket)) { $("um-error").textContent = e.message; $("um-note").textContent = ""; }
      return;
    }
    if (!page.current(ticket)) return;
  }
  $("um-error").textContent = "";
  $("um-note").textContent = answer.sampled
    ? `Showing a fixed sample of ${answer.n_points.toLocaleString("en")} of the ${answer.n_cells.toLocaleString("en")} ${species} cells with UMAP coordinates (the same cells every time; choose more points to see more).`
    : `Showing all ${answer.n_points.toLocaleString("en")} ${species} cells with UMAP coordinates.`;
  shown = answer;
  try {
    draw(answer, kind === "level" ? what : null);
  } catch (e) { // no WebGL in this browser: say so where the plot would be
    $("um-error").textContent = e.message;
    return;
  }
  lastKey = key;
}

let scatter = null;

// The parts of #umap: a title, the canvas, the colour scale; and its hooks for automation (pixelOf(i): a
// cell's place on the page; a "umap-hover" event with the cell under the mouse).
function parts(el) {
  if (!scatter) {
    el.innerHTML = '<div class="um-title"></div><div class="um-canvas"></div><div class="um-scale"></div>' +
      '<div class="um-axes hint">UMAP 1 →, UMAP 2 ↑ · drag to pan, scroll to zoom, double-click to reset</div>';
    scatter = new Scatter(el.querySelector(".um-canvas"));
    el.querySelector(".um-canvas").addEventListener("scatter-hover", (e) => {
      hover(e.detail.index);
      el.dispatchEvent(new CustomEvent("umap-hover", { detail: e.detail }));
    });
    el.pixelOf = (i) => scatter.pixelOf(i);
  }
  return { title: el.querySelector(".um-title"), scale: el.querySelector(".um-scale") };
}

function draw(u, level) {
  const el = $("umap");
  const { title, scale } = parts(el);
  const n = u.x.length;
  const rgba = new Uint8Array(4 * n);
  let order;
  if (level) {
    const colors = u.clusters.map((c) => rgb(c[`${PREFIX[level]}_color`] || "#999999"));
    const none = rgb("#cccccc");
    for (let i = 0; i < n; i++) {
      const c = u.cluster[i] >= 0 ? colors[u.cluster[i]] : none;
      rgba[4 * i] = c[0]; rgba[4 * i + 1] = c[1]; rgba[4 * i + 2] = c[2]; rgba[4 * i + 3] = 255;
    }
    order = Int32Array.from({ length: n }, (_, i) => i);
    title.textContent = `${u.species}, coloured by ${level}`;
    scale.replaceChildren();
  } else {
    let top = 0;
    for (let i = 0; i < n; i++) if (u.value[i] > top) top = u.value[i];
    for (let i = 0; i < n; i++) {
      const c = viridis(top > 0 ? u.value[i] / top : 0);
      rgba[4 * i] = c[0]; rgba[4 * i + 1] = c[1]; rgba[4 * i + 2] = c[2]; rgba[4 * i + 3] = 255;
    }
    // the expressing cells on top, the highest last: a few bright cells are not hidden under dark ones
    order = Int32Array.from({ length: n }, (_, i) => i).sort((a, b) => u.value[a] - u.value[b] || a - b);
    title.textContent = `${u.species}, ${u.gene.gene_symbol}`;
    scale.innerHTML = `<span>0</span><span class="bar" style="background:linear-gradient(to right, ${VIRIDIS.join(", ")})"></span>` +
      `<span>${top.toFixed(2)}</span><span>${esc(u.gene.gene_symbol)} log2(CPM+1)</span>`;
  }
  scatter.set(u.x, u.y, rgba, order, n > 100000 ? 2 : n > 20000 ? 3 : 5);
  scatter.finished();
  Object.assign(el.dataset, { nPoints: n, nCells: u.n_cells, sampled: u.sampled, drawnMs: Math.round(performance.now()) });
}

function toCsv(u) {
  const columns = ["x", "y", ...LEVELS.map((l) => PREFIX[l]), ...(u.value ? [`${u.gene.gene_symbol}_log2_cpm`] : [])];
  const rows = u.x.map((x, i) => {
    const path = u.cluster[i] >= 0 ? u.clusters[u.cluster[i]] : {};
    return [x, u.y[i], ...LEVELS.map((l) => path[PREFIX[l]] ?? ""), ...(u.value ? [u.value[i]] : [])];
  });
  return csvText(columns, rows);
}

function copies(page, species, gene, level, points) {
  if (gene) {
    page.setCopies(page.namedCopies("umap_by_gene", { species, gene, max_cells: points }, ""));
    return;
  }
  const p = PREFIX[level];
  const sql = `select x, y, ${p}_name, ${p}_color\nfrom cells\nwhere species = '${species}' and x is not null\n` +
    `order by (cell_index * 2654435761) % 4294967296\nlimit ${points};\n`;
  page.setCopies({
    python: `import build_db\n\ncon = build_db.connect(${py(page.health.store)})\nframe = con.execute(${JSON.stringify(sql.trim().replace(/;$/, ""))}).df()\n`,
    sql,
    cli: `hmba-db sql ${page.health.store} "${sql.trim().replace(/;$/, "").replace(/\n/g, " ")}"`,
  });
}
