"""Streaming reader of a JSON object's arrays, against json.load; REFER's use of it."""
import json
import os
import shutil

import pytest

from src.data.json_stream import JsonStreamError, iter_array_items
from src.data.refer import Refer, ReferError
from src.data.synthetic import generate_synthetic
from tests.conftest import ReferFiles

DOCUMENT = {
    "info": {"description": "nested {\"braces\"} and [brackets] in text", "year": 2014},
    "images": [{"id": 1, "file_name": "a.jpg", "height": 480, "width": 640},
               {"id": 22, "file_name": "b é ü.jpg", "height": 7, "width": 123456789}],
    "empty": [],
    "annotations": [{"id": 10 + index, "segmentation": [[0.5 * index, 1e-3, 123.25, 4.0, 5.0, 6.0]],
                     "iscrowd": 0, "area": 12345.678} for index in range(40)]
                   + [{"id": 99, "segmentation": {"counts": "ab\\c\u2603", "size": [4, 5]}, "area": -1.5e10}],
    "categories": [{"id": 1, "name": "shape"}],
}


@pytest.mark.parametrize("chunk_chars", [1, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_elements_equal_json_load_at_every_chunk_boundary(tmp_path, chunk_chars, indent):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(DOCUMENT, indent=indent, ensure_ascii=indent is None), encoding="utf-8")
    items = list(iter_array_items(str(path), ("images", "annotations", "empty"), chunk_chars=chunk_chars))
    expected = [(key, item) for key in DOCUMENT if key in ("images", "annotations", "empty")
                for item in DOCUMENT[key]]
    assert items == expected


@pytest.mark.parametrize("text, message", [
    ('{"images": [{"id": 1}, {"id": 2', "invalid JSON"),
    ('{"images": [{"id": 1}]', "expected ',' or '}'"),
    ('[{"id": 1}]', "expected '{'"),
    ('{"images": {"id": 1}}', "'images' is not an array"),
    ('{"images": [{"id": 1}} ', "expected ',' or ']'"),
    ('{"images": []} {"images": []}', "unexpected data"),
    ('', "expected '{', found 'the end of the file'"),
])
def test_malformed_files_are_named_with_a_position(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(JsonStreamError, match=message) as info:
        list(iter_array_items(str(path), ("images",), chunk_chars=4))
    assert str(path) in str(info.value) and "at character" in str(info.value)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_synthetic")
    generate_synthetic(str(root), num_images=24, seed=5)
    return str(root)


def test_refer_keeps_only_what_its_refs_name(synthetic_root):
    refer = Refer(synthetic_root, "refcoco", "unc", os.path.join(synthetic_root, "images"))
    reference = ReferFiles(synthetic_root)
    assert len(reference.coco.anns) > len({ref["ann_id"] for ref in reference.refs})  # unreferenced objects exist
    assert set(refer.segmentations) == {ref["ann_id"] for ref in reference.refs}
    assert set(refer.images) == {ref["image_id"] for ref in reference.refs}
    assert [ref["ref_id"] for ref in refer.refs] == [ref["ref_id"] for ref in reference.refs]
    for ref, full in zip(refer.refs, reference.refs):
        assert ref["sentences"] == [{"sent_id": s["sent_id"], "raw": s["raw"]} for s in full["sentences"]]
        assert (refer.ref_mask(ref) == reference.ref_mask(full)).all()
        assert refer.image_info(ref["image_id"]) == {key: reference.image_info(full["image_id"])[key]
                                                     for key in ("file_name", "height", "width")}


def test_truncated_instances_file_is_one_error_naming_it(synthetic_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(os.path.join(synthetic_root, "refcoco"), root / "refcoco")
    instances = root / "refcoco" / "instances.json"
    instances.write_bytes(instances.read_bytes()[: instances.stat().st_size // 2])
    with pytest.raises(ReferError, match="cannot read COCO instances .*instances.json.*invalid JSON"):
        Refer(str(root), "refcoco", "unc")
    instances.write_bytes(b'{"images": [{"id": 1, "file_name": "\xff\xfe"}]}')
    with pytest.raises(ReferError, match="cannot read COCO instances"):
        Refer(str(root), "refcoco", "unc")
    instances.write_text('{"images": [{"file_name": "a.jpg"}], "annotations": []}', encoding="utf-8")
    with pytest.raises(ReferError, match="an entry of 'images' has no id"):
        Refer(str(root), "refcoco", "unc")
