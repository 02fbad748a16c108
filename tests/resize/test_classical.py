import numpy as np
import pytest
from helpers_images import psnr
from PIL import Image

from resize_pipeline.geometry import plan_resize
from resize_pipeline.resize import FILTERS, ClassicalResizer, get_resizer
from resize_pipeline.stages import ResizeStage


@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("mode", ["stretch", "center-crop", "shorter-side"])
def test_matches_pillow_resize_of_the_same_image(photo, name, mode):
    """Same decoded image, same filter: our output agrees with Pillow's own resize (PSNR >= 35 dB)."""
    img = photo[:400, :300]  # non-square
    op = plan_resize(300, 400, (96, 96), mode)
    ours = ClassicalResizer(name).resize([img], [op])[0]
    pil = Image.fromarray(img)
    if mode == "center-crop":  # the textbook way: shorter side to 96, then centre crop
        short = pil.resize((96, 128), FILTERS[name])
        ref = np.asarray(short.crop((0, 16, 96, 112)))
    else:
        ref = np.asarray(pil.resize(op.size, FILTERS[name]))
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    assert psnr(ours, ref) >= 35, psnr(ours, ref)
    if mode != "center-crop":
        assert psnr(ours, ref) == float("inf")  # identical call, identical bytes


def test_mixed_sizes_in_one_batch(photos):
    imgs = [photos["astronaut"], photos["coffee"], photos["chelsea"][:10, :7]]
    ops = [plan_resize(i.shape[1], i.shape[0], (64, 48), "stretch") for i in imgs]
    outs = get_resizer("bicubic").resize(imgs, ops)
    assert [o.shape for o in outs] == [(48, 64, 3)] * 3


def test_pad_mode_fills_letterbox(photo):
    stage = ResizeStage(get_resizer("bilinear"), size=(64, 64), mode="pad", pad_color=(10, 20, 30))
    wide = photo[:100, :400]
    batch = {"image": np.array([wide, None], dtype=object)[:1], "error": np.array([""], dtype=object),
             "error_stage": np.array([""], dtype=object), "error_type": np.array([""], dtype=object),
             "url": np.array(["x"], dtype=object)}
    out = stage(batch)["image"][0]
    assert out.shape == (64, 64, 3)
    assert (out[0, 0] == [10, 20, 30]).all() and (out[-1, -1] == [10, 20, 30]).all()
    assert out[32].std() > 5  # the photo is in the middle band


def test_unknown_resizer():
    with pytest.raises(ValueError, match="lanczos"):
        get_resizer("fancy")
