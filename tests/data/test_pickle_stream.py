"""Element-by-element unpickling of a list, against pickle.load, for every protocol and Python 2's form."""
import io
import os
import pickle

import pytest

from src.data.pickle_stream import _ElementUnpickler, load_list_elements
from tests.data.test_build_mindrecord import _py2_pickle

SHARED = {"shared": [1, 2.5, "x"]}
ELEMENTS = [{"ref_id": index, "split": "train" if index % 3 else "val", "sentences": [
    {"raw": f"the {index} é", "sent_id": 10 * index, "tokens": ["the", str(index)]}], "shared": SHARED,
    "tuple": (index, None, True)} for index in range(2500)]


def streamed(data, encoding="ASCII"):
    seen = []
    top = load_list_elements(io.BytesIO(data), seen.append, encoding=encoding)
    return top, seen


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_elements_equal_pickle_load(protocol):
    data = pickle.dumps(ELEMENTS, protocol=protocol)
    top, seen = streamed(data)
    assert top == [] and seen == pickle.loads(data)
    assert seen[0]["shared"] is seen[-1]["shared"]  # an object written once and read back stays shared


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_only_memo_slots_that_are_read_back_are_kept(protocol):
    data = pickle.dumps(ELEMENTS, protocol=protocol)
    unpickler = _ElementUnpickler(io.BytesIO(data), lambda item: None, "ASCII")
    unpickler.load()
    # the shared dict and its list, the repeated keys and values: a handful, not one per object
    assert 0 < len(unpickler.memo) < 40


def test_python2_byte_strings_stay_bytes_with_encoding_bytes():
    data = b"\x80\x02" + _py2_pickle([{"raw": "café"}, {"raw": "b"}]) + b"."
    assert streamed(data, encoding="bytes") == ([], [{b"raw": "café".encode()}, {b"raw": b"b"}])


def test_a_top_level_object_that_is_not_a_list_is_returned_whole():
    assert streamed(pickle.dumps({"a": [1, 2]}, protocol=2)) == ({"a": [1, 2]}, [])


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def test_classes_and_callables_are_refused():
    with pytest.raises(pickle.UnpicklingError, match="refused to load 'posix.system'"):
        streamed(pickle.dumps([1, _Payload()], protocol=2))
