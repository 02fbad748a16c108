"""DALI's GPU output handed to torch: `to_torch`, on torch's current stream, without a host wait."""

from __future__ import annotations

import numpy as np


def to_torch(out, device_id: int | None) -> list:
    """A DALI GPU batch (``TensorListGPU``, bound to torch's current stream by ``outputs(cuda_stream=)``)
    -> one (3, h, w) uint8 CUDA tensor per sample, views of one torch buffer (samples back to back,
    HWC memory: `stages_fused.stack_views` re-stacks equal shapes without a copy).

    The copy is DALI's PyTorch plugin's ``feed_ndarray(dali_tensor, torch_tensor, cuda_stream=s)``
    (`nvidia/dali/plugin/pytorch/torch_utils.py`: non-blocking when a stream is given): one copy for a
    dense batch (every sample the same shape: the fixed-size modes), one per sample otherwise. The
    buffer is allocated and the copy ordered on torch's current stream: a consumer on another stream
    waits for an event recorded there after this call."""
    import torch
    from nvidia.dali.plugin.pytorch import feed_ndarray

    stream = torch.cuda.current_stream(device_id)
    device = torch.device("cuda", device_id or 0)
    if out.is_dense_tensor():
        dense = out.as_tensor()
        buf = torch.empty(tuple(dense.shape()), dtype=torch.uint8, device=device)
        feed_ndarray(dense, buf, cuda_stream=stream)
        return [buf[k].permute(2, 0, 1) for k in range(buf.shape[0])]
    shapes = [tuple(int(d) for d in s) for s in out.shape()]
    flat = torch.empty(sum(int(np.prod(s)) for s in shapes), dtype=torch.uint8, device=device)
    views, offset = [], 0
    for k, shape in enumerate(shapes):
        size = int(np.prod(shape))
        view = flat[offset : offset + size].view(shape)
        feed_ndarray(out[k], view, cuda_stream=stream)
        views.append(view.permute(2, 0, 1))
        offset += size
    return views
