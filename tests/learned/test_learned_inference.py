import numpy as np
import pytest
import torch
from helpers_learned import gpu, needs_cuda, trained_net

from resize_pipeline.geometry import ResizeOp, plan_resize
from resize_pipeline.learned.export import export_resizer, export_torchscript
from resize_pipeline.learned.inference import LearnedResizer, batch_buckets, default_weights_path
from resize_pipeline.resize.base import Resizer


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 64 * 4], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return export_resizer(trained_net(), tmp_path_factory.mktemp("art") / "resizer")


def test_buckets():
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(1) == (1,)


def test_mixed_sizes_exact_uint8(artifact):
    r = LearnedResizer(str(artifact), device="cpu", batch_size=4, precision="fp32")
    assert isinstance(r, Resizer) and r.name == "learned" and r.input_scale == 2.0
    shapes = [(100, 80), (33, 200), (100, 80), (7, 9), (300, 301), (100, 80), (100, 80), (100, 80)]
    images = [_image(h, w, i) for i, (h, w) in enumerate(shapes)]
    modes = ["stretch", "center-crop", "pad", "shorter-side", "longer-side"]
    ops = [plan_resize(img.shape[1], img.shape[0], (24, 16), modes[i % 5]) for i, img in enumerate(images)]
    ops[3] = ResizeOp((0.0, 0.0, 9.0, 7.0), (40, 30))  # upscaling works too
    out = r.resize(images, ops)
    assert len(out) == len(images)
    for o, op in zip(out, ops, strict=True):
        assert o.dtype == np.uint8 and o.shape == (op.size[1], op.size[0], 3) and o.flags.c_contiguous
    # batching / padding does not change results: same as one-by-one
    for img, op, o in zip(images, ops, out, strict=True):
        np.testing.assert_array_equal(r.resize([img], [op])[0], o)
    d = r.describe()
    assert (
        d["name"] == "learned" and len(d["sha256"]) == 64 and d["config"]["architecture"] == "resizer_n16_r1"
    )


def test_close_to_bilinear_when_untrained(tmp_path):
    from PIL import Image

    from resize_pipeline.learned.model import create_resizer

    path = export_resizer(create_resizer().eval(), tmp_path / "zero")  # zero-init last conv = skip only
    r = LearnedResizer(str(path), device="cpu", precision="fp32")
    img = _image(64, 64)
    out = r.resize([img], [ResizeOp((0.0, 0.0, 64.0, 64.0), (16, 16))])[0]
    pre = Image.fromarray(img).resize((32, 32), Image.Resampling.BILINEAR)
    ref = np.asarray(pre.resize((16, 16), Image.Resampling.BOX))  # exact 2x bilinear = 2x2 average
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_resize_tensor_uint8_and_float(artifact):
    r = LearnedResizer(str(artifact), device="cpu", precision="fp32")
    x = torch.from_numpy(np.stack([_image(48, 64, 1), _image(48, 64, 2)])).permute(0, 3, 1, 2)
    a = r.resize_tensor(x, (32, 24))
    b = r.resize_tensor(x.float() / 255, (32, 24))
    assert a.dtype == torch.uint8 and a.shape == (2, 3, 24, 32)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        r.resize_tensor(x[:, :2], (32, 24))


def test_torchscript_module_accepted(tmp_path, artifact):
    ts = export_torchscript(trained_net(), tmp_path / "resizer.ts")
    r_ts = LearnedResizer(str(ts), device="cpu", precision="fp32")
    r_st = LearnedResizer(str(artifact), device="cpu", precision="fp32")
    images = [_image(60, 90), _image(61, 40, 3)]
    ops = [plan_resize(90, 60, (30, 20), "stretch"), plan_resize(40, 61, (30, 20), "center-crop")]
    for a, b in zip(r_ts.resize(images, ops), r_st.resize(images, ops), strict=True):
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert r_ts.describe()["config"]["format"] == "torchscript"


def test_bad_module_output_shape_refused(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return x

    path = tmp_path / "bad.pt"
    torch.jit.save(torch.jit.script(Bad()), str(path))
    r = LearnedResizer(str(path), device="cpu")
    with pytest.raises(ValueError, match="bad.pt.*returned shape"):
        r.resize([_image(20, 20)], [ResizeOp((0.0, 0.0, 20.0, 20.0), (10, 10))])


def test_bundled_default_loads_and_build_resizer():
    if not (default_weights_path() / "config.json").exists():
        pytest.skip("bundled checkpoint not built yet")
    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.pipeline import build_resizer
    from resize_pipeline.preflight import resolve

    cfg = ConvertConfig("/s", "/d", resizer="learned", device="cpu")
    r = build_resizer(cfg, resolve(cfg), "cpu", 1)
    assert isinstance(r, LearnedResizer)
    out = r.resize([_image(120, 90)], [plan_resize(90, 120, (56, 56), "center-crop")])[0]
    assert out.shape == (56, 56, 3) and out.dtype == np.uint8
    assert r.meta["provenance"]["train_config"]["data"] == "synthetic"


def test_cpu_precisions_agree(artifact):
    from resize_pipeline.learned.inference import cpu_has_native_bf16

    images = [_image(90, 120, i) for i in range(3)]
    ops = [plan_resize(120, 90, (40, 30), "center-crop")] * 3
    fp32 = LearnedResizer(str(artifact), device="cpu", precision="fp32").resize(images, ops)
    auto = LearnedResizer(str(artifact), device="cpu")
    assert auto.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    bf16 = LearnedResizer(str(artifact), device="cpu", precision="bf16").resize(images, ops)
    for a, b in zip(fp32, bf16, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 3
    with pytest.raises(ValueError, match="precision"):
        LearnedResizer(str(artifact), device="cpu", precision="int8")


@gpu
@needs_cuda
def test_cuda_matches_cpu(artifact):
    images = [_image(120, 90, i) for i in range(5)]
    ops = [plan_resize(90, 120, (32, 32), "center-crop")] * 5
    cpu = LearnedResizer(str(artifact), device="cpu", precision="fp32").resize(images, ops)
    for precision in ("fp32", "bf16"):
        gpu_r = LearnedResizer(str(artifact), device="cuda", precision=precision)
        for a, b in zip(cpu, gpu_r.resize(images, ops), strict=True):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= (2 if precision == "fp32" else 8)
        x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, device="cuda")
        y = gpu_r.resize_tensor(x, (32, 32))
        assert y.device.type == "cuda" and y.dtype == torch.uint8 and y.shape == (4, 3, 32, 32)


def test_torch_export_program_accepted(tmp_path):
    from resize_pipeline.learned.export import export_program
    from resize_pipeline.learned.folding import fold_batchnorm

    net = trained_net()
    path = export_program(net, tmp_path / "resizer.pt2", input_hw=(40, 60), size_hw=(20, 30))
    r = LearnedResizer(str(path), device="cpu", batch_size=4, precision="fp32")
    assert r.describe()["config"]["format"] == "torch.export"
    images = [_image(80, 120, i) for i in range(3)]  # 3 -> padded to bucket 4: dynamic batch
    ops = [ResizeOp((0.0, 0.0, 120.0, 80.0), (30, 20))] * 3
    out = r.resize(images, ops)
    ref = LearnedResizer(str(export_resizer(net, tmp_path / "st")), device="cpu", precision="fp32")
    ref = ref.resize(images, ops)
    for a, b in zip(out, ref, strict=True):
        assert a.shape == (20, 30, 3) and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="resizer.pt2"):  # shape-specialised: another size is refused
        r.resize(images[:1], [ResizeOp((0.0, 0.0, 120.0, 80.0), (16, 16))])
    assert fold_batchnorm(net) is not None
