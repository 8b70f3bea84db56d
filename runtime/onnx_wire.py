"""An ONNX file's top-level facts read straight from the protobuf wire format, without the onnx package: its opset domains and its metadata_props.

The lean runtime has no ``onnx`` (it is in the [export] and [app] extras), yet two choices are
made before any library loads a model: whether the graph uses LFM's custom ops (custom_ops, by
its opset domains) and which backend ``auto`` runs it on (backends.auto, by its lfm.* metadata).
Both read the ModelProto's top-level fields only; the graph (field 7, nearly all of the file) is
skipped by its length. Standard library only.

ModelProto fields read (onnx.proto): 8 ``opset_import`` (OperatorSetIdProto: 1 domain) and
14 ``metadata_props`` (StringStringEntryProto: 1 key, 2 value).
"""
from __future__ import annotations

from typing import Iterator

OPSET_IMPORT, METADATA_PROPS = 8, 14  # ModelProto's field numbers


def read_varint(buf, pos: int) -> tuple[int, int]:
    """(value, position after it) of the base-128 varint at ``pos``."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def length_delimited_fields(buf, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field (strings, bytes, messages) of the
    message in ``buf[start:end]``; other wire types are stepped over. A malformed message raises
    ValueError."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise ValueError("truncated field")
            yield field, pos, pos + size
            pos += size
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    if pos > end:
        raise ValueError("truncated message")


def _strings(buf, start: int, end: int) -> dict[int, str]:
    """A small message's string fields by number (absent fields are absent)."""
    return {field: bytes(buf[a:b]).decode("utf-8", "replace") for field, a, b in length_delimited_fields(buf, start, end)}


def opset_domains(data: bytes) -> set[str]:
    """The domains a serialized ModelProto imports ("" is the default ONNX domain)."""
    return {_strings(data, a, b).get(1, "") for field, a, b in length_delimited_fields(data) if field == OPSET_IMPORT}


def metadata_props(data: bytes) -> dict[str, str]:
    """A serialized ModelProto's metadata_props as a dict (what onnx.load(...).metadata_props and
    ONNX Runtime's custom_metadata_map hold)."""
    props = {}
    for field, a, b in length_delimited_fields(data):
        if field == METADATA_PROPS:
            entry = _strings(data, a, b)
            props[entry.get(1, "")] = entry.get(2, "")
    return props
