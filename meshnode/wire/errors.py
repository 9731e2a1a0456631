"""The one exception family of the wire layer, with stable reason codes.

Reason codes are part of the protocol (protocol/SPEC.md lists them): tools, logs, counters and
golden vectors match on the code, never on the message text.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # packet header and envelope
    BAD_MAGIC = "bad_magic"
    UNSUPPORTED_VERSION = "unsupported_version"
    TRUNCATED = "truncated"
    TOO_LARGE = "too_large"
    TRAILING_DATA = "trailing_data"
    BAD_HEADER = "bad_header"
    UNKNOWN_KIND = "unknown_kind"
    BAD_BODY = "bad_body"
    BAD_SIGNATURE = "bad_signature"
    UNSIGNED = "unsigned"
    # ternary vectors
    BAD_TRIT = "bad_trit"
    BAD_ENCODING = "bad_encoding"
    BAD_DIMENSION = "bad_dimension"
    BAD_LENGTH = "bad_length"
    BAD_PADDING = "bad_padding"
    # framing and fragments
    BAD_FRAGMENT = "bad_fragment"
    REASSEMBLY_FULL = "reassembly_full"
    # session
    UNKNOWN_ORIGIN = "unknown_origin"
    PROTOCOL_VIOLATION = "protocol_violation"
    VERSION_REFUSED = "version_refused"


class WireError(ValueError):
    """Any malformed, oversized or unacceptable input met by the wire layer.

    `reason` is a stable code from `Reason`; `offset` is the byte offset in the input where the
    problem was found, when that is meaningful.
    """

    def __init__(self, reason: Reason, message: str, *, offset: int | None = None) -> None:
        self.reason = Reason(reason)
        self.offset = offset
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"{self.reason.value}: {message}{where}")


class CodecError(WireError):
    """A ternary vector could not be packed or unpacked."""


class PacketError(WireError):
    """A packet could not be encoded, decoded or verified."""


class FrameError(WireError):
    """Stream framing or fragment reassembly failed."""


class SessionError(WireError):
    """The peer broke the session protocol (wrong state, refused version)."""
