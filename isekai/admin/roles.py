"""Admin API accounts: the roles a user can have and the password bounds, written once.

``cli.py`` (``isekai users add --role``), ``auth.py`` (permission checks) and ``schemas.py``
(the published request schemas) all import them from here.
"""

from __future__ import annotations

__all__ = ["MAX_PASSWORD_BYTES", "MIN_PASSWORD", "RANK", "ROLES"]

ROLES = ("admin", "editor", "viewer")  # most powerful first
RANK = {"viewer": 1, "editor": 2, "admin": 3}  # a role may do what every lower one may
MIN_PASSWORD = 12
MAX_PASSWORD_BYTES = 72  # bcrypt ignores what is longer; refuse it instead
