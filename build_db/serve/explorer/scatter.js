// A scatter of many points in WebGL, one draw call: what the UMAP needs (pan, zoom, the point under the
// mouse) and nothing more. Used instead of plotly's scattergl, whose start (~1 s to compile plotly.js in a
// fresh browser) and 200,000-point draw (~1 s in software WebGL) made the UMAP miss its 2 s goal.
//
// Points are drawn in the order given (the caller puts the ones to see on top last). Equal scales on both
// axes, as a UMAP needs. Drag pans, the wheel zooms around the mouse, a double click resets the view. The
// point under the mouse (within HOVER_PX) is found in a grid of the data, and announced as a "scatter-hover"
// event on the element (detail: {index}, -1 when none); `pixelOf(index)` gives a point's place on the page
// (for tests and a lab's own automation).

const HOVER_PX = 6;
const GRID = 128; // cells per side of the hover index

const VERTEX = `
attribute vec2 position;
attribute vec4 color;
uniform vec2 center;
uniform vec2 scale;
uniform float size;
varying vec4 v_color;
void main() {
  gl_Position = vec4((position - center) * scale, 0.0, 1.0);
  gl_PointSize = size;
  v_color = color;
}`;

const FRAGMENT = `
precision mediump float;
varying vec4 v_color;
void main() {
  vec2 p = gl_PointCoord - vec2(0.5);
  if (dot(p, p) > 0.25) discard;  // round points
  gl_FragColor = v_color;
}`;

function shader(gl, type, source) {
  const s = gl.createShader(type);
  gl.shaderSource(s, source);
  gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(`WebGL shader: ${gl.getShaderInfoLog(s)}`);
  return s;
}

export class Scatter {
  constructor(box) {
    this.box = box;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "scatter";
    box.replaceChildren(this.canvas);
    // preserveDrawingBuffer: a screenshot (or a user's "copy image") sees the points
    const gl = this.canvas.getContext("webgl", { antialias: false, preserveDrawingBuffer: true });
    if (!gl) throw new Error("this browser has no WebGL, which the UMAP needs; try another browser");
    this.gl = gl;
    const program = gl.createProgram();
    gl.attachShader(program, shader(gl, gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, shader(gl, gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(`WebGL: ${gl.getProgramInfoLog(program)}`);
    gl.useProgram(program);
    this.loc = {
      position: gl.getAttribLocation(program, "position"),
      color: gl.getAttribLocation(program, "color"),
      center: gl.getUniformLocation(program, "center"),
      scale: gl.getUniformLocation(program, "scale"),
      size: gl.getUniformLocation(program, "size"),
    };
    this.positions = gl.createBuffer();
    this.colors = gl.createBuffer();
    this.n = 0;
    this.hovered = -1;
    this.wire();
    new ResizeObserver(() => this.resize()).observe(box);
  }

  // x, y: numbers per point; rgba: Uint8Array of 4 per point; order: the drawing order (indexes of x/y)
  set(x, y, rgba, order, pointPx) {
    const gl = this.gl;
    const n = order.length;
    const xy = new Float32Array(2 * n);
    const colors = new Uint8Array(4 * n);
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let j = 0; j < n; j++) {
      const i = order[j];
      const px = x[i], py = y[i];
      xy[2 * j] = px; xy[2 * j + 1] = py;
      colors.set(rgba.subarray(4 * i, 4 * i + 4), 4 * j);
      if (px < x0) x0 = px; if (px > x1) x1 = px;
      if (py < y0) y0 = py; if (py > y1) y1 = py;
    }
    gl.bindBuffer(gl.ARRAY_BUFFER, this.positions);
    gl.bufferData(gl.ARRAY_BUFFER, xy, gl.STATIC_DRAW);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.colors);
    gl.bufferData(gl.ARRAY_BUFFER, colors, gl.STATIC_DRAW);
    Object.assign(this, { x, y, order, n, pointPx, bounds: n ? [x0, x1, y0, y1] : [0, 1, 0, 1] });
    this.index();
    this.reset();
  }

  // The hover index: the points of each grid cell, in drawing order (the last drawn wins a tie).
  index() {
    const [x0, x1, y0, y1] = this.bounds;
    const cw = (x1 - x0) / GRID || 1, ch = (y1 - y0) / GRID || 1;
    const cell = new Int32Array(this.n);
    const starts = new Int32Array(GRID * GRID + 1);
    for (let j = 0; j < this.n; j++) {
      const i = this.order[j];
      const cx = Math.min(GRID - 1, Math.floor((this.x[i] - x0) / cw));
      const cy = Math.min(GRID - 1, Math.floor((this.y[i] - y0) / ch));
      cell[j] = cy * GRID + cx;
      starts[cell[j] + 1]++;
    }
    for (let c = 0; c < GRID * GRID; c++) starts[c + 1] += starts[c];
    const items = new Int32Array(this.n);
    const fill = starts.slice(0, GRID * GRID);
    for (let j = 0; j < this.n; j++) items[fill[cell[j]]++] = j;
    this.grid = { cw, ch, starts, items };
  }

  reset() {
    const [x0, x1, y0, y1] = this.bounds;
    this.center = [(x0 + x1) / 2, (y0 + y1) / 2];
    this.fit = 0.95 * Math.min(this.width() / (x1 - x0 || 1), this.height() / (y1 - y0 || 1));
    this.k = this.fit; // CSS pixels per data unit, on both axes
    this.draw();
  }

  width() { return this.canvas.clientWidth || 1; }
  height() { return this.canvas.clientHeight || 1; }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    const w = Math.round(this.width() * ratio), h = Math.round(this.height() * ratio);
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
      if (this.bounds) this.draw();
    }
  }

  draw() {
    this.resize();
    const gl = this.gl;
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.clearColor(1, 1, 1, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    if (!this.n) return;
    gl.uniform2f(this.loc.center, this.center[0], this.center[1]);
    gl.uniform2f(this.loc.scale, (2 * this.k) / this.width(), (2 * this.k) / this.height());
    gl.uniform1f(this.loc.size, this.pointPx * (window.devicePixelRatio || 1));
    gl.bindBuffer(gl.ARRAY_BUFFER, this.positions);
    gl.enableVertexAttribArray(this.loc.position);
    gl.vertexAttribPointer(this.loc.position, 2, gl.FLOAT, false, 0, 0);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.colors);
    gl.enableVertexAttribArray(this.loc.color);
    gl.vertexAttribPointer(this.loc.color, 4, gl.UNSIGNED_BYTE, true, 0, 0);
    gl.drawArrays(gl.POINTS, 0, this.n);
  }

  // Wait until the points are on the canvas (reading one pixel waits for the draw), for honest timings.
  finished() {
    this.gl.readPixels(0, 0, 1, 1, this.gl.RGBA, this.gl.UNSIGNED_BYTE, new Uint8Array(4));
  }

  // data <-> CSS pixels within the canvas
  toData(px, py) {
    return [this.center[0] + (px - this.width() / 2) / this.k, this.center[1] - (py - this.height() / 2) / this.k];
  }

  toPixel(dx, dy) {
    return [this.width() / 2 + (dx - this.center[0]) * this.k, this.height() / 2 - (dy - this.center[1]) * this.k];
  }

  // Where a point (an index of x/y) is on the page, in client pixels.
  pixelOf(i) {
    const r = this.canvas.getBoundingClientRect();
    const [px, py] = this.toPixel(this.x[i], this.y[i]);
    return [r.left + px, r.top + py];
  }

  // The point under a canvas pixel (an index of x/y), or -1.
  nearest(px, py) {
    if (!this.n) return -1;
    const [dx, dy] = this.toData(px, py);
    const r = HOVER_PX / this.k;
    const { cw, ch, starts, items } = this.grid;
    const [x0, , y0] = this.bounds;
    const cx0 = Math.max(0, Math.floor((dx - r - x0) / cw)), cx1 = Math.min(GRID - 1, Math.floor((dx + r - x0) / cw));
    const cy0 = Math.max(0, Math.floor((dy - r - y0) / ch)), cy1 = Math.min(GRID - 1, Math.floor((dy + r - y0) / ch));
    let best = -1, bestD = r * r, bestJ = -1;
    for (let cy = cy0; cy <= cy1; cy++) {
      for (let cx = cx0; cx <= cx1; cx++) {
        const c = cy * GRID + cx;
        for (let m = starts[c]; m < starts[c + 1]; m++) {
          const j = items[m], i = this.order[j];
          const ex = this.x[i] - dx, ey = this.y[i] - dy, d = ex * ex + ey * ey;
          if (d < bestD || (d === bestD && j > bestJ)) { best = i; bestD = d; bestJ = j; }
        }
      }
    }
    return best;
  }

  wire() {
    const c = this.canvas;
    let drag = null;
    let pending = false;
    const redraw = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; this.draw(); });
    };
    const local = (e) => { const r = c.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
    c.addEventListener("pointerdown", (e) => { drag = local(e); c.setPointerCapture(e.pointerId); });
    c.addEventListener("pointerup", () => { drag = null; });
    c.addEventListener("pointercancel", () => { drag = null; });
    c.addEventListener("pointermove", (e) => {
      const [px, py] = local(e);
      if (drag) {
        this.center[0] -= (px - drag[0]) / this.k;
        this.center[1] += (py - drag[1]) / this.k;
        drag = [px, py];
        redraw();
        return;
      }
      const i = this.nearest(px, py);
      if (i !== this.hovered) {
        this.hovered = i;
        this.box.dispatchEvent(new CustomEvent("scatter-hover", { detail: { index: i } }));
      }
    });
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [px, py] = local(e);
      const before = this.toData(px, py);
      this.k = Math.min(this.fit * 500, Math.max(this.fit / 4, this.k * Math.exp(-e.deltaY * 0.0015)));
      const after = this.toData(px, py);
      this.center[0] += before[0] - after[0];
      this.center[1] += before[1] - after[1];
      redraw();
    }, { passive: false });
    c.addEventListener("dblclick", () => this.reset());
  }
}
