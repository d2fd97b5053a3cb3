"""CUDA graphs of the fixed-shape network: the backbone and the Monte-Carlo head of one frame as one
graph launch.

A camera's frames all have one size, so the node's network call (`uncertainty.SamplingNetwork`:
images (1, C, h, w) and dropout masks (1, N, F) in, features and N pose samples out) has fixed shapes.
`CudaGraphNetwork` captures it once per input shape (after a few warm-up calls on a side stream, as
torch.cuda.graphs requires) and afterwards copies each frame's inputs into the captured buffers and
replays the graph: no Python, no kernel launch overhead, no host synchronisation. The dropout masks
are drawn outside the graph (a seeded generator per frame, uncertainty.head_dropout_masks), so the
samples equal the eager network's. Autocast inside a captured graph needs `cache_enabled=False`
(the Relocalizer sets it).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from posenet_ros.inference.uncertainty import SamplingNetwork

WARMUP_CALLS = 3
MAX_GRAPHS = 4  # input shapes kept (one per camera resolution in practice)


class CudaGraphNetwork:
    """A SamplingNetwork that runs `network` through CUDA graphs captured per input shape.

    The outputs are copies (the graph's own output buffers are overwritten by the next replay)."""

    def __init__(self, network: SamplingNetwork, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.network = network
        self.device = device
        self._graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, tuple]] = \
            OrderedDict()

    @property
    def captured(self) -> int:
        """How many input shapes have a captured graph."""
        return len(self._graphs)

    def __call__(self, images_BCHW: torch.Tensor, masks_BNF: torch.Tensor):
        key = (tuple(images_BCHW.shape), images_BCHW.dtype, images_BCHW.stride(), tuple(masks_BNF.shape))
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(images_BCHW, masks_BNF)
            self._graphs[key] = entry
            if len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, static_images, static_masks, outputs = entry
        static_images.copy_(images_BCHW)
        static_masks.copy_(masks_BNF)
        graph.replay()
        return tuple(None if output is None else output.clone() for output in outputs)

    def _capture(self, images_BCHW: torch.Tensor, masks_BNF: torch.Tensor):
        static_images = torch.empty_strided(images_BCHW.shape, images_BCHW.stride(), dtype=images_BCHW.dtype,
                                            device=self.device)
        static_images.copy_(images_BCHW)
        static_masks = masks_BNF.to(self.device).clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_CALLS):
                self.network(static_images, static_masks)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = tuple(self.network(static_images, static_masks))
        return graph, static_images, static_masks, outputs
