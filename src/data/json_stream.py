"""Read the elements of a JSON file's top-level arrays one at a time, in bounded memory.

COCO-style instances files (RefCOCO's is about 200k annotations) cost several times their size as
Python objects when loaded whole; a converter needs only the images and annotations its refs name.
"""
import json
import re

CHUNK_CHARS = 1 << 20
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class JsonStreamError(ValueError):
    """A file that is not a JSON object of the expected form."""


class _Reader:
    """A window on a text file: the unread part of the last chunks read."""

    def __init__(self, handle, path, chunk_chars):
        self.handle = handle
        self.path = path
        self.chunk_chars = chunk_chars
        self.text = ""
        self.pos = 0
        self.consumed = 0  # characters dropped before text[0]
        self.eof = False

    def fail(self, what):
        raise JsonStreamError(f"{self.path}: {what} at character {self.consumed + self.pos}")

    def _fill(self):
        data = self.handle.read(self.chunk_chars)
        if not data:
            self.eof = True
            return
        self.consumed += self.pos
        self.text = self.text[self.pos:] + data
        self.pos = 0

    def peek(self):
        """The next character that is not white space ('' at the end of the file)."""
        while True:
            self.pos = _SPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text) or self.eof:
                return self.text[self.pos:self.pos + 1]
            self._fill()

    def take(self, allowed):
        char = self.peek()
        if not char or char not in allowed:
            expected = " or ".join(repr(item) for item in allowed)
            self.fail(f"expected {expected}, found {char or 'the end of the file'!r}")
        self.pos += 1
        return char

    def value(self):
        """The next complete JSON value; reads on while the window ends inside it."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as err:
                if self.eof:
                    self.fail(f"invalid JSON ({err.msg})")
            else:
                # A number that ends the window may go on in the next chunk.
                if end < len(self.text) or self.eof:
                    self.pos = end
                    return value
            self._fill()


def iter_array_items(path, keys, chunk_chars=CHUNK_CHARS):
    """Yield (key, element) for each element of the arrays under `keys` of the file's top-level object,
    in file order; the other values are parsed and dropped. JsonStreamError if the file is not such an
    object, UnicodeDecodeError if it is not UTF-8."""
    with open(path, encoding="utf-8") as handle:
        reader = _Reader(handle, path, chunk_chars)
        reader.take("{")
        if reader.peek() == "}":
            return
        while True:
            key = reader.value()
            if not isinstance(key, str):
                reader.fail("expected a key")
            reader.take(":")
            if key in keys:
                if reader.peek() != "[":
                    reader.fail(f"'{key}' is not an array")
                reader.take("[")
                if reader.peek() == "]":
                    reader.take("]")
                else:
                    while True:
                        yield key, reader.value()
                        if reader.take(",]") == "]":
                            break
            else:
                reader.value()
            if reader.take(",}") == "}":
                break
        if reader.peek():
            reader.fail("unexpected data after the top-level object")
