// What every part of the page shares: the API client (with the token, when the server asks for one),
// the taxonomy's term lists (asked once per level), and small helpers for selects, HTML, CSV and snippets.
const API = "/api/v1";
export const LEVELS = ["Neighborhood", "Class", "Subclass", "Group", "Cluster"];

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// --- the API ---------------------------------------------------------------------------------------------

let token = sessionStorage.getItem("hmba-token") || "";
let onUnauthorized = () => {};

export function setToken(value) {
  token = value;
  sessionStorage.setItem("hmba-token", value);
}

export function hasToken() {
  return Boolean(token);
}

export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

export function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export function apiUrl(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString().replace(/%2C/g, ",");
  return `${API}${path}${s ? "?" + s : ""}`;
}

const early = new Map(); // GET answers asked for before the page needed them (prefetch), by URL

// Ask for an answer now (while the page's modules load); the next api() call for the same URL takes it.
export function prefetch(path, params = {}) {
  const url = apiUrl(path, params);
  if (!early.has(url)) early.set(url, fetch(url, { headers: authHeaders() }));
}

// JSON from the API; an answer that is not 2xx becomes an ApiError with the server's one line.
export async function api(path, params = {}, init = {}) {
  const url = apiUrl(path, params);
  let pending = null;
  if (!init.method && early.has(url)) {
    pending = early.get(url);
    early.delete(url);
  }
  let response = pending ? await pending : null;
  if (!response || response.status === 401) { // asked early, before the token was given: ask again
    response = await fetch(url, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    if (response.status === 401) onUnauthorized();
    throw new ApiError(response.status, (body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

// --- shared pieces: term lists, the toolbar -----------------------------------------------------------------

const termCache = new Map();

// The terms of a level (taxonomy order, colours, cells per species), asked once per level.
export function terms(level) {
  if (!termCache.has(level)) {
    termCache.set(level, api("/terms", { level, species: "all" }).then((r) => r.terms)
      .catch((e) => { termCache.delete(level); throw e; }));
  }
  return termCache.get(level);
}

export function fillSelect(select, options, value) {
  // options: [[value, text], ...]; keeps the element (and its focus) when nothing changed
  const html = options.map(([v, t]) => `<option value="${esc(v)}">${esc(t)}</option>`).join("");
  if (select.dataset.options !== html) {
    select.innerHTML = html;
    select.dataset.options = html;
  }
  if (options.some(([v]) => v === value)) select.value = value;
  return select.value;
}

export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

export function csvText(columns, rows) {
  const cell = (v) => {
    if (v === null || v === undefined) return "";
    const s = String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [columns.map(cell).join(","), ...rows.map((r) => r.map(cell).join(","))].join("\n") + "\n";
}

// Python strings as repr would write them, for the snippets
export function py(v) {
  return typeof v === "number" ? String(v) : JSON.stringify(String(v));
}

export function shellQuote(s) {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${String(s).replace(/'/g, "'\\''")}'`;
}

