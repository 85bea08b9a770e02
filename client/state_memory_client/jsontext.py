"""JSON text in and out with exact numbers: decimals decode to Decimal and encode back as
numbers, so 0.3 stays 0.3 and 1.10 stays 1.10 on the way through Python.

`decode_float` is the JSON-safe alternative for callers that hand values on to `json.dumps`
(every LLM SDK does): integers stay int, decimals become the nearest float."""

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec

_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_FLOAT_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder(decimal_format="number")


def decode(text: bytes | str) -> Any:
    """The JSON value of `text`. An integer beyond 64 bits — which a state may hold from before
    numbers were bounded — decodes as a Decimal instead of failing (slower, and only then)."""
    try:
        return _DECODER.decode(text)
    except msgspec.ValidationError:
        return json.loads(text, parse_float=Decimal, parse_int=_integer, parse_constant=_not_json)


def decode_float(text: bytes | str) -> Any:
    """The JSON value of `text` with Python's plain numbers, as `json.loads` gives them: integers
    as int (of any size), decimals as float, so 1.10 reads 1.1 and a sum may read
    0.30000000000000004. Everything it returns is accepted by `json.dumps`."""
    try:
        return _FLOAT_DECODER.decode(text)
    except msgspec.ValidationError:  # a number beyond a float's range: what json.loads makes of it
        return json.loads(text, parse_constant=_not_json)


# How a client reads numbers, by the name its `numbers` option takes.
DECODERS: dict[str, Callable[[bytes | str], Any]] = {"decimal": decode, "float": decode_float}


def _integer(text: str) -> int | Decimal:
    return int(text) if len(text) < 19 else Decimal(text)


def _not_json(name: str) -> Any:
    raise msgspec.DecodeError(f"{name} is not JSON")


def encode(value: Any) -> bytes:
    """JSON text of `value`; Decimals are written as the numbers they are, floats as Python repr."""
    return _ENCODER.encode(value)
