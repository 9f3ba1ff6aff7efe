// The course's convolution arithmetic, with each layer's own numbers (a Layer in the proto3
// JSON mapping: kernelSize, strides, dilationRate, paddingAmount [top, bottom, left, right]).

// [height, width] of a [H, W, C] shape, or null for a shape that is not image-like.
export function spatial(shape) {
  return shape && shape.length === 3 ? [Number(shape[0]), Number(shape[1])] : null;
}

// The layer's window along each axis, or null for a layer without one (not conv or pooling).
export function windows(layer) {
  if (!layer.kernelSize || layer.kernelSize.length !== 2) return null;
  const padding = layer.paddingAmount || [0, 0, 0, 0];
  return [0, 1].map((axis) => {
    const kernel = layer.kernelSize[axis];
    const dilation = (layer.dilationRate || [1, 1])[axis];
    return {
      kernel, dilation, stride: (layer.strides || [1, 1])[axis],
      before: padding[2 * axis], after: padding[2 * axis + 1],
      effective: (kernel - 1) * dilation + 1,
    };
  });
}

// O = ⌊(I − K_eff + P) / S⌋ + 1 for each axis: [{input, output, text}], or null.
export function outputSize(layer) {
  const axes = windows(layer);
  const sizes = spatial(layer.inputShape);
  if (!axes || !sizes) return null;
  return axes.map((w, axis) => {
    const input = sizes[axis];
    const output = Math.floor((input - w.effective + w.before + w.after) / w.stride) + 1;
    const kernel = w.dilation === 1 ? `${w.kernel}` : `((${w.kernel} − 1)·${w.dilation} + 1)`;
    const padding = w.before === w.after ? `2·${w.before}` : `${w.before} + ${w.after}`;
    const text = `⌊(${input} − ${kernel} + ${padding}) / ${w.stride}⌋ + 1 = ${output}`;
    return { input, output, text };
  });
}

// The input pixels unit (row, col) of layers[index] sees: {top, bottom, left, right}
// (inclusive, clipped to the input) walking the layer list back to the input, each window
// mapping [a, b] to [a·S − P_before, b·S − P_before + K_eff − 1]. Exact for a chain of layers;
// {error} where the list is not one (a size changes with no window to say how).
export function receptiveField(layers, index, row, col, inputShape) {
  let [top, bottom, left, right] = [row, row, col, col];
  for (let i = index; i >= 0; i--) {
    const layer = layers[i];
    const before = i > 0 ? spatial(layers[i - 1].outputShape) : spatial(inputShape);
    const input = spatial(layer.inputShape);
    const output = spatial(layer.outputShape);
    const from = i > 0 ? `layer ${layers[i - 1].name}` : "the input";
    if (!input || !output || !before || before[0] !== input[0] || before[1] !== input[1]) {
      return { error: `cannot follow the layers from ${from} to ${layer.name}: their shapes do `
        + "not chain" };
    }
    const axes = windows(layer);
    if (axes) {
      const [h, w] = axes;
      top = top * h.stride - h.before;
      bottom = bottom * h.stride - h.before + h.effective - 1;
      left = left * w.stride - w.before;
      right = right * w.stride - w.before + w.effective - 1;
    } else if (input[0] !== output[0] || input[1] !== output[1]) {
      return { error: `layer ${layer.name} (${layer.type}) changes the size with no window to `
        + "follow" };
    }
  }
  const [height, width] = spatial(inputShape);
  return {
    top: Math.max(top, 0), bottom: Math.min(bottom, height - 1),
    left: Math.max(left, 0), right: Math.min(right, width - 1),
  };
}
