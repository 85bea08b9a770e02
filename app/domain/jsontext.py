"""JSON text in and out with exact numbers: decimals decode to Decimal and encode back as
numbers, so 0.3 stays 0.3 and 1.10 stays 1.10 on the way through Python."""

from decimal import Decimal
from typing import Any

import msgspec

_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_ENCODER = msgspec.json.Encoder(decimal_format="number")


def decode(text: bytes | str) -> Any:
    return _DECODER.decode(text)


def encode(value: Any) -> bytes:
    return _ENCODER.encode(value)
