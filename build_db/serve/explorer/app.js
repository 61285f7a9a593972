// The explorer: the page's state (all of it in the URL, so a link reproduces a view), the tabs, and the
// toolbar every view shares (download the plotted data, copy the same question as Python, SQL or a command,
// copy the link). Each view is a module with render(page, ticket); views read page.state and change it with
// page.set(...).
import { api, apiUrl, authHeaders, esc, hasToken, prefetch, py, setToken, shellQuote, terms, whenUnauthorized } from "./common.js";
import { GeneSearch } from "./search.js";
import * as dotplot from "./dotplot.js";
import * as regions from "./regions.js";
import * as markers from "./markers.js";
import * as umap from "./umap.js";
import * as sql from "./sql.js";

const VIEWS = { dotplot, regions, markers, umap, sql };
// The official notebook's gene set: what a first visit shows.
const NOTEBOOK_GENES = ["SLC17A6", "SLC32A1", "PTPRC", "PLP1", "AQP4", "DRD1", "DRD2"];
const DEFAULTS = {
  view: "dotplot", species: "all", level: "Group", within: "all", scale: "scaled", min_cells: "10",
  tlevel: "Subclass", term: "", gene: "", color: "gene", points: "300000", n: "20", sql: "",
};

// --- state <-> URL -------------------------------------------------------------------------------------

function readUrl() {
  const q = new URLSearchParams(location.search);
  const state = {};
  for (const [k, v] of Object.entries(DEFAULTS)) state[k] = q.has(k) ? q.get(k) : v;
  state.genes = q.has("genes") ? q.get("genes").split(",").filter(Boolean) : [...NOTEBOOK_GENES];
  if (!VIEWS[state.view]) state.view = DEFAULTS.view;
  return state;
}

function writeUrl(state, push) {
  const q = new URLSearchParams();
  q.set("view", state.view);
  q.set("genes", state.genes.join(","));
  for (const k of Object.keys(DEFAULTS)) if (k !== "view" && state[k] !== "") q.set(k, state[k]);
  const url = `${location.pathname}?${q.toString().replace(/%2C/g, ",")}`;
  if (url !== location.pathname + location.search) history[push ? "pushState" : "replaceState"](null, "", url);
}

function askForToken(message = "") {
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token-error").textContent = message;
  document.getElementById("token-input").focus();
}

// --- the page ---------------------------------------------------------------------------------------------

class Page {
  constructor() {
    this.state = readUrl();
    this.health = null;
    this.copies = {};
    this.download = document.getElementById("download-csv");
    this.search = new GeneSearch(this);
    this.rendered = 0;
    this.wire();
  }

  get species() {
    return this.health ? this.health.species : [];
  }

  // one species for the views that show one (the dot plot may show all)
  oneSpecies() {
    const s = this.state.species;
    return this.species.includes(s) ? s : this.species[0];
  }

  set(patch, { push = false } = {}) {
    Object.assign(this.state, patch);
    writeUrl(this.state, push);
    this.render();
  }

  addGene(symbol) {
    if (!this.state.genes.includes(symbol)) this.set({ genes: [...this.state.genes, symbol] });
  }

  // the toolbar of the current view: where its CSV comes from (an API address, or make() for data the page
  // holds: made when asked), and its question as Python, SQL and a command
  setDownload({ url = null, make = null, filename = "hmba.csv" }) {
    const a = this.download;
    this.makeCsv = make;
    a.download = filename;
    a.href = url || "#";
    a.setAttribute("aria-disabled", url || make ? "false" : "true");
  }

  setCopies(copies) {
    this.copies = copies;
    for (const b of document.querySelectorAll("[data-copy]")) {
      b.disabled = b.dataset.copy !== "link" && !copies[b.dataset.copy];
    }
  }

  // Python, SQL and a command line for a named analysis with these parameters (and its SQL, as rendered)
  namedCopies(name, params, renderedSql) {
    const store = this.health.store;
    const args = Object.entries(params).map(([k, v]) => `${k}=${py(v)}`).join(", ");
    const apiCsv = location.origin + apiUrl(`/query/${name}`, { ...params, format: "csv" });
    const headers = hasToken() ? ', storage_options={"Authorization": "Bearer YOUR_TOKEN"}' : "";
    return {
      python:
        `# from the store, with this package (pip install hmba-db)\nimport build_db\n\n` +
        `frame = build_db.run_query(${py(store)}, ${py(name)}, ${args})\n\n` +
        `# or from this server, with pandas only\nimport pandas as pd\n\n` +
        `frame = pd.read_csv(${py(apiCsv)}${headers})\n`,
      // the SQL as the server renders it (asked for when copied, if the answer did not bring it)
      sql: renderedSql ? `${renderedSql};\n`
        : async () => (await fetch(apiUrl(`/query/${name}`, { ...params, format: "sql" }), { headers: authHeaders() })).text(),
      cli: `hmba-db query ${shellQuote(store)} ${name} ` +
        Object.entries(params).map(([k, v]) => `--param ${shellQuote(`${k}=${v}`)}`).join(" "),
    };
  }

  wire() {
    for (const tab of document.querySelectorAll("[role=tab]")) {
      tab.addEventListener("click", () => this.set({ view: tab.dataset.view }, { push: true }));
      tab.addEventListener("keydown", (e) => {
        const tabs = [...document.querySelectorAll("[role=tab]")];
        const i = tabs.indexOf(tab);
        const next = e.key === "ArrowRight" ? tabs[(i + 1) % tabs.length]
          : e.key === "ArrowLeft" ? tabs[(i + tabs.length - 1) % tabs.length] : null;
        if (next) { e.preventDefault(); next.focus(); next.click(); }
      });
    }
    window.addEventListener("popstate", () => { this.state = readUrl(); this.render(); });
    document.getElementById("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      setToken(document.getElementById("token-input").value.trim());
      this.start();
    });
    this.download.addEventListener("click", (e) => this.onDownload(e));
    for (const b of document.querySelectorAll("[data-copy]")) {
      b.addEventListener("click", () => this.copy(b.dataset.copy));
    }
  }

  async onDownload(e) {
    const a = this.download;
    if (a.getAttribute("aria-disabled") === "true") { e.preventDefault(); return; }
    let blob;
    if (this.makeCsv) {
      e.preventDefault();
      const text = this.makeCsv();
      if (!text) return;
      blob = new Blob([text], { type: "text/csv" });
    } else if (hasToken()) { // a plain link cannot send the token: fetch with the header, then save what came
      e.preventDefault();
      blob = await (await fetch(a.href, { headers: authHeaders() })).blob();
    } else {
      return; // a plain link does it
    }
    const url = URL.createObjectURL(blob);
    const tmp = Object.assign(document.createElement("a"), { href: url, download: a.download });
    document.body.append(tmp);
    tmp.click();
    tmp.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  async copy(kind) {
    let text = kind === "link" ? location.href : this.copies[kind];
    if (typeof text === "function") text = await text();
    if (!text) return;
    const pre = document.getElementById("copy-text");
    pre.textContent = text;
    pre.hidden = false;
    pre.dataset.kind = kind;
    const status = document.getElementById("copied");
    try {
      await navigator.clipboard.writeText(text);
      status.textContent = `${kind === "link" ? "link" : kind} copied`;
    } catch {
      // no clipboard (a plain-http address other than localhost): select it for Ctrl+C
      const range = document.createRange();
      range.selectNodeContents(pre);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      status.textContent = "selected below: press Ctrl+C to copy";
    }
  }

  async start() {
    try {
      this.health = await api("/health");
    } catch (e) {
      if (e.status === 401) {
        askForToken(hasToken() ? "that token was refused" : "");
        return;
      }
      document.getElementById("build-id").textContent = `unavailable: ${e.message}`;
      return;
    }
    document.getElementById("token-form").hidden = true;
    const h = this.health;
    document.getElementById("build-id").textContent = h.build_id;
    document.getElementById("release").textContent = `${h.release_version || ""} (${h.species.join(", ")})`;
    const licence = h.licence || {};
    document.getElementById("licence").innerHTML =
      `Data: ${esc(licence.dataset || "HMBA-BG")}, the Allen Institute's, licensed ` +
      `<a href="${esc(licence.data_licence_url || "")}">${esc(licence.data_licence || "")}</a>. ` +
      `Cite: ${esc(licence.citation || "")}`;
    this.render();
  }

  render() {
    if (!this.health) return;
    const view = this.state.view;
    for (const tab of document.querySelectorAll("[role=tab]")) {
      const on = tab.dataset.view === view;
      tab.setAttribute("aria-selected", on);
      tab.tabIndex = on ? 0 : -1;
      document.getElementById(`view-${tab.dataset.view}`).hidden = !on;
    }
    document.getElementById("copy-text").hidden = true;
    document.getElementById("copied").textContent = "";
    this.search.showChips();
    const ticket = ++this.rendered;
    // a view's render may be overtaken by a newer state: it checks ctx.current(ticket) before drawing
    VIEWS[view].render(this, ticket).catch((e) => console.warn(e));
  }

  current(ticket) {
    return ticket === this.rendered;
  }

  // A named analysis' answer for the view being drawn, its SQL in the toolbar's copies; null when it failed
  // (the server's one line shown in the view's error line) or a newer state took over meanwhile.
  async analysis(ticket, name, params, errorId) {
    let answer;
    try {
      answer = await api(`/query/${name}`, params);
    } catch (e) {
      if (this.current(ticket)) document.getElementById(errorId).textContent = e.message;
      return null;
    }
    if (!this.current(ticket)) return null;
    this.setCopies(this.namedCopies(name, params, answer.sql));
    return answer;
  }
}

whenUnauthorized(() => askForToken());
const page = new Page();
// The first answers are asked for now, while the page's modules load (the plots are drawn by the page's own
// modules: no plot library to fetch and start first).
prefetch("/health");
if (page.state.view === "dotplot" && page.state.genes.length) {
  prefetch("/query/dotplot", dotplot.request(page.state));
  terms(page.state.level).catch(() => {});
} else if (page.state.view === "umap" && page.state.species !== "all") {
  prefetch("/umap", umap.request(page.state, page.state.species));
}
window.hmbaExplorer = page; // for users' own automation (and the tests)
page.start();
