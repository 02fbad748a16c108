"""Colour metric helpers (`learned.fidelity`) and the bundled checkpoint's colour safety on photos."""

import math

import numpy as np
import pytest

from resize_pipeline.learned import fidelity as fd


def test_channel_spread_known_values():
    grey = np.full((4, 5, 3), 77, np.uint8)
    assert fd.channel_spread(grey) == 0.0
    img = grey.copy()
    img[0, 0] = (10, 200, 50)  # one pixel with spread 190 among 20
    assert fd.channel_spread(img) == pytest.approx(190 / 20)
    img[..., 2] = 87  # blue +10 everywhere else too
    assert fd.channel_spread(img) == pytest.approx((19 * 10 + 190) / 20)
    with pytest.raises(ValueError, match="RGB"):
        fd.channel_spread(np.zeros((4, 4), np.uint8))


def test_to_grey_rgb_is_grey(photo):
    g = fd.to_grey_rgb(photo)
    assert g.shape == photo.shape and g.dtype == np.uint8
    assert fd.channel_spread(g) == 0.0 and fd.channel_spread(photo) > 10


def test_gaussian_kernel_and_blur():
    k = fd.gaussian_kernel(2.0)
    assert len(k) == 17 and k.sum() == pytest.approx(1.0) and k.argmax() == 8
    flat = np.full((20, 30, 3), 100.0)
    np.testing.assert_allclose(fd.gaussian_blur(flat, 2.0), flat)  # DC passes unchanged
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 20, (64, 64))
    assert fd.gaussian_blur(noise, 2.0).std() < 0.2 * noise.std()  # white noise mostly removed
    tiny = rng.normal(0, 1, (3, 3, 3))  # smaller than the kernel radius: still works
    assert fd.gaussian_blur(tiny, 2.0).shape == tiny.shape
    with pytest.raises(ValueError):
        fd.gaussian_kernel(0)


def test_psnr_and_lowpass_psnr():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (48, 48, 3)).astype(np.uint8)
    assert math.isinf(fd.psnr(a, a))
    b = np.clip(a.astype(int) + 5, 0, 255).astype(np.uint8)
    # a uniform +5 shift (minus clipping) is a low-frequency error: it survives the blur
    assert fd.lowpass_psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25), abs=1.0)
    # zero-mean fine noise is (mostly) not a low-frequency error
    c = np.clip(a.astype(int) + rng.choice([-20, 20], a.shape), 0, 255).astype(np.uint8)
    assert fd.psnr(a, c) < 25 and fd.lowpass_psnr(a, c) > 35
    with pytest.raises(ValueError, match="shapes"):
        fd.psnr(a, a[:10])


def test_fidelity_report_on_classical_resizers(photos):
    from resize_pipeline.resize.classical import ClassicalResizer

    pics = [(n, photos[n]) for n in ("astronaut", "coffee")]
    rep = fd.fidelity_report(ClassicalResizer("bicubic"), pics, size=64)
    assert rep["images"] == 2 and rep["grey_spread"]["max"] == 0.0 and rep["grey_spread_max"] == 0
    assert 40 < rep["lowpass_psnr"]["median"] < math.inf
    same = fd.fidelity_report(ClassicalResizer("bilinear"), pics, size=64)
    assert math.isinf(same["lowpass_psnr"]["median"])
    assert "grey spread" in fd.format_fidelity(rep)


def test_heldout_photos_are_augmented_and_seeded():
    a = fd.heldout_photos(3)
    b = fd.heldout_photos(3)
    c = fd.heldout_photos(3, seed=1)
    assert [n for n, _ in a] == [n for n, _ in b]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
    assert any(x.shape != y.shape for (_, x), (_, y) in zip(a, c, strict=True))
    assert all(img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 for _, img in a)


# --- the bundled checkpoint on real photos ----------------------------------------------------------


@pytest.fixture(scope="module")
def bundled():
    from resize_pipeline.learned.inference import LearnedResizer, default_weights_path

    if not (default_weights_path() / "config.json").exists():
        pytest.skip("bundled checkpoint not built yet")
    return LearnedResizer(None, device="cpu")  # precision "auto": what convert uses on this CPU


def test_bundled_greyscale_stays_grey_on_real_photos(bundled, photos):
    from resize_pipeline.geometry import plan_resize

    for name, img in photos.items():
        grey = fd.to_grey_rgb(img)
        for size, mode in (((224, 224), "center-crop"), ((96, 64), "stretch")):
            out = bundled.resize([grey], [plan_resize(img.shape[1], img.shape[0], size, mode)])[0]
            assert fd.channel_spread(out) <= 2.0, (name, size)
            assert fd.channel_spread(out) == 0.0, (name, size)  # exactly, by construction


def test_bundled_low_frequencies_match_bilinear(bundled, photos):
    pics = [(n, photos[n]) for n in ("astronaut", "coffee", "chelsea", "hubble_deep_field")]
    rep = fd.fidelity_report(bundled, pics, size=224)
    assert rep["lowpass_psnr"]["median"] >= 30.0, rep["lowpass_psnr"]
    assert all(abs(v) < 2.0 for row in rep["rows"] for v in row["mean_shift"])  # no colour cast


def test_bundled_note_describes_the_checkpoint():
    from resize_pipeline.learned import BUNDLED_DIR, bundled_note

    note = bundled_note()
    assert "\n" not in note and "synthetic" in note
    if (BUNDLED_DIR / "config.json").exists():
        import json

        meta = json.loads((BUNDLED_DIR / "config.json").read_text())
        assert meta["sha256"][:12] in note and meta["architecture"] in note
        if meta["config"].get("residual", "rgb") != "rgb":
            assert "colour-safe" in note
