"""The control-plane store: routes, upstreams, admin users and request logs.

``open_store(url)`` returns a ``Store`` for ``sqlite:///...`` (embedded, the default) or
``postgresql://...`` (several gateways sharing one database); see docs/store.md.
"""

from isekai.store.backends import open_store
from isekai.store.base import (
    AlreadyExists,
    AuditQuery,
    AuditRecord,
    InvalidStoreURL,
    LastAdmin,
    NotFound,
    RequestLogQuery,
    Store,
    StoredItem,
    StoreError,
    VersionMismatch,
)
from isekai.store.request_log_writer import RequestLogWriter

__all__ = [
    "AlreadyExists",
    "AuditQuery",
    "AuditRecord",
    "InvalidStoreURL",
    "LastAdmin",
    "NotFound",
    "RequestLogQuery",
    "RequestLogWriter",
    "Store",
    "StoreError",
    "StoredItem",
    "VersionMismatch",
    "open_store",
]
