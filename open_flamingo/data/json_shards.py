"""JSON shards, indexed as byte spans: JSON lines (`.jsonl`, `.txt`, gzip, zip members) and JSON
arrays (`.json`, one array of records per file, as OmniCorpus's own reader takes them).

Indexing reads the shard once, checks each record it keeps (valid UTF-8 and JSON, an object) and
remembers only where the record's bytes are; `JsonSpans.read(j)` parses record j again when the
loader gets to it. Memory: 24 bytes per kept record, plus the blobs (see blobs.py).
"""

import codecs
import json
import re
from array import array
from collections.abc import Callable

from .blobs import Blob, chunks
from .skips import SkipCounter, SkipSample

# A JSON escape of a UTF-16 surrogate (\ud800-\udfff); json.loads keeps a lone one as is.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")
# What "surrogateescape" decoding makes of bytes that are not UTF-8.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_SPACE = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET_OR_QUOTE = re.compile(r'["\[\]{}]')
_SCALAR_END = re.compile(r"[,\]}\s]")

Keep = Callable[[int], bool]


def decode_json(data: bytes):
    """The JSON value of UTF-8 `data`. Raises SkipSample "non_utf8" for bytes that are not UTF-8
    and for strings that UTF-8 cannot hold (a lone surrogate escape such as "\\ud800", which
    would fail later in a tokenizer or a URL hash), "invalid_json" for whatever json.loads
    refuses: syntax, integers of over 4,300 digits (ValueError), nesting deeper than Python's
    recursion limit (RecursionError)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SkipSample("non_utf8", str(error)) from error
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise SkipSample("invalid_json", f"{type(error).__name__}: {error}") from error
    if _SURROGATE_ESCAPE.search(data):  # rare: only then is every string checked
        _check_encodable(value)
    return value


def _check_encodable(value) -> None:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise SkipSample("non_utf8", f"lone surrogate escape: {error}") from error


class JsonSpans:
    """The kept records of a JSON shard: record index and byte span in one of `segments`."""

    def __init__(self):
        self.segments: list[Blob] = []
        self.indices = array("q")
        self._segment = array("I")
        self._offset = array("q")
        self._length = array("q")

    def add(self, index: int, segment: int, offset: int, length: int) -> None:
        self.indices.append(index)
        self._segment.append(segment)
        self._offset.append(offset)
        self._length.append(length)

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, j: int) -> dict:
        """Record j (checked when indexed). Raises StorageError if its bytes cannot be read."""
        blob = self.segments[self._segment[j]]
        return decode_json(blob.read(self._offset[j], self._length[j]))

    def close(self) -> None:
        for blob in self.segments:
            blob.close()


def _check_line(name: str, index: int, line: bytes, last_cut: bool, skips: SkipCounter) -> bool:
    """Whether `line` is a usable record; counts why not. `last_cut`: an unterminated last line,
    which is a cut-off shard ("truncated_shard") when it does not parse."""
    try:
        record = decode_json(line)
    except SkipSample as skip:
        if last_cut and skip.reason == "invalid_json":
            skips.count("truncated_shard", f"{name}: last line {index} is cut: {skip.detail}")
        else:
            skips.count(skip.reason, f"{name} line {index}: {skip.detail}")
        return False
    if not isinstance(record, dict):
        skips.count("schema", f"{name} line {index}: a {type(record).__name__}, not an object")
        return False
    return True


def index_lines(
    name: str,
    blob: Blob,
    spans: JsonSpans,
    skips: SkipCounter,
    *,
    keep: Keep,
    first_index: int = 0,
    complete: bool = True,
) -> int:
    """Index the lines of `blob` (a segment of `spans`, added when it holds a kept record),
    numbered from `first_index`; returns the index after its last line.

    Lines `keep` rejects are passed over unparsed. The last line may
    lack its newline; it is "truncated_shard" only if it then fails to parse. With
    `complete=False` (a decompressor stopped early, and counted why) an unterminated last line
    is dropped without trying to parse it.
    """
    segment = len(spans.segments)
    kept_before = len(spans)
    index, carry, carry_offset = first_index, b"", 0

    def handle(offset: int, line: bytes, terminated: bool) -> None:
        if not keep(index) or not (terminated or complete):
            return
        if index == 0 and line.startswith(codecs.BOM_UTF8):
            offset, line = offset + len(codecs.BOM_UTF8), line[len(codecs.BOM_UTF8) :]
        if _check_line(name, index, line, not terminated, skips):
            spans.add(index, segment, offset, len(line))

    for offset, piece in chunks(blob):
        lines = (carry + piece).split(b"\n")
        position = offset - len(carry)
        carry = lines.pop()
        for line in lines:
            handle(position, line, True)
            position += len(line) + 1
            index += 1
        carry_offset = position
    if carry:
        handle(carry_offset, carry, False)
        index += 1
    if len(spans) > kept_before:
        spans.segments.append(blob)
    else:
        blob.close()
    return index


def _value_end(text: str, pos: int) -> int | None:
    """Where the JSON value starting at text[pos] ends, found by brackets and strings only (for
    values json cannot parse); None when `text` ends first."""
    if text[pos] == '"':
        match = _STRING.match(text, pos)
        return match.end() if match else None
    if text[pos] not in "[{":
        match = _SCALAR_END.search(text, pos)
        return match.start() if match else None
    depth = 0
    while True:
        match = _BRACKET_OR_QUOTE.search(text, pos)
        if match is None:
            return None
        if match.group() == '"':
            string = _STRING.match(text, match.start())
            if string is None:
                return None
            pos = string.end()
            continue
        depth += 1 if match.group() in "[{" else -1
        pos = match.end()
        if depth == 0:
            return pos


class _TextWindow:
    """The shard as text, decoded a chunk at a time (bytes that are not UTF-8 become lone
    surrogates, so byte offsets stay exact), with the byte offset of `pos`."""

    def __init__(self, blob: Blob):
        self._chunks = chunks(blob)
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.text, self.pos, self.byte_pos, self.exhausted = "", 0, 0, False

    def more(self) -> bool:
        """Append the next chunk (consumed text is dropped); False at the end of the blob."""
        if self.exhausted:
            return False
        piece = next(self._chunks, None)
        self.exhausted = piece is None
        decoded = self._decoder.decode(b"" if piece is None else piece[1], final=self.exhausted)
        self.text, self.pos = self.text[self.pos :] + decoded, 0
        return not self.exhausted or bool(decoded)

    def advance(self, end: int) -> int:
        """Move to text[end]; returns the number of bytes passed."""
        passed = len(self.text[self.pos : end].encode("utf-8", "surrogateescape"))
        self.pos, self.byte_pos = end, self.byte_pos + passed
        return passed

    def skip_space(self) -> str:
        """The first character after whitespace ("" at the end of the blob)."""
        while True:
            self.advance(_SPACE.match(self.text, self.pos).end())
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""


def index_array(name: str, blob: Blob, spans: JsonSpans, skips: SkipCounter, *, keep: Keep) -> None:
    """Index the records of a `.json` shard: one JSON array of objects. An element that is not
    valid JSON is counted and passed over when its end can still be found by its brackets; a
    file that ends inside the array is "truncated_shard", one whose structure breaks is
    "corrupt_shard" (the elements before stay)."""
    window, decoder, index = _TextWindow(blob), json.JSONDecoder(), 0
    first = window.skip_space()
    if first == "\ufeff":
        window.advance(window.pos + 1)
        first = window.skip_space()
    if first != "[":
        found = repr(first) if first else "nothing"
        skips.count("schema", f"{name}: a .json shard holds one JSON array, found {found}")
        blob.close()
        return
    window.advance(window.pos + 1)
    while True:
        char = window.skip_space()
        if char == "]":
            break
        if index > 0:
            if char != ",":
                _broken(name, index, window, skips)
                break
            window.advance(window.pos + 1)
            char = window.skip_space()
        if not char:
            _broken(name, index, window, skips)
            break
        end = _parse_element(name, index, window, decoder, spans, skips, keep)
        if end is None:
            _broken(name, index, window, skips)
            break
        index += 1
    if len(spans):
        spans.segments.append(blob)
    else:
        blob.close()


def _parse_element(name, index, window, decoder, spans, skips, keep) -> int | None:
    """Parse (or pass over) the element at the window's position; its end, or None when its
    end cannot be found."""
    while True:
        try:
            value, end = decoder.raw_decode(window.text, window.pos)
            error = None
        except (ValueError, RecursionError) as caught:
            value, end, error = None, _value_end(window.text, window.pos), caught
        if end is not None and (end < len(window.text) or window.exhausted):
            break
        if not window.more():  # the element may go on in the next chunk
            return None
    span = window.text[window.pos : end]
    offset = window.byte_pos
    length = window.advance(end)
    if not keep(index):
        return end
    reason = None
    if error is not None:
        reason, detail = "invalid_json", f"{type(error).__name__}: {error}"
    elif _UNDECODABLE.search(span):
        reason, detail = "non_utf8", "bytes that are not UTF-8"
    elif not isinstance(value, dict):
        reason, detail = "schema", f"a {type(value).__name__}, not an object"
    elif _SURROGATE_ESCAPE_TEXT.search(span):
        try:
            _check_encodable(value)
        except SkipSample as skip:
            reason, detail = skip.reason, skip.detail
    if reason is None:
        spans.add(index, 0, offset, length)
    else:
        skips.count(reason, f"{name} element {index}: {detail}")
    return end


def _broken(name: str, index: int, window: _TextWindow, skips: SkipCounter) -> None:
    """Count why the array stops being readable at element `index`."""
    while window.more():
        pass
    if window.text.rstrip().endswith("]"):
        skips.count("corrupt_shard", f"{name}: the array breaks at element {index}")
    else:
        skips.count("truncated_shard", f"{name}: the array is cut at element {index}")
