// The gene search: a combobox over /api/v1/genes (symbols and identifiers of every species, any case,
// prefix matches first, then the closest), the chosen genes as chips, and a pasted list resolved gene by
// gene, each unknown one named with the closest symbols that exist.
import { api, esc } from "./common.js";

const HITS = 12;
const DEBOUNCE_MS = 80;

// One option per symbol (a symbol names a gene in each species that has it); a gene with no symbol is
// offered by its identifier.
function options(hits) {
  const by = new Map();
  for (const h of hits) {
    const key = h.gene_symbol || h.gene_identifier;
    if (!by.has(key)) by.set(key, { value: key, match: h.match, where: [] });
    by.get(key).where.push(`${h.species} ${h.gene_identifier}`);
  }
  return [...by.values()];
}

export class GeneSearch {
  constructor(page) {
    this.page = page;
    this.input = document.getElementById("gene-search");
    this.list = document.getElementById("gene-hits");
    this.chips = document.getElementById("gene-chips");
    this.message = document.getElementById("gene-message");
    this.items = [];
    this.active = -1;
    this.asked = 0;
    this.timer = null;
    this.input.addEventListener("input", () => this.typed());
    this.input.addEventListener("keydown", (e) => this.key(e));
    this.input.addEventListener("paste", (e) => this.pasted(e));
    this.input.addEventListener("blur", () => setTimeout(() => this.close(), 150));
    document.getElementById("clear-genes").addEventListener("click", () => {
      this.page.set({ genes: [] }, { push: true });
    });
    this.chips.addEventListener("click", (e) => {
      const b = e.target.closest("button[data-gene]");
      if (b) this.page.set({ genes: this.page.state.genes.filter((g) => g !== b.dataset.gene) }, { push: true });
    });
  }

  showChips() {
    this.chips.innerHTML = this.page.state.genes.map((g) =>
      `<li><span>${esc(g)}</span><button type="button" data-gene="${esc(g)}" aria-label="Remove ${esc(g)}" title="Remove">×</button></li>`
    ).join("");
  }

  typed() {
    clearTimeout(this.timer);
    const q = this.input.value.trim();
    if (/[\s,;]/.test(q)) { this.close(); return; } // a list: resolved on Enter
    if (!q) { this.close(); return; }
    this.timer = setTimeout(() => this.lookup(q), DEBOUNCE_MS);
  }

  async lookup(q) {
    const ticket = ++this.asked;
    let answer;
    try {
      answer = await api("/genes", { q, species: "all", limit: HITS * 3 });
    } catch (e) {
      this.message.textContent = e.message;
      return;
    }
    if (ticket !== this.asked || this.input.value.trim() !== q) return; // the user typed on
    this.items = options(answer.hits).slice(0, HITS);
    this.active = this.items.length && this.items[0].match === "exact" ? 0 : -1;
    this.draw();
  }

  draw() {
    if (!this.items.length) {
      this.list.innerHTML = `<li class="none" role="option" aria-disabled="true">no gene matches</li>`;
    } else {
      this.list.innerHTML = this.items.map((it, i) =>
        `<li role="option" id="gene-hit-${i}" data-i="${i}" aria-selected="${i === this.active}">` +
        `<b>${esc(it.value)}</b> <small>${esc(it.match === "close" ? "close to what you typed · " : "")}` +
        `${esc(it.where.join(", "))}</small></li>`).join("");
      for (const li of this.list.querySelectorAll("li[data-i]")) {
        li.addEventListener("mousedown", (e) => { e.preventDefault(); this.pick(this.items[+li.dataset.i].value); });
      }
    }
    this.list.hidden = false;
    this.input.setAttribute("aria-expanded", "true");
    if (this.active >= 0) this.input.setAttribute("aria-activedescendant", `gene-hit-${this.active}`);
    else this.input.removeAttribute("aria-activedescendant");
  }

  close() {
    this.list.hidden = true;
    this.input.setAttribute("aria-expanded", "false");
    this.input.removeAttribute("aria-activedescendant");
  }

  key(e) {
    const open = !this.list.hidden && this.items.length;
    if (e.key === "ArrowDown" && open) {
      e.preventDefault();
      this.active = (this.active + 1) % this.items.length;
      this.draw();
    } else if (e.key === "ArrowUp" && open) {
      e.preventDefault();
      this.active = (this.active + this.items.length - 1) % this.items.length;
      this.draw();
    } else if (e.key === "Escape") {
      this.close();
    } else if (e.key === "Enter") {
      e.preventDefault();
      const text = this.input.value.trim();
      if (open && this.active >= 0) this.pick(this.items[this.active].value);
      else if (text) this.resolve(text.split(/[\s,;]+/).filter(Boolean));
    }
  }

  pasted(e) {
    const text = (e.clipboardData || window.clipboardData).getData("text");
    const tokens = text.split(/[\s,;]+/).filter(Boolean);
    if (tokens.length > 1) {
      e.preventDefault();
      this.resolve(tokens);
    }
  }

  pick(value) {
    this.input.value = "";
    this.close();
    this.message.textContent = "";
    this.page.addGene(value);
  }

  // Each token: a symbol or identifier of some species (any case) is added as its symbol; the others are
  // named with the closest symbols, as buttons that add them.
  async resolve(tokens) {
    this.close();
    const found = [];
    const unknown = [];
    await Promise.all(tokens.map(async (t) => {
      const answer = await api("/genes", { q: t, species: "all", limit: 8 });
      const exact = answer.hits.find((h) => h.match === "exact");
      if (exact) found.push([tokens.indexOf(t), exact.gene_symbol || exact.gene_identifier]);
      else unknown.push([t, [...new Set(answer.hits.map((h) => h.gene_symbol).filter(Boolean))].slice(0, 5)]);
    }).map((p) => p.catch((e) => { this.message.textContent = e.message; })));
    found.sort((a, b) => a[0] - b[0]);
    const genes = [...this.page.state.genes];
    for (const [, g] of found) if (!genes.includes(g)) genes.push(g);
    this.input.value = unknown.map(([t]) => t).join(" ");
    this.message.innerHTML = unknown.map(([t, close]) =>
      `<span class="unknown">No gene <b>${esc(t)}</b> in this store` +
      (close.length ? `; closest: ${close.map((c) => `<button type="button" class="link" data-add="${esc(c)}">${esc(c)}</button>`).join(", ")}` : "") +
      `.</span>`).join(" ");
    for (const b of this.message.querySelectorAll("button[data-add]")) {
      b.addEventListener("click", () => { this.input.value = ""; this.message.textContent = ""; this.page.addGene(b.dataset.add); });
    }
    if (genes.length !== this.page.state.genes.length) this.page.set({ genes }, { push: true });
  }
}
