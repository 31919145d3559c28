"""The Open Inference Protocol's binary tensor data extension, and bodies sent without a Content-Type.

Standard clients (tritonclient's HTTP client with its defaults) send no
Content-Type header and put input tensors after the JSON header as raw bytes:
the `Inference-Header-Content-Length` header gives the JSON's length, and each
input with `parameters.binary_data_size` takes that many bytes of the rest, in
order. Numbers are little-endian arrays of the tensor's datatype; BYTES elements
are each a 4-byte little-endian length and that many bytes (UTF-8 text, or, when
any element is not text, such as an image file, base64 text with the tensor's
`parameters.content_type` set to "base64", the convention MLServer uses). Outputs come back
the same way when the request asks (`parameters.binary_data_output`, or
`parameters.binary_data` on a requested output).

`TensorBinaryExtension` is an ASGI middleware: it turns such a request into
the plain JSON request the endpoints take, and a JSON answer into the binary
form asked for, so the endpoints, their validation and the OpenAPI schema stay
those of JSON. A body without a Content-Type is read as JSON, as Triton and
KServe servers do.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np

HEADER_LENGTH = b"inference-header-content-length"

NUMPY_TYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


class BinaryTensorError(ValueError):
    """A binary tensor request that cannot be read; the answer is a 400 naming the problem."""


def _elements(shape: Any) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BinaryTensorError(f"shape must be a list of non-negative integers, got {shape!r}")
    return int(np.prod(shape)) if shape else 1


def decode_tensor(raw: bytes, datatype: str, shape: Any, name: str) -> tuple[list, bool]:
    """The flat list of values of one binary tensor, and whether they are base64 text (BYTES elements that are
    not all UTF-8)."""
    count = _elements(shape)
    if datatype == "BYTES":
        values, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise BinaryTensorError(f"input {name!r}: BYTES data ends inside an element's length")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise BinaryTensorError(f"input {name!r}: a BYTES element of {length} bytes runs past the data")
            values.append(raw[offset:offset + length])
            offset += length
        if len(values) != count:
            raise BinaryTensorError(f"input {name!r} has {len(values)} BYTES elements for shape {shape}")
        try:
            return [value.decode("utf-8") for value in values], False
        except UnicodeDecodeError:  # binary elements (an image file): base64 text in the JSON request
            return [base64.b64encode(value).decode("ascii") for value in values], True
    kind = NUMPY_TYPES.get(datatype)
    if kind is None:
        raise BinaryTensorError(f"input {name!r}: datatype {datatype!r} cannot be sent as binary data")
    width = np.dtype(kind).itemsize
    if len(raw) != count * width:
        raise BinaryTensorError(f"input {name!r}: {len(raw)} bytes of {datatype} for shape {shape} "
                                f"(expected {count * width})")
    return np.frombuffer(raw, dtype=np.dtype(kind).newbyteorder("<")).tolist(), False


def encode_tensor(values: list, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in values:
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.asarray(values, dtype=np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<")).tobytes()


def _flat(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    out: list = []
    for value in data:
        out.extend(_flat(value))
    return out


def decode_request(body: bytes, header_length: int) -> tuple[dict, bool, set[str]]:
    """(the request as plain JSON, whether every output is wanted binary, the outputs wanted binary by name)."""
    if not 0 <= header_length <= len(body):
        raise BinaryTensorError(f"Inference-Header-Content-Length {header_length} is outside the body's "
                                f"{len(body)} bytes")
    try:
        request = json.loads(body[:header_length]) if header_length else {}
    except RecursionError:
        raise BinaryTensorError("the inference header nests arrays and objects too deeply") from None
    if not isinstance(request, dict):
        raise BinaryTensorError("the inference header must be a JSON object")
    offset = header_length
    inputs = request.get("inputs")
    for tensor in inputs if isinstance(inputs, list) else []:
        if not isinstance(tensor, dict):
            continue  # the endpoint's validation names it
        size = _mapping(tensor.get("parameters")).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise BinaryTensorError(f"input {tensor.get('name')!r}: binary_data_size {size!r} runs past the body")
        tensor["data"], as_base64 = decode_tensor(body[offset:offset + size], str(tensor.get("datatype")),
                                                  tensor.get("shape"), str(tensor.get("name")))
        offset += size
        tensor["parameters"] = {k: v for k, v in tensor["parameters"].items() if k != "binary_data_size"}
        if as_base64:
            tensor["parameters"]["content_type"] = "base64"
    if offset != len(body):
        raise BinaryTensorError(f"{len(body) - offset} bytes after the last binary input belong to no input")
    all_binary, named = wanted_binary(request)
    return request, all_binary, named


def _mapping(value: Any) -> dict:
    """`parameters` as given if it is an object, else {}: the endpoint's own validation names what is wrong."""
    return value if isinstance(value, dict) else {}


def wanted_binary(request: dict) -> tuple[bool, set[str]]:
    everything = bool(_mapping(request.get("parameters")).get("binary_data_output", False))
    outputs = request.get("outputs")
    named = {str(o.get("name")) for o in (outputs if isinstance(outputs, list) else []) if isinstance(o, dict)
             and _mapping(o.get("parameters")).get("binary_data", everything)}
    return everything, named


def encode_response(answer: dict, all_binary: bool, named: set[str]) -> tuple[bytes, int]:
    """(body, JSON header length): the chosen outputs' data moved after the JSON header as bytes."""
    chunks = []
    for output in answer.get("outputs") or []:
        if not (all_binary or output.get("name") in named) or output.get("datatype") not in (*NUMPY_TYPES, "BYTES"):
            continue
        data = encode_tensor(_flat(output.pop("data", [])), output["datatype"])
        output.setdefault("parameters", {})["binary_data_size"] = len(data)
        chunks.append(data)
    header = json.dumps(answer, separators=(",", ":")).encode()
    return header + b"".join(chunks), len(header)


class TensorBinaryExtension:
    """ASGI middleware; see the module docstring. Goes inside the body-size limit, which has read the body's
    length by then."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(HEADER_LENGTH)
        wants_binary = False
        if declared is None and headers.get(b"content-type", b"").strip() and not scope["path"].endswith("/infer"):
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        all_binary, named = False, set()
        if declared is not None:
            try:
                request, all_binary, named = decode_request(body, int(declared))
            except (BinaryTensorError, ValueError, json.JSONDecodeError) as error:
                return await _send_json(send, 400, {"error": f"binary tensor request: {error}"})
            body = json.dumps(request).encode()
        elif scope["path"].endswith("/infer"):
            try:
                request = json.loads(body)
                if isinstance(request, dict):
                    all_binary, named = wanted_binary(request)
            except (ValueError, UnicodeDecodeError, RecursionError):
                pass  # not JSON, or nested too deeply: the endpoint says so
        wants_binary = all_binary or bool(named)
        kind = headers.get(b"content-type", b"").strip()
        rewritten = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length", HEADER_LENGTH)]
        rewritten += [(b"content-type", b"application/json" if declared is not None or not kind else kind),
                      (b"content-length", str(len(body)).encode())]
        scope = {**scope, "headers": rewritten}
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if not wants_binary:
            return await self.app(scope, replay, send)
        start: dict = {}
        parts: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _finish_binary(send, start, b"".join(parts), all_binary, named)

        await self.app(scope, replay, capture)


async def _read_body(receive) -> bytes | None:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _finish_binary(send, start: dict, body: bytes, all_binary: bool, named: set[str]) -> None:
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
    if start.get("status") == 200:
        try:
            answer = json.loads(body)
            body, header_length = encode_response(answer, all_binary, named)
            headers += [(b"content-type", b"application/octet-stream"),
                        (HEADER_LENGTH, str(header_length).encode())]
        except (ValueError, KeyError, TypeError):
            headers.append((b"content-type", b"application/json"))
    else:
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": start.get("status", 500), "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_json(send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
