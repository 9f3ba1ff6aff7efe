// The explorer page: the server's models, an image, and one pane per model looked at
// (two to compare). Everything shown comes from the HTTP API (api.js).

import { call, setToken } from "./api.js";
import { showPad, wire } from "./input.js";
import { Pane } from "./pane.js";
import { toBase64 } from "./tensors.js";

const status = document.getElementById("server-status");
const compare = document.getElementById("compare");
const inputError = document.getElementById("input-error");
const panes = [];
let models = [];
let image = null; // the file, base64
let imageName = "";

function failed(error) {
  if (error.code === "unauthenticated" || error.code === "permission_denied") {
    document.getElementById("token-form").hidden = false;
    status.textContent = error.message;
  } else if (error.status === 0) {
    status.textContent = error.message;
  } else if (image && (error.code === "invalid_argument" || error.status === 413)) {
    inputError.textContent = `${imageName}: ${error.message}`;
  }
}

function loaded() {
  const drawable = (m) => (m.input?.shape || []).map(Number).join() === "28,28,1";
  showPad(panes.some((pane) => pane.metadata && drawable(pane.metadata)));
}

function addPane(choice) {
  const pane = new Pane(models, choice, { loaded, failed });
  panes.push(pane);
  document.getElementById("panes").append(pane.root);
  document.getElementById("panes").classList.toggle("two", panes.length > 1);
  pane.load();
}

// The second pane: another version of the first pane's model, else another model.
function secondChoice() {
  const first = models.find((m) => m.name === panes[0].modelSelect.value);
  const versions = first.versions.map(Number).sort((a, b) => b - a);
  if (versions.length > 1) return { name: first.name, version: versions[1] };
  const other = models.find((m) => m.name !== first.name) || first;
  return { name: other.name, version: 0 };
}

async function start() {
  for (const pane of panes.splice(0)) pane.root.remove();
  status.textContent = "Asking the server for its models…";
  let answer;
  try {
    ({ body: answer } = await call("ListModels", {}));
  } catch (error) {
    failed(error);
    if (error.status !== 0) status.textContent = error.message;
    return;
  }
  models = answer.models || [];
  if (!models.length) {
    status.textContent = "This server has no models loaded: load one (convserve models load NAME).";
    return;
  }
  const names = models.map((m) => m.name).join(", ");
  status.textContent = `${location.host} serves ${models.length} model${models.length > 1 ? "s" : ""}: ${names}.`;
  const chosen = models.find((m) => m.isDefault) || models[0];
  addPane({ name: chosen.name, version: 0 });
  if (compare.checked) addPane(secondChoice());
}

function use(bytes, name) {
  image = toBase64(bytes);
  imageName = name;
  const sent = document.getElementById("sent");
  if (sent.src) URL.revokeObjectURL(sent.src);
  sent.src = URL.createObjectURL(new Blob([bytes]));
  sent.alt = `The image sent: ${name}`;
  document.getElementById("sent-caption").textContent =
    `Sent: ${name} (${bytes.length.toLocaleString("en")} bytes)`;
  document.getElementById("sent-figure").hidden = false;
  for (const pane of panes) pane.analyse(image);
  document.body.dataset.images = String(Number(document.body.dataset.images || 0) + 1);
}

document.getElementById("sent").addEventListener("error", () => {
  document.getElementById("sent-figure").hidden = true; // not a picture the browser can show
});
compare.addEventListener("change", () => {
  if (compare.checked && panes.length === 1 && models.length) {
    addPane(secondChoice());
    if (image) panes[1].analyse(image);
  } else if (!compare.checked && panes.length > 1) {
    panes.pop().root.remove();
    document.getElementById("panes").classList.remove("two");
  }
});
document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(document.getElementById("token").value);
  document.getElementById("token-form").hidden = true;
  start();
});
wire(use, (message) => {
  inputError.textContent = message;
});
start();
