// What the page's SVG plots (the dot plot, the regions and donors bars) share: the font and its measure,
// number formats, and a hover card over a plot.
export const FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
export const FAMILY = FONT.slice(FONT.indexOf(" ") + 1);

let measurer = null;

// A text's width in pixels in FONT (the labels' room is measured, not guessed).
export function textWidth(t) {
  measurer = measurer || document.createElement("canvas").getContext("2d");
  measurer.font = FONT;
  return measurer.measureText(String(t)).width;
}

export const fmt = (x, d) => Number(x).toFixed(d);

// A hover card in a plot's container (position: relative): show(element, html) beside the element under the
// mouse, hide() when it leaves. Its text is also what tests read (data-testid given by the caller).
export function hoverCard(container, testid) {
  const tip = document.createElement("div");
  tip.className = "plot-tip";
  tip.dataset.testid = testid;
  tip.hidden = true;
  container.append(tip);
  return {
    show(target, html) {
      tip.innerHTML = html;
      const box = container.getBoundingClientRect(), d = target.getBoundingClientRect();
      tip.style.left = `${d.right - box.left + 8}px`;
      tip.style.top = `${d.top - box.top - 4}px`;
      tip.hidden = false;
    },
    hide() { tip.hidden = true; },
  };
}

// Round numbers for an axis from 0 to at least `top`: [the axis' end, its ticks].
export function ticks(top, count = 4) {
  if (!(top > 0)) return [1, [0, 0.25, 0.5, 0.75, 1]];
  const raw = top / count, p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((s) => s >= raw);
  const end = Math.ceil(top / step - 1e-9) * step;
  return [end, Array.from({ length: Math.round(end / step) + 1 }, (_, i) => i * step)];
}
