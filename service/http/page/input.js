// The image to look at: a file chosen, dropped or pasted, or a drawing. Each reaches
// `use(bytes, name)` as the file's bytes: the server decodes, converts and resizes them.

export function wire(use, showError) {
  const file = document.getElementById("file");
  const drop = document.getElementById("drop");

  async function take(blob, name) {
    if (!blob) return;
    showError("");
    use(new Uint8Array(await blob.arrayBuffer()), name || blob.name || "the image");
  }

  file.addEventListener("change", () => take(file.files[0]));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const dropped = event.dataTransfer.files[0];
    if (dropped) take(dropped);
    else showError("Nothing to use in what was dropped: drop a PNG or JPEG file.");
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.kind === "file");
    if (item) take(item.getAsFile(), "the pasted image");
  });
  pad(take);
}

// The drawing pad: white strokes on black, with the mouse, a pen or a finger.
function pad(take) {
  const canvas = document.getElementById("draw");
  const context = canvas.getContext("2d");
  function clear() {
    context.fillStyle = "#000";
    context.fillRect(0, 0, canvas.width, canvas.height);
  }
  clear();
  let last = null;
  function at(event) {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width,
      (event.clientY - box.top) * canvas.height / box.height];
  }
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = at(event);
    stroke(last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (last) stroke(at(event));
  });
  const finish = () => {
    if (!last) return;
    last = null;
    send();
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  function stroke(point) {
    context.strokeStyle = "#fff";
    context.lineWidth = canvas.width / 12;
    context.lineCap = "round";
    context.beginPath();
    context.moveTo(...last);
    context.lineTo(...point);
    context.stroke();
    last = point;
  }
  function send() {
    canvas.toBlob((blob) => take(blob, "the drawing"), "image/png");
  }
  document.getElementById("clear").addEventListener("click", clear);
  document.getElementById("use-drawing").addEventListener("click", send);
}

// Show the drawing pad only when a model takes 28×28 grayscale images.
export function showPad(shown) {
  document.getElementById("pad").hidden = !shown;
}
