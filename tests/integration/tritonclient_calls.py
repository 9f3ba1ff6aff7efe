"""tritonclient's calls against a convserve server, printed as one JSON object.

Run by test_tritonclient.py in a process of its own: tritonclient's stubs and convserve's
both define the `inference` protobuf package, and one process's descriptor pool cannot
hold both. Usage: python tritonclient_calls.py TARGET IMAGES
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from convserve.fashion_mnist import load
from tests.integration.descriptors import fields


def images_input(images: np.ndarray, datatype: str) -> Any:
    tensor = triton.InferInput("images", list(images.shape), datatype)
    tensor.set_data_from_numpy(images)
    return tensor


def error(call: Any) -> dict[str, str]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": str(exc.message())}
    return {}


def main(target: str, count: int) -> None:
    client = triton.InferenceServerClient(target)
    images = load("test", limit=count).images
    out: dict[str, Any] = {
        "fields": {
            name: entry
            for message in service_pb2.DESCRIPTOR.message_types_by_name.values()
            for name, entry in fields(message).items()
        },
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("fashion"),
        "unknown_model_ready": client.is_model_ready("nope"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata("layers", as_json=True),
        "index": client.get_model_repository_index(as_json=True),
    }
    for dtype, datatype in (("uint8", "UINT8"), ("float32", "FP32")):
        result = client.infer("fashion", [images_input(images.astype(dtype), datatype)])
        out[f"probabilities_{dtype}"] = result.as_numpy("probabilities").tolist()
    wanted = [triton.InferRequestedOutput("conv2d_1"), triton.InferRequestedOutput("probabilities")]
    result = client.infer("layers", [images_input(images[:4], "UINT8")], outputs=wanted)
    out["feature_map"] = result.as_numpy("conv2d_1").tolist()
    out["layers_probabilities"] = result.as_numpy("probabilities").tolist()
    cam = triton.InferRequestedOutput("gradcam")
    cam._output.parameters["class_index"].int64_param = 1  # tritonclient has no setter for it
    result = client.infer("cam", [images_input(images[:4], "UINT8")], outputs=[cam])
    out["gradcam"] = result.as_numpy("gradcam").tolist()
    out["unknown_model"] = error(lambda: client.infer("nope", [images_input(images, "UINT8")]))
    out["bad_datatype"] = error(
        lambda: client.infer("fashion", [images_input(images.astype(np.int32), "INT32")])
    )

    streamed: list[Any] = []
    client.start_stream(callback=lambda result, error: streamed.append((result, error)))
    for index, model in enumerate(("fashion", "nope", "fashion")):
        batch = images[2 * index : 2 * index + 2]
        client.async_stream_infer(model, [images_input(batch, "UINT8")], request_id=str(index))
    client.stop_stream()  # waits for every answer
    out["stream"] = [
        {"id": result.get_response().id, "probabilities": result.as_numpy("probabilities").tolist()}
        if exc is None
        else {"error": str(exc.message())}
        for result, exc in streamed
    ]
    client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
