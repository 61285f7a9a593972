// A table of an answer's columns and rows, sortable by any column (the header cells are buttons, so the
// keyboard sorts too; aria-sort says which way). cell(column, value, row) may return HTML for a cell.
import { esc } from "./common.js";

const fmt = new Intl.NumberFormat("en", { maximumSignificantDigits: 4 });

export function number(v) {
  if (typeof v !== "number") return esc(v ?? "");
  return Number.isInteger(v) ? v.toLocaleString("en") : fmt.format(v);
}

export function table(box, columns, rows, { cell = null, caption = "", testid = "" } = {}) {
  let sortBy = -1;
  let ascending = true;
  const draw = () => {
    const order = rows.map((_, i) => i);
    if (sortBy >= 0) {
      order.sort((a, b) => {
        const x = rows[a][sortBy];
        const y = rows[b][sortBy];
        const c = x === y ? 0 : x === null ? 1 : y === null ? -1 : x < y ? -1 : 1;
        return ascending ? c : -c;
      });
    }
    const head = columns.map((c, i) => {
      const sort = i === sortBy ? (ascending ? "ascending" : "descending") : "none";
      const mark = i === sortBy ? (ascending ? " ▲" : " ▼") : "";
      return `<th scope="col" aria-sort="${sort}"><button type="button" data-col="${i}">${esc(c)}${mark}</button></th>`;
    }).join("");
    const body = order.map((i) => "<tr>" + rows[i].map((v, j) => {
      const html = cell ? cell(columns[j], v, rows[i]) : null;
      const cls = typeof v === "number" ? ' class="num"' : "";
      return `<td${cls}>${html ?? number(v)}</td>`;
    }).join("") + "</tr>").join("");
    box.innerHTML =
      `<table${testid ? ` data-testid="${testid}"` : ""} data-n-rows="${rows.length}">` +
      (caption ? `<caption>${esc(caption)}</caption>` : "") +
      `<thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
    for (const b of box.querySelectorAll("th button")) {
      b.addEventListener("click", () => {
        const col = +b.dataset.col;
        ascending = col === sortBy ? !ascending : typeof rows[0]?.[col] !== "number";
        sortBy = col;
        draw();
        box.querySelector(`th button[data-col="${col}"]`).focus();
      });
    }
  };
  draw();
}
