from resize_pipeline.sources.keys import sanitize_key, unique_keys


def test_sanitize():
    assert sanitize_key("cats/Tom & Jerry.v2.JPG") == "cats__Tom_Jerry_v2"
    assert sanitize_key("a/b/c.png") == "a__b__c"
    assert "." not in sanitize_key("../../etc/passwd.jpg") and "/" not in sanitize_key("../x.jpg")
    assert sanitize_key("猫.jpg") == "_"
    assert len(sanitize_key("x" * 500 + ".jpg")) <= 160


def test_unique_keys_are_deterministic_and_unique():
    rels = ["a b.jpg", "a_b.jpg", "a-b.jpg", "a b.png", "猫.jpg", "犬.jpg"]
    keys = unique_keys(rels)
    assert len(set(keys)) == len(keys)
    assert keys == unique_keys(rels)
    assert keys[0] == "a_b" and keys[1].startswith("a_b_")
