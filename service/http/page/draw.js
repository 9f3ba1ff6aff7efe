// Pictures of tensors on canvases: colour scales with a labelled legend, channels of a
// feature map, kernels, the input, heatmaps over it.

const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const DIVERGING = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130],
  [178, 24, 43]];
const INFERNO = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];

function interpolate(stops, t) {
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
}

export function format(value) {
  if (value === 0) return "0";
  const size = Math.abs(value);
  return size >= 1000 || size < 0.01 ? value.toExponential(2) : Number(value.toPrecision(3)).toString();
}

// One scale for many pictures: diverging around 0 when the values have both signs,
// sequential from the least to the greatest otherwise.
export function scale(low, high) {
  if (low < 0 && high > 0) {
    const m = Math.max(-low, high);
    return { low: -m, high: m, stops: DIVERGING, colour: (v) => interpolate(DIVERGING, (v + m) / (2 * m)) };
  }
  const span = high - low || 1;
  return { low, high, stops: VIRIDIS, colour: (v) => interpolate(VIRIDIS, (v - low) / span) };
}

// The scale as a bar with its values written under it.
export function legend(element, colours, label) {
  element.replaceChildren();
  const bar = document.createElement("canvas");
  paint(bar, 256, 1, (x) => interpolate(colours.stops, x / 255));
  bar.className = "legend-bar";
  bar.setAttribute("role", "img");
  bar.setAttribute("aria-label", `${label}: colour scale from ${format(colours.low)} to ${format(colours.high)}`);
  const ticks = document.createElement("div");
  ticks.className = "ticks";
  const values = colours.low < 0 ? [colours.low, 0, colours.high] : [colours.low, colours.high];
  for (const value of values) {
    const tick = document.createElement("span");
    tick.textContent = format(value);
    ticks.append(tick);
  }
  const caption = document.createElement("span");
  caption.className = "legend-label";
  caption.textContent = label;
  element.append(caption, bar, ticks);
}

// A width × height picture, one canvas pixel per value: rgb(p) colours pixel p (row-major).
function paint(canvas, width, height, rgb) {
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  for (let p = 0; p < width * height; p++) image.data.set([...rgb(p), 255], p * 4);
  context.putImageData(image, 0, 0);
}

// Channel `channel` of image `n` of a [N, H, W, C] tensor.
export function channel(canvas, tensor, channel, colours, n = 0) {
  const [, height, width, channels] = tensor.shape;
  const base = n * height * width * channels + channel;
  paint(canvas, width, height, (p) => colours.colour(tensor.data[base + p * channels]));
}

// Kernel [:, :, c, f] of a [KH, KW, C_in, C_out] tensor.
export function kernel(canvas, tensor, input, output, colours) {
  const [kh, kw, cin, cout] = tensor.shape;
  paint(canvas, kw, kh, (p) => colours.colour(tensor.data[(p * cin + input) * cout + output]));
}

// Pixel p of image n of a uint8 [N, H, W, C] tensor (C 1 or 3), as [r, g, b].
function rgbAt(tensor, n, p) {
  const [, height, width, channels] = tensor.shape;
  const at = (n * height * width + p) * channels;
  const data = tensor.data;
  return channels === 3 ? [data[at], data[at + 1], data[at + 2]] : [data[at], data[at], data[at]];
}

// A uint8 [N, H, W, C] image as it is.
export function picture(canvas, tensor, n = 0) {
  const [, height, width] = tensor.shape;
  paint(canvas, width, height, (p) => rgbAt(tensor, n, p));
}

// A heatmap [N, H, W] (≥ 0) over the image, normalised by its own greatest value; returns
// that value (0: nothing to show).
export function heat(canvas, image, heatmaps, n = 0) {
  const [, height, width] = heatmaps.shape;
  const plane = height * width;
  let high = 0;
  for (let p = 0; p < plane; p++) high = Math.max(high, heatmaps.data[n * plane + p]);
  paint(canvas, width, height, (p) => {
    const t = high > 0 ? heatmaps.data[n * plane + p] / high : 0;
    const [r, g, b] = rgbAt(image, n, p);
    const gray = (r * 299 + g * 587 + b * 114) / 1000;
    const mix = 0.25 + 0.6 * t;
    return interpolate(INFERNO, t).map((c) => Math.round(c * mix + gray * (1 - mix)));
  });
  return high;
}
