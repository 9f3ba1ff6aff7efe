// convserve.v1 Tensors in the proto3 JSON mapping: {dtype, shape: ["1", "26", ...], content:
// base64 of little-endian bytes} ⇄ typed arrays; files ⇄ base64.

export function decode(tensor) {
  const shape = (tensor.shape || []).map(Number);
  const bytes = fromBase64(tensor.content || "");
  const data = tensor.dtype === "DATA_TYPE_UINT8"
    ? bytes
    : new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return { shape, data };
}

export function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes; // a fresh buffer: aligned for Float32Array
}

export function toBase64(bytes) {
  let binary = "";
  const step = 0x8000;
  for (let i = 0; i < bytes.length; i += step) {
    binary += String.fromCharCode(...bytes.subarray(i, i + step));
  }
  return btoa(binary);
}

// The least and greatest value of an array.
export function range(data) {
  let low = Infinity;
  let high = -Infinity;
  for (const value of data) {
    if (value < low) low = value;
    if (value > high) high = value;
  }
  return [low, high];
}
