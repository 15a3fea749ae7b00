"""KServe Python model server for the CPU comparison (runs in its own virtualenv with kserve installed).

Usage: python kserve_server.py MODEL_PT NAME HTTP_PORT GRPC_PORT
"""

import sys

import kserve
import torch
from kserve import InferOutput, InferRequest, InferResponse


class TorchScriptModel(kserve.Model):
    """Loads the TorchScript file and answers OIP v2 infer requests, one request per forward pass."""

    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self.model = None

    def load(self) -> bool:
        self.model = torch.jit.load(self.path).eval()
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        rows = torch.from_numpy(payload.inputs[0].as_numpy())
        with torch.inference_mode():
            probabilities = self.model(rows).numpy()
        output = InferOutput(name="probabilities", shape=list(probabilities.shape), datatype="FP32",
                             data=probabilities)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[output])


if __name__ == "__main__":
    path, name, http_port, grpc_port = sys.argv[1:5]
    model = TorchScriptModel(name, path)
    model.load()
    kserve.ModelServer(http_port=int(http_port), grpc_port=int(grpc_port), workers=1, enable_grpc=False,
                       enable_latency_logging=False).start([model])
