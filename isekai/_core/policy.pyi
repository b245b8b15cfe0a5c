"""The policy contract on the request path (compiled): see policy.pyx."""

from typing import Any

class Answer:
    """A response a policy sends instead of letting the request continue (status 200-599)."""

    status: int
    headers: tuple[tuple[str | bytes, str | bytes], ...]
    body: bytes
    request_id_at: int
    @staticmethod
    def error(
        status: int,
        message: str,
        policy: str,
        headers: tuple[tuple[str | bytes, str | bytes], ...] = ...,
    ) -> Answer:
        """A JSON refusal in the gateway's error envelope; the request id is filled in when
        it is sent."""
    def __init__(
        self,
        status: int,
        headers: tuple[tuple[str | bytes, str | bytes], ...] = ...,
        body: bytes = ...,
    ) -> None: ...

class ResponseHead:
    """Status and fields of a response before its head is written (the response phase)."""

    status: int
    def __init__(self, status: int, parts: list[bytes] | None = ...) -> None: ...
    def header(self, name: str | bytes) -> str | None: ...
    def set_header(self, name: str | bytes, value: str | bytes) -> None: ...
    def add_header(self, name: str | bytes, value: str | bytes) -> None: ...
    def remove_header(self, name: str | bytes) -> None: ...
    def headers(self) -> list[tuple[str, str]]: ...

class CorePolicy:
    """Base of every policy on the request path."""

    name: str
    type_name: str
    slot: int
    requests: bool
    responses: bool
    completes: bool
    is_async: bool
    deadline: float
    body_limit: int
    def __init__(self) -> None: ...
    def close(self) -> None: ...
    def run_request(self, req: Any) -> Any: ...
    def run_response(self, req: Any, head: ResponseHead) -> None: ...
    def run_complete(self, req: Any) -> None: ...

class PythonPolicy(CorePolicy):
    """The adapter for policies written in Python."""

    target: Any
    def __init__(self, target: Any) -> None: ...
    def start_async(self, req: Any) -> Any: ...
