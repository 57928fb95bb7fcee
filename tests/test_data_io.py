"""load_coco_text: the one-pass annotation scanner agrees with json.loads on any COCO document
(hypothesis: formatting, key order, extra fields, escapes, non-ASCII), falls back to it on anything
unusual, and subsets copy each annotation's text verbatim."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_ext.data import io as data_io
from sparse_ext.data.io import coco_arrays, load_coco_text

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),  # any unicode: quotes, backslashes, control characters, "},{"
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def coco_documents(draw):
    n_images = draw(st.integers(1, 4))
    images = [
        {"id": i, "file_name": f"{i}.png", "width": 50, "height": 40}
        for i in range(1, n_images + 1)
    ]
    anns = []
    for k in range(draw(st.integers(0, 12))):
        x, y = draw(st.integers(0, 30)), draw(st.integers(0, 20))
        a = {
            "id": 100 + k,
            "image_id": draw(st.integers(1, n_images)),
            "category_id": draw(st.sampled_from([1, 2])),
            "bbox": [x, y, draw(st.floats(0, 19.5)), draw(st.integers(0, 19))],
        }
        if draw(st.booleans()):
            a["instance_id"] = draw(st.integers(1, 10**6))
        for key, value in draw(st.dictionaries(st.text(max_size=5), values, max_size=2)).items():
            a.setdefault(key, value)
        items = list(a.items())
        order = draw(st.permutations(range(len(items))))
        anns.append(dict(items[i] for i in order))
    top = [
        ("images", images),
        ("categories", [{"id": 1, "name": "a"}, {"id": 2, "name": "b\u00e9"}]),
        ("annotations", anns),
    ]
    extra = draw(st.dictionaries(st.sampled_from(["info", "licenses", "x"]), values, max_size=2))
    top += list(extra.items())
    order = draw(st.permutations(range(len(top))))
    return dict(top[i] for i in order)


def _dumps(doc, style):
    indent, separators, ensure_ascii = style
    return json.dumps(doc, indent=indent, separators=separators, ensure_ascii=ensure_ascii)


STYLES = st.tuples(
    st.sampled_from([None, 0, 2]),
    st.sampled_from([None, (",", ":"), (" , ", " : ")]),
    st.booleans(),
)


@settings(max_examples=80, deadline=None)
@given(doc=coco_documents(), style=STYLES, seed=st.integers(0, 2**16))
def test_scanner_agrees_with_json_loads(doc, style, seed):
    text = _dumps(doc, style)
    if style[0] is None and style[1] == (" , ", " : "):
        text = "\n \t" + text + " \r\n"  # whitespace around the document too
    ref = json.loads(text)
    assert data_io._scan_coco(text) is not None  # the fast path is taken, not the fallback
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.json"
        path.write_text(text, encoding="utf-8")
        ct = load_coco_text(path)
        assert ct.head == {k: v for k, v in ref.items() if k != "annotations"}
        assert [json.loads(t) for t in ct.texts] == ref["annotations"]
        ref_arr = coco_arrays(ref)
        for field in ("ann_ids", "image_ids", "category_ids", "bboxes"):
            np.testing.assert_array_equal(getattr(ct.arrays, field), getattr(ref_arr, field))
        assert ct.instance_ids == [a.get("instance_id") for a in ref["annotations"]]
        # each annotation's text is the input's, byte for byte
        raw = text.encode("utf-8")
        assert all(t in raw for t in ct.texts)
        keep = np.flatnonzero(np.random.default_rng(seed).random(len(ct)) < 0.5)
        head = {**ct.head, "info": {"k": 1}}
        ct.write_subset(Path(d) / "o.json", keep, head)
        out = json.loads((Path(d) / "o.json").read_text(encoding="utf-8"))
        assert out == {**head, "annotations": [ref["annotations"][k] for k in keep]}
        assert list(out) == list(head) + ["annotations"]


def _write(tmp_path, text):
    p = tmp_path / "c.json"
    p.write_text(text)
    return p


GOOD = (
    '{"images":[{"id":1,"file_name":"a.png","width":9,"height":9}],'
    '"categories":[{"id":1,"name":"n"}],'
    '"annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":[1,1,2,2]}]}'
)


def test_unusual_documents_take_the_json_loads_path(tmp_path):
    # a repeated "annotations" key: json.loads keeps the last, so must the reader
    doc = GOOD[:-1] + ',"annotations":[{"id":7,"image_id":1,"category_id":1,"bbox":[0,0,1,1]}]}'
    assert data_io._scan_coco(doc) is None
    ct = load_coco_text(_write(tmp_path, doc))
    assert ct.arrays.ann_ids.tolist() == [7]
    assert [json.loads(t)["id"] for t in ct.texts] == [7]
    # invalid JSON the scanner must not accept: trailing commas, extra data
    for bad in (
        GOOD[:-1] + ",}",
        GOOD.replace("2,2]}]", "2,2]},]"),
        GOOD + "x",
        GOOD.replace('"images"', "images"),
    ):
        assert data_io._scan_coco(bad) is None
        with pytest.raises(ValueError, match="not valid JSON"):
            load_coco_text(_write(tmp_path, bad))
    # an annotation lacking a key: the slow path names it
    with pytest.raises(KeyError, match=r"annotations\[0\] \(id=1\) has no key 'bbox'"):
        load_coco_text(_write(tmp_path, GOOD.replace(',"bbox":[1,1,2,2]', "")))
    with pytest.raises(ValueError, match="outside its image"):
        load_coco_text(_write(tmp_path, GOOD.replace("[1,1,2,2]", "[8,1,2,2]")))
    with pytest.raises(KeyError, match="missing top-level key 'annotations'"):
        load_coco_text(_write(tmp_path, GOOD.split(',"annotations"')[0] + "}"))


def test_subsets_keep_the_input_text_verbatim(tmp_path):
    """Non-ASCII and number spellings survive (no decode/encode round trip)."""
    doc = GOOD.replace('"bbox":[1,1,2,2]', '"bbox":[1E0,1.50,2,2],"note":"caf\u00e9 \\u00e9"')
    ct = load_coco_text(_write(tmp_path, doc))
    ct.write_subset(tmp_path / "o.json", np.array([0]), ct.head)
    out = (tmp_path / "o.json").read_bytes()
    assert '"bbox":[1E0,1.50,2,2],"note":"caf\u00e9 \\u00e9"'.encode() in out
    assert json.loads(out)["annotations"][0]["note"] == "caf\u00e9 \u00e9"
