"""Explain (Grad-CAM, HiResCAM, occlusion) and Filters over real sockets, checked against the
saved Keras model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from client import AsyncClient, Client
from client.errors import InvalidArgument, NotFound
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.convserve.v1 import convserve_pb2_grpc as pb_grpc
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from convserve.api.pb.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from convserve.fashion_mnist import Dataset
from tests.integration.test_v2 import infer_request
from tests.integration.test_v2 import output as output_array


def _keras(models_dir: Path, name: str) -> Any:
    import keras

    return keras.models.load_model(models_dir / name / "1" / "model.keras", compile=False)


def tape_cam(
    model: Any, layer: str, images: np.ndarray, classes: np.ndarray, hires: bool = False
) -> np.ndarray:
    """Grad-CAM as the Keras example computes it: the softmax taken off, one GradientTape."""
    import keras
    import tensorflow as tf

    model.layers[-1].activation = keras.activations.linear
    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    x = tf.constant(images[..., None] / 255, tf.float32)
    with tf.GradientTape() as tape:
        maps, logits = grad_model(x)
        score = tf.reduce_sum(logits * tf.one_hot(classes, logits.shape[-1]))
    grads = tape.gradient(score, maps)
    weights = grads if hires else tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))
    return tf.image.resize(cam[..., None], images.shape[1:3]).numpy()[..., 0]  # type: ignore[no-any-return]


def test_grad_cam_equals_a_direct_gradient_tape(server, models_dir: Path, test_images) -> None:
    images = test_images.images[:12]  # the graph's fixed batch is 8: padded to two
    with Client(server.target) as client:
        result = client.explain(images, model="cam")
        predicted = client.predict(images, model="cam")
        features = client.feature_map(images, model="cam", layer="conv2d_1").activations
    assert result.layer.name == "conv2d_1"  # the last conv layer by default
    assert result.heatmaps.shape == (12, 28, 28) and result.heatmaps.dtype == np.float32
    assert (result.heatmaps >= 0).all() and (result.heatmaps.max(axis=(1, 2)) > 0).all()
    np.testing.assert_array_equal(result.classes, predicted.labels)
    np.testing.assert_allclose(result.probabilities, predicted.probabilities, atol=1e-5)
    expected = tape_cam(_keras(models_dir, "cam"), "conv2d_1", images, result.classes)
    np.testing.assert_allclose(result.heatmaps, expected, rtol=1e-4, atol=1e-6)

    # Behind global average pooling, Grad-CAM is CAM: the dense weights of the class over the
    # channels (Zhou et al. 2016), divided by the H x W positions averaged.
    import tensorflow as tf

    kernel = _keras(models_dir, "cam").layers[-1].get_weights()[0]  # [channels, classes]
    cam = np.maximum(np.einsum("nhwk,kn->nhw", features, kernel[:, result.classes]), 0) / 14**2
    resized = tf.image.resize(cam[..., None], (28, 28)).numpy()[..., 0]
    np.testing.assert_allclose(result.heatmaps, resized, rtol=1e-4, atol=1e-6)


def test_a_chosen_class_layer_and_method(server, models_dir: Path, test_images) -> None:
    images = test_images.images[:4]
    with Client(server.target) as client:
        trousers = client.explain(images, model="fashion", class_index=1, method="hirescam")
        grad_cam = client.explain(images, model="fashion", class_index=1, method="gradcam")
        first = client.explain(images, model="cam", layer="conv2d", method="hirescam")
        pooled = client.explain(images, model="layers", layer="conv2d", method="gradcam")
    assert list(trousers.classes) == [1, 1, 1, 1] and trousers.method == "hirescam"
    expected = tape_cam(_keras(models_dir, "fashion"), "conv2d", images, trousers.classes, True)
    np.testing.assert_allclose(trousers.heatmaps, expected, rtol=1e-4, atol=1e-6)
    assert trousers.heatmaps.max() > 0
    expected = tape_cam(_keras(models_dir, "fashion"), "conv2d", images, trousers.classes)
    np.testing.assert_allclose(grad_cam.heatmaps, expected, rtol=1e-4, atol=1e-6)
    # The first of two convs: its gradient goes back through the second conv and its ReLU.
    assert first.layer.name == "conv2d" and first.heatmaps.shape == (4, 28, 28)
    expected = tape_cam(_keras(models_dir, "cam"), "conv2d", images, first.classes, True)
    np.testing.assert_allclose(first.heatmaps, expected, rtol=1e-4, atol=1e-6)
    # Back through max pooling, a strided conv and a dilated tanh conv.
    expected = tape_cam(_keras(models_dir, "layers"), "conv2d", images, pooled.classes)
    np.testing.assert_allclose(pooled.heatmaps, expected, rtol=1e-4, atol=1e-6)


def test_the_default_method_shows_evidence_for_each_head(server, test_images) -> None:
    """Behind Flatten + Dense, Grad-CAM's mean gradients cancel out and often show nothing;
    the default there is HiResCAM, behind global average pooling Grad-CAM."""
    images = test_images.images[:16]
    with Client(server.target) as client:
        flatten = client.explain(images, model="fashion")
        pooled = client.explain(images, model="cam")
    assert (flatten.method, pooled.method) == ("hirescam", "gradcam")
    for result in (flatten, pooled):
        assert (result.heatmaps.max(axis=(1, 2)) > 0).mean() >= 0.9


def test_without_a_gradient_graph_occlusion_explains(
    models_dir: Path, tmp_path: Path, test_images
) -> None:
    """A version whose gradients did not export: the gradient methods say so and point to
    occlusion, which is the default, in Explain and in V2's outputs."""
    import json
    import shutil

    from service.settings import Settings
    from tests.conftest import serving

    version = tmp_path / "fashion" / "1"
    shutil.copytree(models_dir / "fashion" / "1", version)
    (version / "explain.onnx").unlink()
    metadata = json.loads((version / "metadata.json").read_text())
    metadata["files"] = [f for f in metadata["files"] if f["path"] != "explain.onnx"]
    (version / "metadata.json").write_text(json.dumps(metadata))
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, models_dir=tmp_path)
    images = test_images.images[:2]
    with serving(settings) as server, Client(server.target) as client:
        result = client.explain(images)
        with pytest.raises(InvalidArgument, match=r"has hirescam for no layer .* method occlusion"):
            client.explain(images, method="hirescam")
        metadata_outputs = [o.name for o in client.metadata().layers]  # still serving
    assert result.method == "occlusion" and result.heatmaps.shape == (2, 28, 28)
    assert metadata_outputs


def test_occlusion_is_the_probability_lost_under_a_patch(
    server, models_dir: Path, test_images
) -> None:
    """Recomputed here with Keras: 7x7 patches (a quarter of 28) 3 pixels apart (the last
    flush with the edge), each pixel's heat the mean drop over the patches covering it."""
    images = test_images.images[:2]
    with Client(server.target) as client:
        result = client.explain(images, model="layers", method="occlusion", class_index=4)
    assert result.method == "occlusion" and result.layer is None
    keras_model = _keras(models_dir, "layers")
    probabilities = keras_model.predict(images[..., None] / 255, verbose=0)[:, 4]
    starts = [0, 3, 6, 9, 12, 15, 18, 21]
    expected = np.zeros((2, 28, 28))
    for index, image in enumerate(images):
        heat, count = np.zeros((28, 28)), np.zeros((28, 28))
        for top in starts:
            for left in starts:
                occluded = image.astype(np.float32)
                occluded[top : top + 7, left : left + 7] = 0
                after = keras_model.predict(occluded[None, ..., None] / 255, verbose=0)[0, 4]
                heat[top : top + 7, left : left + 7] += probabilities[index] - after
                count[top : top + 7, left : left + 7] += 1
        expected[index] = np.maximum(heat / count, 0)
    np.testing.assert_allclose(result.heatmaps, expected, atol=1e-5)
    assert result.heatmaps.max() > 0


async def test_async_client(server, test_images: Dataset) -> None:
    async with AsyncClient(server.target) as client:
        result = await client.explain(test_images.images[:2], model="cam", class_index=3)
        filters = await client.filters(model="cam")
    assert list(result.classes) == [3, 3] and result.class_names[3] == "Dress"
    assert filters.kernels.shape == (3, 3, 1, 6)


def test_filters_are_the_saved_kernels_and_biases(server, models_dir: Path) -> None:
    saved = _keras(models_dir, "layers")
    with Client(server.target) as client:
        first = client.filters(model="layers")
        third = client.filters("conv2d_2", model="layers")
    kernel, bias = saved.get_layer("conv2d").get_weights()
    assert first.layer.name == "conv2d" and first.kernels.shape == (3, 3, 1, 4)
    np.testing.assert_array_equal(first.kernels, kernel)
    np.testing.assert_array_equal(first.biases, bias)
    assert third.kernels.shape == (2, 2, 4, 3) and third.layer.dilation_rate == (2, 2)
    np.testing.assert_array_equal(third.kernels, saved.get_layer("conv2d_2").get_weights()[0])


def test_errors_say_what_was_expected(server, test_images: Dataset) -> None:
    images = test_images.images[:1]
    with Client(server.target) as client:
        with pytest.raises(
            InvalidArgument, match=r"class_index 10: model 'fashion' has 10 classes"
        ):
            client.explain(images, class_index=10)
        with pytest.raises(InvalidArgument, match=r"class_index -1"):
            client.explain(images, class_index=-1)
        with pytest.raises(NotFound, match="has no 4-D output at layer 'flatten'"):
            client.explain(images, model="layers", layer="flatten")
        with pytest.raises(NotFound, match="no conv layer 'max_pooling2d'; conv layers: conv2d, "):
            client.filters("max_pooling2d", model="layers")
        with pytest.raises(InvalidArgument, match="occlusion explains the image, not a layer"):
            client.explain(images, layer="conv2d", method="occlusion")
        with pytest.raises(ValueError, match="method 'lime'"):
            client.explain(images, method="lime")
        assert client.explain(images).heatmaps.shape == (1, 28, 28)  # still serving
    with grpc.insecure_channel(server.target) as channel:
        request = pb.ExplainRequest(
            images=pb.Images(tensor=pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[1, 28, 28],
                                              content=images.tobytes())),
            method=7,  # type: ignore[arg-type]
        )  # fmt: skip
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.ConvServeStub(channel).Explain(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "method 7: expected one of EXPLAIN_METHOD_GRAD_CAM" in caught.value.details()


def _cam_request(images: np.ndarray, *outputs: Any) -> v2.ModelInferRequest:
    request = infer_request(images, outputs=outputs)
    request.model_name = "cam"
    return request


def test_v2_explain_outputs(server, test_images: Dataset) -> None:
    images = test_images.images[:3]
    output = v2.ModelInferRequest.InferRequestedOutputTensor
    gradcam = output(name="gradcam")
    hirescam = output(name="hirescam")
    hirescam.parameters["layer"].string_param = "conv2d"
    hirescam.parameters["class_index"].int64_param = 2
    occlusion = output(name="occlusion")
    with grpc.insecure_channel(server.target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(v2.ModelMetadataRequest(name="cam"))
        response = stub.ModelInfer(_cam_request(images, gradcam, hirescam, occlusion))
        misspelt = output(name="gradcam")
        misspelt.parameters["class"].int64_param = 2
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_cam_request(images, misspelt))
    assert {name: [-1, 28, 28] for name in ("gradcam", "hirescam", "occlusion")}.items() <= {
        t.name: list(t.shape) for t in metadata.outputs
    }.items()
    with Client(server.target) as client:
        expected_grad = client.explain(images, model="cam").heatmaps
        expected_hires = client.explain(
            images, model="cam", layer="conv2d", class_index=2, method="hirescam"
        ).heatmaps
        expected_occlusion = client.explain(images, model="cam", method="occlusion").heatmaps
    arrays = [output_array(response, index) for index in range(len(response.outputs))]
    assert [t.name for t in response.outputs] == ["gradcam", "hirescam", "occlusion"]
    np.testing.assert_allclose(arrays[0], expected_grad, atol=1e-6)
    np.testing.assert_allclose(arrays[1], expected_hires, atol=1e-6)
    np.testing.assert_allclose(arrays[2], expected_occlusion, atol=1e-6)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameter 'class' (int64_param) is not one it takes" in caught.value.details()
