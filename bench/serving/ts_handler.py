"""TorchServe handler for the CPU comparison: JSON rows in, probabilities out, one forward pass per batch."""

import torch
from ts.torch_handler.base_handler import BaseHandler


class BenchHandler(BaseHandler):
    """Same work as the pod's tabular handler: stack every request's rows, run once, split."""

    def preprocess(self, data):
        rows = [row.get("body") or row.get("data") for row in data]
        self.sizes = [len(r) for r in rows]
        return torch.tensor([x for r in rows for x in r], dtype=torch.float32)

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return self.model(data)

    def postprocess(self, data):
        out, start = [], 0
        for size in self.sizes:
            out.append(data[start:start + size].tolist())
            start += size
        return out
