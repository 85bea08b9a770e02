"""JSON text in and out with exact numbers: decimals decode to Decimal and encode back as
numbers, so 0.3 stays 0.3 and 1.10 stays 1.10 on the way through Python."""

import json
from decimal import Decimal
from typing import Any

import msgspec

_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_ENCODER = msgspec.json.Encoder(decimal_format="number")


def decode(text: bytes | str) -> Any:
    """The JSON value of `text`. An integer beyond 64 bits — which a state may hold from before
    numbers were bounded — decodes as a Decimal instead of failing (slower, and only then)."""
    try:
        return _DECODER.decode(text)
    except msgspec.ValidationError:
        return json.loads(text, parse_float=Decimal, parse_int=_integer, parse_constant=_not_json)


def _integer(text: str) -> int | Decimal:
    return int(text) if len(text) < 19 else Decimal(text)


def _not_json(name: str) -> Any:
    raise msgspec.DecodeError(f"{name} is not JSON")


def encode(value: Any) -> bytes:
    return _ENCODER.encode(value)
