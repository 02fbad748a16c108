"""The GPU path's device, stream and event logic, run on the CPU against a fake of `torch.cuda` (a
per-thread current device and stream, streams and events that remember their device and what
waited on what) and a fake DALI GPU output. What only a GPU can check (the bytes, the speed) is in
the ``gpu``-marked tests; what is checked here is the contract of each call:

- on ``cuda:1`` every stream and event is on GPU 1, in every thread that does GPU work (the decode
  step and the resize step run in different threads, each starting on device 0);
- DALI's outputs are taken with ``outputs(cuda_stream=<the decode stream>)`` and copied into torch
  memory with DALI's ``feed_ndarray(..., cuda_stream=<the decode stream>)`` (no host wait);
- the compute stream waits for an event recorded on the decode stream (a GPU-side wait), the CNN and
  the device-to-host copy run on the compute stream, and the only host wait is one *blocking* event
  recorded on the compute stream after the copy;
- nothing calls ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import contextlib
import io
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from resize_pipeline.batch import items_to_batch, objects  # noqa: E402
from resize_pipeline.decode.dali import DaliDecoder  # noqa: E402
from resize_pipeline.decode.probe import probe  # noqa: E402
from resize_pipeline.sources.base import SourceItem  # noqa: E402


class FakeStream:
    def __init__(self, device: int, name: str) -> None:
        self.device_index, self.name = device, name
        self.waited: list[FakeEvent] = []
        self.device = torch.device("cuda", device)
        self.cuda_stream = id(self)

    def wait_event(self, event) -> None:
        assert event.recorded_on is not None, "waiting on an event that was never recorded"
        self.waited.append(event)

    def __repr__(self) -> str:
        return f"<stream {self.name} on cuda:{self.device_index}>"


class FakeEvent:
    def __init__(self, cuda, blocking: bool = False, **_) -> None:
        self.cuda, self.blocking = cuda, blocking
        self.recorded_on: FakeStream | None = None
        self.synchronized = 0

    def record(self, stream=None) -> None:
        self.recorded_on = stream if stream is not None else self.cuda.current_stream()

    def synchronize(self) -> None:
        assert self.recorded_on is not None
        self.synchronized += 1
        self.cuda.host_waits.append(self)


class FakeCuda:
    """What the GPU path calls of `torch.cuda`, with per-thread state as CUDA has it."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.defaults: dict[int, FakeStream] = {}
        self.streams: list[FakeStream] = []
        self.events: list[FakeEvent] = []
        self.host_waits: list[FakeEvent] = []
        self.synchronize_calls = 0

    def _state(self):
        if not hasattr(self.local, "device"):
            self.local.device, self.local.streams = 0, {}  # a new thread starts on device 0
        return self.local

    @staticmethod
    def _index(device) -> int:
        if device is None:
            return -1
        if isinstance(device, int):
            return device
        d = torch.device(device)
        return d.index if d.index is not None else 0

    def current_device(self) -> int:
        return self._state().device

    def set_device(self, device) -> None:
        self._state().device = self._index(device)

    def current_stream(self, device=None) -> FakeStream:
        st = self._state()
        i = st.device if device is None else self._index(device)
        return st.streams.get(i) or self.defaults.setdefault(i, FakeStream(i, "default"))

    def Stream(self, device=None, priority=0):  # noqa: N802 - torch's name
        s = FakeStream(self._state().device if device is None else self._index(device), f"s{len(self.streams)}")
        self.streams.append(s)
        return s

    def Event(self, enable_timing=False, blocking=False, interprocess=False):  # noqa: N802
        e = FakeEvent(self, blocking=blocking)
        self.events.append(e)
        return e

    @contextlib.contextmanager
    def device(self, device):
        st = self._state()
        old, st.device = st.device, self._index(device)
        try:
            yield
        finally:
            st.device = old

    @contextlib.contextmanager
    def stream(self, stream):
        st = self._state()
        old_dev, old = st.device, st.streams.get(stream.device_index)
        st.device, st.streams[stream.device_index] = stream.device_index, stream
        try:
            yield
        finally:
            st.device = old_dev
            if old is None:
                st.streams.pop(stream.device_index, None)
            else:
                st.streams[stream.device_index] = old

    def synchronize(self, device=None) -> None:
        self.synchronize_calls += 1


@pytest.fixture
def cuda(monkeypatch) -> FakeCuda:
    fake = FakeCuda()
    for name in ("current_device", "set_device", "current_stream", "Stream", "Event", "device", "stream",
                 "synchronize"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    real_empty = torch.empty

    def empty(*shape, device=None, pin_memory=False, **kw):  # GPU and pinned buffers are host memory here
        return real_empty(*shape, **kw)

    monkeypatch.setattr(torch, "empty", empty)
    return fake


# -- a DALI GPU output, and the pipeline that returns it ------------------------------------------------
class FakeTensorGPU:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def shape(self) -> list[int]:
        return list(self.array.shape)


class FakeTensorListGPU:
    """What ``Pipeline.outputs`` gives on a GPU: samples of (h, w, 3) uint8."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays

    def is_dense_tensor(self) -> bool:
        return len({a.shape for a in self.arrays}) == 1

    def as_tensor(self) -> FakeTensorGPU:
        return FakeTensorGPU(np.stack(self.arrays))

    def shape(self) -> list[tuple]:
        return [a.shape for a in self.arrays]

    def __getitem__(self, k: int) -> FakeTensorGPU:
        return FakeTensorGPU(self.arrays[k])

    def __len__(self) -> int:
        return len(self.arrays)

    def copy_to_external(self, ptr, stream=None, non_blocking=False, use_copy_kernel=False):  # the old hand-off
        raise AssertionError(f"a hand-off by hand (non_blocking={non_blocking}), not DALI's feed_ndarray")


class FakePipeline:
    """Decodes nothing: each sample comes out at its requested size, filled with a value made from its
    bytes; remembers the stream each ``outputs`` call was given."""

    def __init__(self, cuda: FakeCuda, log: list) -> None:
        self.cuda, self.log, self.fed, self.runs = cuda, log, {}, []

    def feed_input(self, name, data, *a, **kw) -> None:
        self.fed[name] = data

    def schedule_run(self) -> None:
        blobs, sizes = self.fed.get("blobs") or self.fed["images"], self.fed["size"]
        self.runs.append([np.full((int(s[0]), int(s[1]), 3), len(b) % 251, np.uint8)
                          for b, s in zip(blobs, sizes, strict=True)])

    def outputs(self, cuda_stream=None):
        self.log.append(("outputs", cuda_stream, self.cuda.current_device()))
        return (FakeTensorListGPU(self.runs.pop(0)),)


class FakeResizer:
    """The CNN: (B, 3, H, W) uint8 -> (B, 3, h, w) uint8; remembers its device and stream."""

    input_scale = 2.0

    def __init__(self, cuda: FakeCuda, log: list) -> None:
        self.cuda, self.log = cuda, log

    def input_size(self, size):
        return size[0] * 2, size[1] * 2

    def path_for(self, n, in_hw, out_hw):
        return "cuda-graph"

    def resize_tensor(self, t, size):
        self.log.append(("cnn", self.cuda.current_device(), self.cuda.current_stream()))
        w, h = size
        y = torch.nn.functional.interpolate(t.float(), size=(h, w), mode="area").round().to(torch.uint8)
        return y.contiguous(memory_format=torch.channels_last)

    def describe(self):
        return {"name": "fake"}


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (60 + seed, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _batch(blobs):
    b = items_to_batch([SourceItem(f"k{i}", f"mem://{i}.jpg") for i in range(len(blobs))])
    b["data"] = objects(blobs)
    b["probe"] = objects([probe(x) for x in blobs])
    return b


def _on_thread(fn, *args):
    """Run `fn` on a new thread (as the overlapped stream does; it starts on device 0)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    t.join()
    return out[0]


@pytest.mark.parametrize("learned", [True, False])
def test_cuda_n_streams_and_events_on_gpu_n_in_every_thread(cuda, monkeypatch, learned):
    import nvidia.dali.plugin.pytorch as dali_torch_plugin

    from resize_pipeline.stages_fused import FusedDecodeResizeStage

    log: list = []
    copies: list = []

    def feed_ndarray(dali_tensor, arr, cuda_stream=None):
        copies.append((cuda_stream, cuda.current_device()))
        arr.copy_(torch.from_numpy(dali_tensor.array).reshape(arr.shape))
        return arr

    monkeypatch.setattr(dali_torch_plugin, "feed_ndarray", feed_ndarray)
    dec = DaliDecoder(device="cpu", batch_size=8, num_threads=1)
    dec.mode, dec.name, dec.device_id = "mixed", "dali-mixed", 1
    dec._build = lambda kind: FakePipeline(cuda, log)
    dec._pipes.clear()
    stage = _on_thread(lambda: FusedDecodeResizeStage(dec, FakeResizer(cuda, log) if learned else None,
                                                      size=(16, 12), mode="center-crop", pad_color=(0, 0, 0)))
    blobs = [_jpeg(i) for i in range(5)]
    # the stream's threads: decode (submit/finish) in one, resize (resize_submit/finish) in another
    tokens = [_on_thread(stage.submit, _batch(blobs)) for _ in range(2)]  # batch 1 submitted before 0 finishes
    decoded = [_on_thread(stage.finish, tok) for tok in tokens]
    launched = [_on_thread(stage.resize_submit, b) for b in decoded]
    out = [_on_thread(stage.resize_finish, tok) for tok in launched]

    lane = stage.lane
    assert {s.device_index for s in cuda.streams} == {1}  # cuda:1 means GPU 1: no stream on GPU 0
    assert {e.recorded_on.device_index for e in cuda.events} == {1}
    assert all(d == 1 for kind, *rest, d in [x for x in log if x[0] == "outputs"])
    # DALI's outputs bound to the decode stream, copied with feed_ndarray on it, on GPU 1
    assert [x[1] for x in log if x[0] == "outputs"] == [lane.decode] * 2
    assert copies and all(c == (lane.decode, 1) for c in copies)
    if learned:  # the CNN ran on GPU 1's compute stream, in the resize thread
        assert [x[1:] for x in log if x[0] == "cnn"] == [(1, lane.compute)] * 2
    # the compute stream waited (on the GPU) for the hand-off events recorded on the decode stream
    assert len(lane.compute.waited) == 2 and all(e.recorded_on is lane.decode for e in lane.compute.waited)
    # the host waited only on blocking events recorded on the compute stream, one per batch
    assert len(cuda.host_waits) == 2
    assert all(e.blocking and e.recorded_on is lane.compute for e in cuda.host_waits)
    assert cuda.synchronize_calls == 0
    for b in out:
        imgs = [b["image"][i] for i in range(5)]
        assert all(isinstance(a, np.ndarray) and a.shape == (12, 16, 3) for a in imgs)
        assert list(b["decoded_by"]) == ["dali-mixed"] * 5
        if learned:
            assert list(b["resized_by"]) == ["cuda-graph"] * 5
    # the pixels are the DALI output's (the fake fills each sample with a value of its bytes)
    assert [int(out[0]["image"][i][0, 0, 0]) for i in range(5)] == [len(b) % 251 for b in blobs]
