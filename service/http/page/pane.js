// One model (and version) looked at: its layers, and what it makes of the image — the
// prediction, a layer's feature maps, its kernels, the explanations. Two panes compare.

import { call, spec } from "./api.js";
import { outputSize, receptiveField, spatial } from "./conv.js";
import * as draw from "./draw.js";
import { decode, range } from "./tensors.js";

const METHODS = [
  ["EXPLAIN_METHOD_GRAD_CAM", "Grad-CAM"],
  ["EXPLAIN_METHOD_HIRES_CAM", "HiResCAM"],
  ["EXPLAIN_METHOD_OCCLUSION", "Occlusion"],
];
const MOST_KERNELS = 512; // drawn for one layer; the rest are named, not drawn
const CURL_SHOWN = 4000; // characters of a call's curl shown (Copy takes all)

const dims = (shape) => (shape || []).map(Number).join("×");

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

export class Pane {
  // models: ListModels' models; choice: {name, version}; hooks: {loaded(metadata), failed(error)}
  constructor(models, choice, hooks) {
    this.root = document.getElementById("pane").content.firstElementChild.cloneNode(true);
    this.models = models;
    this.hooks = hooks;
    this.image = null; // the image file, base64
    this.metadata = null;
    this.tickets = {}; // per panel: the newest call's number, so older answers are dropped
    this.modelSelect = this.$(".model-select");
    this.versionSelect = this.$(".version-select");
    this.layerSelect = this.$(".layer-select");
    this.classSelect = this.$(".class-select");
    this.pre = this.$(".pre");
    for (const model of models) {
      this.modelSelect.append(element("option", { value: model.name, text: model.name }));
    }
    this.modelSelect.value = choice.name;
    this.versions(choice.version);
    this.modelSelect.addEventListener("change", () => {
      this.versions(0);
      this.load();
    });
    this.versionSelect.addEventListener("change", () => this.load());
    this.layerSelect.addEventListener("change", () => this.layerChanged());
    this.pre.addEventListener("change", () => this.drawMaps());
    this.classSelect.addEventListener("change", () => this.explain());
    const zoom = this.$(".zoom");
    zoom.addEventListener("click", (event) => {
      const box = zoom.getBoundingClientRect();
      if (!this.tensor) return;
      const [, height, width] = this.tensor.shape;
      this.pick(Math.floor((event.clientY - box.top) / box.height * height),
        Math.floor((event.clientX - box.left) / box.width * width));
    });
    zoom.addEventListener("keydown", (event) => {
      const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
      const move = moves[event.key];
      if (!move || !this.tensor) return;
      event.preventDefault();
      const [row, col] = this.unit || [0, 0];
      this.pick(row + (this.unit ? move[0] : 0), col + (this.unit ? move[1] : 0));
    });
  }

  $(selector) {
    return this.root.querySelector(selector);
  }

  panel(name) {
    return this.root.querySelector(`[data-panel="${name}"]`);
  }

  // A call for one panel: its errors shown there, its request under "The call"; null when a
  // newer call of the panel was made meanwhile or the call failed.
  async ask(panel, method, request, { show = true } = {}) {
    const ticket = (this.tickets[panel] = (this.tickets[panel] || 0) + 1);
    const section = this.panel(panel);
    try {
      const { body, call: made } = await call(method, request);
      if (ticket !== this.tickets[panel]) return null;
      if (show) this.showCalls(section, [made]);
      return body;
    } catch (error) {
      if (ticket !== this.tickets[panel]) return null;
      if (show && error.call) this.showCalls(section, [error.call]);
      this.fail(section, error);
      return null;
    }
  }

  fail(section, error) {
    const place = section.querySelector(":scope > .error");
    if (place) place.textContent = error.message;
    this.hooks.failed(error);
  }

  clearError(section) {
    const place = section.querySelector(":scope > .error");
    if (place) place.textContent = "";
  }

  showCalls(section, calls) {
    const body = section.querySelector(".call-body");
    body.replaceChildren();
    for (const made of calls) {
      const shown = made.curl.length > CURL_SHOWN
        ? `${made.curl.slice(0, CURL_SHOWN)}… (${made.curl.length - CURL_SHOWN} more characters: Copy takes them all)`
        : made.curl;
      const copy = element("button", { type: "button", text: "Copy" });
      copy.addEventListener("click", () => navigator.clipboard.writeText(made.curl));
      const times = made.serverMs === null ? "no answer"
        : `the server took ${made.serverMs.toFixed(1)} ms (round trip ${made.totalMs.toFixed(1)} ms)`;
      body.append(element("p", { class: "timing", text: `${made.method}: ${times} ` }, copy),
        element("pre", { class: "curl", text: shown }));
    }
  }

  versions(version) {
    const model = this.models.find((m) => m.name === this.modelSelect.value);
    this.versionSelect.replaceChildren(element("option", { value: "0", text: "latest" }));
    for (const v of model.versions.map(Number).sort((a, b) => b - a)) {
      this.versionSelect.append(element("option", { value: String(v), text: `${v}` }));
    }
    this.versionSelect.value = String(version || 0);
  }

  get spec() {
    return spec(this.modelSelect.value, Number(this.versionSelect.value));
  }

  // The model's metadata, then everything that depends on it.
  async load() {
    const section = this.panel("model");
    const metadata = await this.ask("model", "GetModelMetadata", { model: this.spec }, { show: false });
    if (!metadata) return;
    this.clearError(section);
    this.metadata = metadata;
    this.layers = metadata.layers || [];
    this.maps = this.tensor = this.seen = null;
    this.$(".closer").hidden = true;
    this.$(".rf").hidden = true;
    this.$(".channels").replaceChildren();
    this.$(".map-legend").replaceChildren();
    this.describe();
    const shown = this.layers.filter((layer) => spatial(layer.outputShape));
    this.layerSelect.replaceChildren(...shown.map((layer) => element("option",
      { value: layer.name, text: `${layer.name} (${layer.type}, ${dims(layer.outputShape)})` })));
    const firstConv = shown.find((layer) => layer.type === "Conv2D") || shown[0];
    if (firstConv) this.layerSelect.value = firstConv.name;
    this.classSelect.replaceChildren(element("option", { value: "", text: "the top class" }),
      ...(metadata.classNames || []).map((name, index) =>
        element("option", { value: String(index), text: `${index}: ${name}` })));
    this.hooks.loaded(metadata);
    this.filters();
    if (this.image) this.analyse(this.image);
    else this.seenNote("No image yet: choose, drop, paste or draw one.");
  }

  describe() {
    const m = this.metadata;
    const input = m.input || {};
    const accuracy = m.testAccuracy ? ` · test accuracy ${(m.testAccuracy * 100).toFixed(1)}%` : "";
    this.$(".summary").textContent = `${m.model.name} version ${m.model.version} · input `
      + `${dims(input.shape)} · ${(m.classNames || []).length} classes · `
      + `${Number(m.parameters || 0).toLocaleString("en")} parameters${accuracy} · ${m.origin || ""}`;
    const body = this.$(".layers tbody");
    body.replaceChildren();
    for (const layer of this.layers) {
      const sizes = outputSize(layer);
      const pair = (values) => (values && values.length ? values.join("×") : "");
      const padding = layer.padding ? `${layer.padding} [${(layer.paddingAmount || [0, 0, 0, 0]).join(", ")}]` : "";
      let arithmetic = "";
      if (sizes) {
        arithmetic = sizes[0].text === sizes[1].text ? sizes[0].text
          : `height ${sizes[0].text}; width ${sizes[1].text}`;
      }
      const computed = element("td", { class: "computed", text: arithmetic });
      if (sizes) computed.dataset.size = `${sizes[0].output},${sizes[1].output}`;
      const row = element("tr", {},
        element("th", { scope: "row", text: layer.name }), element("td", { text: layer.type }),
        element("td", { text: pair(layer.kernelSize) }), element("td", { text: pair(layer.strides) }),
        element("td", { text: padding }), element("td", { text: pair(layer.dilationRate) }),
        element("td", { text: layer.activation || "" }), computed,
        element("td", { class: "metadata", text: dims(layer.outputShape) }),
        element("td", { class: "returned", text: "" }));
      row.dataset.layer = layer.name;
      body.append(row);
    }
  }

  // The image (a file, base64) through this pane's model.
  analyse(image) {
    this.image = image;
    if (!this.metadata) return;
    this.$(".bars").replaceChildren(); // nothing of the last image stays on show
    this.$(".channels").replaceChildren();
    this.predict();
    this.seenReady = this.featureMap();
    this.explain();
  }

  get images() {
    return { encoded: { files: [this.image] } };
  }

  get layer() {
    return this.layers.find((layer) => layer.name === this.layerSelect.value);
  }

  layerChanged() {
    this.filters();
    if (this.image) this.seenReady = this.featureMap();
  }

  async predict() {
    const section = this.panel("predict");
    const names = this.metadata.classNames || [];
    const answer = await this.ask("predict", "Predict",
      { model: this.spec, images: this.images, topK: names.length });
    if (!answer) return;
    this.clearError(section);
    const { data } = decode(answer.probabilities);
    const best = data.indexOf(Math.max(...data));
    const bars = this.$(".bars");
    bars.replaceChildren();
    (answer.classNames || names).forEach((name, index) => {
      const percent = data[index] * 100;
      const fill = element("span", { class: "fill" });
      fill.style.width = `${percent}%`;
      const row = element("li", { class: index === best ? "top" : "" },
        element("span", { class: "name", text: name }),
        element("span", { class: "bar", "aria-hidden": "true" }, fill),
        element("span", { class: "value", text: `${percent.toFixed(1)}%` }));
      row.dataset.class = name;
      row.dataset.probability = String(data[index]);
      bars.append(row);
    });
  }

  async featureMap() {
    const section = this.panel("featuremap");
    const layer = this.layer;
    if (!layer) return;
    const answer = await this.ask("featuremap", "FeatureMap", {
      model: this.spec, images: this.images, layer: layer.name,
      includePreActivation: layer.type === "Conv2D", includeImages: true,
    });
    if (!answer) return;
    this.clearError(section);
    this.pre.disabled = !answer.preActivations;
    if (!answer.preActivations) this.pre.checked = false;
    this.maps = {
      layer,
      activations: decode(answer.activations),
      pre: answer.preActivations ? decode(answer.preActivations) : null,
    };
    this.seen = decode(answer.images);
    for (const row of this.$(".layers tbody").children) {
      row.classList.toggle("current", row.dataset.layer === layer.name);
      if (row.dataset.layer === layer.name) {
        row.querySelector(".returned").textContent = dims(this.maps.activations.shape.slice(1));
      }
    }
    this.drawSeen();
    this.channel = 0;
    this.unit = null;
    this.drawMaps();
  }

  drawSeen() {
    const canvas = this.$(".seen");
    draw.picture(canvas, this.seen);
    const [, height, width, channels] = this.seen.shape;
    canvas.setAttribute("aria-label", `The image as model ${this.metadata.model.name} takes it: `
      + `${height}×${width}, ${channels === 1 ? "grayscale" : "colour"}`);
    this.seenNote(`${height}×${width} ${channels === 1 ? "grayscale" : "colour"}, after the `
      + "server's decoding, colour conversion and resizing.");
    this.$(".rf").hidden = true;
  }

  seenNote(text) {
    this.$(".seen-note").textContent = text;
  }

  drawMaps() {
    if (!this.maps) return;
    const tensor = this.pre.checked && this.maps.pre ? this.maps.pre : this.maps.activations;
    const [low, high] = range(tensor.data);
    const colours = draw.scale(low, high);
    const kind = tensor === this.maps.pre ? "before the activation" : "after the activation";
    draw.legend(this.$(".map-legend"), colours, `${this.maps.layer.name}, ${kind}`);
    const channels = tensor.shape[3];
    const grid = this.$(".channels");
    grid.replaceChildren();
    for (let k = 0; k < channels; k++) {
      const canvas = element("canvas", { role: "img", "aria-label": `channel ${k}` });
      draw.channel(canvas, tensor, k, colours);
      const button = element("button", { type: "button", class: "channel", "aria-pressed": String(k === this.channel),
        title: `channel ${k}` }, canvas, element("span", { text: `${k}` }));
      button.addEventListener("click", () => {
        this.channel = k;
        for (const other of grid.children) other.setAttribute("aria-pressed", String(other === button));
        this.drawZoom();
      });
      grid.append(button);
    }
    this.tensor = tensor;
    this.colours = colours;
    this.drawZoom();
  }

  drawZoom() {
    const zoom = this.$(".zoom");
    const [, height, width] = this.tensor.shape;
    draw.channel(zoom, this.tensor, this.channel, this.colours);
    zoom.setAttribute("aria-label", `Channel ${this.channel}, ${height} by ${width} units: click `
      + "a unit, or use the arrow keys, to see its value and what it sees of the input");
    this.$(".closer").hidden = false;
    if (this.unit) this.pick(...this.unit);
    else this.$(".unit").textContent = "Click a unit (or focus the picture and use the arrow keys).";
  }

  // Unit (row, col) of the chosen channel: its value, and its receptive field on the input.
  pick(row, col) {
    const [, height, width, channels] = this.tensor.shape;
    row = Math.min(Math.max(row, 0), height - 1);
    col = Math.min(Math.max(col, 0), width - 1);
    this.unit = [row, col];
    const value = this.tensor.data[(row * width + col) * channels + this.channel];
    const index = this.layers.indexOf(this.maps.layer);
    const field = receptiveField(this.layers, index, row, col, this.metadata.input.shape);
    const text = this.$(".unit");
    const box = this.$(".rf");
    const where = `Channel ${this.channel}, unit (row ${row}, column ${col}): ${draw.format(value)}.`;
    text.dataset.value = String(value);
    if (field.error) {
      text.textContent = `${where} Its receptive field is unknown: ${field.error}.`;
      box.hidden = true;
      return;
    }
    const [inputHeight, inputWidth] = spatial(this.metadata.input.shape);
    text.textContent = `${where} It sees rows ${field.top}–${field.bottom} and columns `
      + `${field.left}–${field.right} of the input (${field.bottom - field.top + 1}×`
      + `${field.right - field.left + 1} pixels), outlined on what the model sees.`;
    Object.assign(box.style, {
      top: `${(field.top / inputHeight) * 100}%`,
      left: `${(field.left / inputWidth) * 100}%`,
      height: `${((field.bottom - field.top + 1) / inputHeight) * 100}%`,
      width: `${((field.right - field.left + 1) / inputWidth) * 100}%`,
    });
    Object.assign(box.dataset, field);
    box.hidden = false;
  }

  async filters() {
    const section = this.panel("filters");
    const layer = this.layer;
    const grid = this.$(".kernels");
    const note = this.$(".kernels-note");
    if (!layer || layer.type !== "Conv2D") {
      this.tickets.filters = (this.tickets.filters || 0) + 1;
      grid.replaceChildren();
      this.$(".kernel-legend").replaceChildren();
      note.textContent = layer ? `Layer ${layer.name} is a ${layer.type}: it has no kernels. `
        + "Pick a Conv2D layer." : "This model has no layer with feature maps.";
      return;
    }
    const answer = await this.ask("filters", "Filters", { model: this.spec, layer: layer.name });
    if (!answer) return;
    this.clearError(section);
    const kernels = decode(answer.kernels);
    const biases = answer.biases ? decode(answer.biases).data : null;
    const [kh, kw, inputs, outputs] = kernels.shape;
    const [low, high] = range(kernels.data);
    const colours = draw.scale(Math.min(low, -1e-9), Math.max(high, 1e-9));
    draw.legend(this.$(".kernel-legend"), colours, `${layer.name}'s weights`);
    const drawn = Math.min(outputs, Math.max(1, Math.floor(MOST_KERNELS / inputs)));
    note.textContent = `${outputs} filters of ${kh}×${kw}, one kernel per input channel (${inputs}).`
      + (drawn < outputs ? ` The first ${drawn} filters are drawn.` : "");
    grid.replaceChildren();
    for (let f = 0; f < drawn; f++) {
      const row = element("div", { class: "kernel-row" });
      for (let c = 0; c < inputs; c++) {
        const canvas = element("canvas", { role: "img",
          "aria-label": `filter ${f}, kernel over input channel ${c}` });
        draw.kernel(canvas, kernels, c, f, colours);
        row.append(canvas);
      }
      const bias = biases ? ` bias ${draw.format(biases[f])}` : "";
      grid.append(element("figure", { class: "filter" }, row,
        element("figcaption", { text: `${f}${bias}` })));
    }
  }

  async explain() {
    if (!this.image || !this.metadata) return;
    const section = this.panel("explain");
    const ticket = (this.tickets.explain = (this.tickets.explain || 0) + 1);
    const chosen = this.classSelect.value;
    const figures = METHODS.map(([, title]) => element("figure", { class: "heat" },
      element("canvas", { role: "img", "aria-label": `${title}: waiting for the server` }),
      element("figcaption", { text: `${title}…` })));
    this.$(".heatmaps").replaceChildren(...figures);
    const answers = await Promise.all(METHODS.map(([method]) => call("Explain", {
      model: this.spec, images: this.images, method,
      ...(chosen === "" ? {} : { classIndex: Number(chosen) }),
    }).catch((error) => error)));
    await this.seenReady;
    if (ticket !== this.tickets.explain) return;
    this.showCalls(section, answers.map((answer) => answer.call).filter(Boolean));
    answers.forEach((answer, i) => {
      const [canvas, caption] = figures[i].children;
      const title = METHODS[i][1];
      if (answer instanceof Error) {
        caption.textContent = `${title}: ${answer.message}`;
        canvas.hidden = true;
        figures[i].classList.add("failed");
        if (answer.code === "unauthenticated" || answer.code === "unavailable") this.hooks.failed(answer);
        return;
      }
      const { body } = answer;
      const heatmaps = decode(body.heatmaps);
      const classIndex = (body.classIndices || [0])[0];
      const className = (body.classNames || [])[classIndex] ?? classIndex;
      const high = this.seen ? draw.heat(canvas, this.seen, heatmaps) : 0;
      const at = body.layer ? ` at layer ${body.layer.name}` : "";
      const zero = high > 0 ? "" : ": all zero, no positive evidence found (Grad-CAM's mean "
        + "gradients often cancel behind Flatten + Dense; HiResCAM does not average them)";
      caption.textContent = `${title} for ${className}${at}${zero}`;
      canvas.setAttribute("aria-label", `${title} heatmap: where the evidence for ${className} lies`);
    });
  }
}
