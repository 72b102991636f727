"""Triton model `image_decoder`: IMAGE (BYTES, an encoded image file) -> pixels (FP32 [3, H,
W]), the first step of the `image_search` ensemble (torch-free). A request with an image that is empty, too
large, not an image or of a refused size gets one error naming it; the others are answered."""
from __future__ import annotations

import json

import numpy as np

from serving.models.common import RequestError, error_response, input_array, parameters
from serving.models.images import ImageDecoder


class TritonPythonModel:
    def initialize(self, args):
        self.decode = ImageDecoder(parameters(args)["image"])
        self.output = json.loads(args["model_config"])["output"][0]["name"]  # the image encoder's input

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils
        responses = []
        for request in requests:
            try:
                images = input_array(request, "IMAGE").reshape(-1)
                pixels = np.stack([self.decode(raw, f"image {i}") for i, raw in enumerate(images)])
            except RequestError as e:
                responses.append(error_response(str(e)))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, pixels)]))
        return responses
