"""W3C trace context for the request path (compiled): parser, sampling, ids."""

def seed(data: bytes | None = None) -> None:
    """Reseed the id generator (32 bytes; os.urandom when None); done in every forked child."""

def parse(value: bytes) -> tuple[int, bytes, bytes, int] | None:
    """(version, trace_id, parent_id, flags) of a valid `traceparent`, or None."""

def sampled(trace_id: bytes, ratio: float) -> bool:
    """The sampling decision for a new trace with this id (TraceIdRatioBased)."""

def trace_id() -> bytes:
    """A new trace id (32 lower-case hex digits)."""

def span_id() -> bytes:
    """A new span id (16 lower-case hex digits)."""

def header_line(trace_id: bytes, span_id: bytes, sampled: bool) -> bytes:
    """The `traceparent` line (with CRLF) the gateway sends upstream."""
