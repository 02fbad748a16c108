import json
import os

from resize_pipeline.jsontext import display, dumps


def test_names_that_are_not_utf8_round_trip_through_json():
    name = os.fsdecode(b"/data/caf\xe9 \xff.jpg")
    doc = {"path": name, "ok": "chat \u00e9t\u00e9 \u732b", "back\\slash": "a\\" + name}
    text = dumps(doc, sort_keys=True)
    text.encode("utf-8")  # valid UTF-8: no lone surrogate left
    assert json.loads(text) == doc and os.fsencode(json.loads(text)["path"]) == b"/data/caf\xe9 \xff.jpg"
    assert "chat \u00e9t\u00e9 \u732b" in text  # valid names keep their readable form
    assert dumps({"a": "plain"}) == json.dumps({"a": "plain"}, ensure_ascii=False)


def test_display():
    assert display(os.fsdecode(b"bad\xff.jpg")) == "bad\\xff.jpg"
    assert display("fine \u00e9.jpg") == "fine \u00e9.jpg"
    assert display("\ud800x") == "\\ud800x"
