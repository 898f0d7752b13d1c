"""The few facts edgekd reads from an ONNX graph, without the `onnx` package.

A device install of edgekd (numpy, onnxruntime, tokenizers) has no `onnx`, yet the benchmark must name the
files a graph needs (its external data) and count its parameters. An ONNX file is one protobuf message, and the
fields read here have kept their numbers since ONNX IR version 3 (onnx/onnx.proto):

    ModelProto.graph = 7
    GraphProto.node = 1, GraphProto.initializer = 5
    NodeProto.input = 1, NodeProto.op_type = 4
    TensorProto.dims = 1, .data_type = 2, .name = 8, .external_data = 13, .data_location = 14
    StringStringEntryProto.key = 1, .value = 2

onnxruntime's own protobuf dependency has no ONNX message classes, so this is a reader of the protobuf wire
format for those fields only. Tensor data is skipped through views of the file's bytes, never copied, so a 400 MB
teacher graph is read in under a second. Every other field is skipped, as protobuf does with unknown
fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# TensorProto.DataType values (onnx.proto).
FLOAT, UINT8, INT8, FLOAT16, DOUBLE, BFLOAT16, UINT4, INT4 = 1, 2, 3, 10, 11, 16, 21, 22
WEIGHT_TYPES = frozenset({FLOAT, UINT8, INT8, FLOAT16, DOUBLE, BFLOAT16, UINT4, INT4})
"""Element types of learned weights, float or quantized (int32/int64/bool tensors are shapes and indices)."""
EXTERNAL = 1  # TensorProto.DataLocation

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class MalformedGraph(ValueError):
    """The bytes are not a protobuf message of the expected shape."""


@dataclass(frozen=True)
class Initializer:
    name: str
    dims: tuple[int, ...]
    data_type: int
    external_location: str | None
    """The file (relative to the graph's folder) holding the tensor's data, when it is stored outside."""


@dataclass(frozen=True)
class Node:
    op_type: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Graph:
    initializers: tuple[Initializer, ...]
    nodes: tuple[Node, ...]


def read_graph(path: str | Path) -> Graph:
    """The main graph's initializers and nodes.

    Raises:
        OSError: The file cannot be read.
        MalformedGraph: The file is empty or not a protobuf message of ONNX's shape.
    """
    data = Path(path).read_bytes()
    if not data:
        raise MalformedGraph("the file is empty")
    try:
        return _graph(memoryview(data))
    except IndexError:  # a length or varint runs past the end
        raise MalformedGraph("the message is truncated") from None


def _graph(model: memoryview) -> Graph:
    initializers: list[Initializer] = []
    nodes: list[Node] = []
    found = False
    for number, value in _fields(model):
        if number == 7 and isinstance(value, memoryview):
            found = True
            for inner, item in _fields(value):
                if inner == 1 and isinstance(item, memoryview):
                    nodes.append(_node(item))
                elif inner == 5 and isinstance(item, memoryview):
                    initializers.append(_initializer(item))
    if not found:
        raise MalformedGraph("the message has no graph")
    return Graph(tuple(initializers), tuple(nodes))


def _node(message: memoryview) -> Node:
    op_type, inputs = "", []
    for number, value in _fields(message):
        if number == 1 and isinstance(value, memoryview):
            inputs.append(_text(value))
        elif number == 4 and isinstance(value, memoryview):
            op_type = _text(value)
    return Node(op_type, tuple(inputs))


def _initializer(message: memoryview) -> Initializer:
    name, dims, data_type, location, external = "", [], 0, None, False
    for number, value in _fields(message):
        if number == 1:
            dims.extend(_packed_varints(value) if isinstance(value, memoryview) else [value])
        elif number == 2 and isinstance(value, int):
            data_type = value
        elif number == 8 and isinstance(value, memoryview):
            name = _text(value)
        elif number == 13 and isinstance(value, memoryview):
            entry = {key: _text(item) for key, item in _fields(value) if isinstance(item, memoryview)}
            if entry.get(1) == "location":
                location = entry.get(2)
        elif number == 14 and isinstance(value, int):
            external = value == EXTERNAL
    return Initializer(name, tuple(dims), data_type, location if external else None)


def _fields(message: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of every field: an int for varints, a view of the bytes otherwise."""
    pos, end = 0, len(message)
    while pos < end:
        key, pos = _varint(message, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _varint(message, pos)
            yield number, value
        elif wire_type == _LENGTH_DELIMITED:
            size, pos = _varint(message, pos)
            if pos + size > end:
                raise MalformedGraph("a field runs past the end of its message")
            yield number, message[pos : pos + size]
            pos += size
        elif wire_type in (_FIXED64, _FIXED32):
            width = 8 if wire_type == _FIXED64 else 4
            yield number, message[pos : pos + width]
            pos += width
        else:  # groups (3, 4) are not used by ONNX; 6 and 7 do not exist
            raise MalformedGraph(f"unexpected wire type {wire_type}")
    if pos != end:
        raise MalformedGraph("the last field runs past the end of its message")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise MalformedGraph("a varint is longer than 10 bytes")


def _packed_varints(data: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        values.append(value)
    return values


def _text(data: memoryview) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedGraph("a name is not UTF-8") from None
