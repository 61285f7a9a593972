// The page's colours, shared by its SVG plots and the UMAP: the value scale (viridis) and hex colours as
// numbers (the taxonomy's own colours come from the release as #rrggbb).
// viridis (matplotlib's), at eleven stops: ordered for the common colour-vision deficiencies and in grey
export const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
  "#7ad151", "#bddf26", "#fde725"];

export function rgb(hex) {
  const h = /^#?([0-9a-f]{6})$/i.exec(String(hex || ""));
  const v = h ? parseInt(h[1], 16) : 0x999999;
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

const STOPS = VIRIDIS.map(rgb);

// t in [0, 1] -> [r, g, b] on viridis
export function viridis(t) {
  const u = Math.min(1, Math.max(0, t || 0)) * (STOPS.length - 1);
  const k = Math.min(STOPS.length - 2, Math.floor(u)), f = u - k;
  const a = STOPS[k], b = STOPS[k + 1];
  return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
}
