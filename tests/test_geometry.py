import pytest

from resize_pipeline.geometry import MODES, draft_request, plan_resize


def test_stretch():
    op = plan_resize(640, 480, (224, 160), "stretch")
    assert op.box == (0, 0, 640, 480) and op.size == (224, 160) and op.output_size == (224, 160)


def test_center_crop_keeps_aspect_and_centres():
    op = plan_resize(640, 480, (224, 224), "center-crop")
    assert op.size == (224, 224)
    left, top, right, bottom = op.box
    assert (right - left) == pytest.approx(480) and (bottom - top) == pytest.approx(480)
    assert left == pytest.approx(80) and top == 0


def test_pad_letterboxes():
    op = plan_resize(400, 100, (224, 224), "pad")
    assert op.size == (224, 56) and op.canvas == (224, 224) and op.offset == (0, 84)


@pytest.mark.parametrize("mode,expected", [("shorter-side", (299, 224)), ("longer-side", (224, 168))])
def test_side_modes(mode, expected):
    assert plan_resize(640, 480, (224, 224), mode).size == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("w,h", [(1, 1), (1, 4000), (4000, 1), (3, 5)])
def test_extreme_shapes_give_valid_ops(mode, w, h):
    op = plan_resize(w, h, (64, 64), mode)
    assert op.size[0] >= 1 and op.size[1] >= 1
    left, t, r, b = op.box
    assert 0 <= left < r <= w and 0 <= t < b <= h


def test_unknown_mode():
    with pytest.raises(ValueError, match="center-crop"):
        plan_resize(10, 10, (5, 5), "zoom")


def test_draft_request_keeps_margin():
    op = plan_resize(4000, 3000, (224, 224), "center-crop")
    w, h = draft_request(4000, 3000, op, margin=2.0)
    assert h >= 448 and w >= 448 and h < 3000
