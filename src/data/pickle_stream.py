"""Unpickle a list of plain data one element at a time, so its elements need not all be alive at once.

A whole-file unpickle keeps every object until the end: the list holds them, and so does the memo
(every str, dict and list the pickler saw gets a memo slot). RefCOCO's refs file (142k sentences) costs
about 1.1 KB per sentence that way. Here a first pass over the opcodes finds the memo slots that are
ever read back (a few: repeated keys and values), the second keeps only those and hands each element of
the top-level list to a callback instead of appending it. Only plain data is admitted: any class or
callable in the file is refused.
"""
import pickle
import pickletools

_GETS = {"GET", "BINGET", "LONG_BINGET"}


class _ReadBackMemo(dict):
    """A memo that stores only the slots some GET reads."""

    def __init__(self, read_back):
        super().__init__()
        self.read_back = read_back

    def __setitem__(self, key, value):
        if key in self.read_back:
            super().__setitem__(key, value)


def _memo_slots_read_back(handle):
    """Memo indices named by a GET opcode anywhere in the pickle at handle (whose position is restored)."""
    start = handle.tell()
    slots = {arg for opcode, arg, _ in pickletools.genops(handle) if opcode.name in _GETS}
    handle.seek(start)
    return slots


class _ElementUnpickler(pickle._Unpickler):  # the Python implementation: its opcodes can be overridden
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, handle, on_element, encoding):
        super().__init__(handle, encoding=encoding)
        self.memo = _ReadBackMemo(_memo_slots_read_back(handle))
        self.on_element = on_element
        self.memoized = 0

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"refused to load '{module}.{name}': the refs file may only hold plain Python data "
            "(dict, list, str, int, float, tuple, bool, None)")

    def _appends_to_top_level(self):
        return not self.metastack and len(self.stack) == 1 and isinstance(self.stack[0], list)

    def load_memoize(self):
        # Protocol 4 numbers memo slots by how many came before, not by the memo's (sparse) size.
        self.memo[self.memoized] = self.stack[-1]
        self.memoized += 1

    def load_append(self):
        value = self.stack.pop()
        if self._appends_to_top_level():
            self.on_element(value)
        else:
            self.stack[-1].append(value)

    def load_appends(self):
        items = self.pop_mark()
        if self._appends_to_top_level():
            for item in items:
                self.on_element(item)
        else:
            self.stack[-1].extend(items)

    dispatch[pickle.MEMOIZE[0]] = load_memoize
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends


def load_list_elements(handle, on_element, encoding="ASCII"):
    """Unpickle the file at handle (seekable, binary), calling on_element(item) for each element of its
    top-level list in order. Returns the top-level object as left after that: an empty list for a list,
    the object itself for anything else. Raises what pickle raises for a bad file."""
    return _ElementUnpickler(handle, on_element, encoding).load()
