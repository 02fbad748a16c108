"""JPEG through OpenCV writes the same bytes as through Pillow (both libjpeg-turbo with its defaults),
so the fast, GIL-free codec changes no output; PNG/WebP/npy are unchanged."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from resize_pipeline.encode import Encoder, decode_payload

cv2 = pytest.importorskip("cv2")


def _cases(photos, n=300, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    pics = list(photos.values())
    for t in range(n):
        w, h = int(rng.integers(1, 520)), int(rng.integers(1, 520))
        if t % 3 == 0:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noise: the worst case for a codec
        else:
            img = np.asarray(Image.fromarray(pics[t % len(pics)]).resize((w, h)))
        if t % 5 == 0:
            img = img[:, ::-1]  # not C-contiguous, as a view of a bigger array would be
        yield img, int(rng.integers(1, 101))


def test_opencv_jpeg_bytes_equal_pillow(photos):
    for img, q in _cases(photos):
        a = Encoder("jpg", q, "pillow").encode(img)
        b = Encoder("jpg", q, "opencv").encode(img)
        assert a == b, (img.shape, q)


def test_auto_prefers_opencv_and_round_trips(photo):
    enc = Encoder("jpg", 95)
    assert enc.describe() == {"format": "jpg", "quality": 95, "backend": "opencv"}
    img = np.ascontiguousarray(photo[:224, :224])
    back = decode_payload(enc.encode(img), "jpg")
    assert back.shape == img.shape and np.abs(back.astype(int) - img).mean() < 3
    clone = pickle.loads(pickle.dumps(enc))  # Ray ships stages to actors
    assert clone.encode(img) == enc.encode(img)


def test_non_rgb_images_go_to_pillow(photo):
    gray = np.ascontiguousarray(photo[:64, :64, 0])
    assert Encoder("jpg", 90, "opencv").encode(gray) == Encoder("jpg", 90, "pillow").encode(gray)


@pytest.mark.parametrize("fmt", ["png", "webp", "npy"])
def test_other_formats_keep_their_codec(photo, fmt):
    enc = Encoder(fmt, 90, "opencv")
    assert enc.backend in ("pillow", "numpy")
    img = np.ascontiguousarray(photo[:32, :48])
    assert decode_payload(enc.encode(img), fmt).shape == img.shape


def test_bad_backend_is_refused():
    with pytest.raises(ValueError, match="opencv, pillow"):
        Encoder("jpg", 95, "simplejpeg")
