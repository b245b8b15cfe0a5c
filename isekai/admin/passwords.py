"""The admin password policy: `check_password`.

A password must have at least ``MIN_PASSWORD`` characters and at most ``MAX_PASSWORD_BYTES``
bytes (bcrypt ignores the rest), and must not be guessable from a list: it is refused when,
compared case-insensitively, it

- is one of the most common passwords (``common-passwords.txt``, shipped with the package:
  the 30,000 most frequent of a public 10-million-password corpus);
- is such a password with digits and symbols around it (``password1234``, ``!!dragon2024``);
- is a run of a keyboard row or of the alphabet or digits (``qwertyuiopas``,
  ``123456789012``), in either direction, or has fewer than 4 different characters
  (``abababababab``);
- is or contains the username (usernames of 3 characters or more; a shorter one is only
  compared whole).

``cli.py`` (``isekai users add``), ``auth.ensure_initial_admin`` and the users endpoints all
apply this one rule.
"""

from __future__ import annotations

import functools
import importlib.resources

from isekai.admin.roles import MAX_PASSWORD_BYTES, MIN_PASSWORD

__all__ = ["check_password", "common_passwords"]

MIN_DISTINCT = 4  # different characters a password needs
_EDGES = "0123456789!@#$%^&*()-_=+[]{};:'\",.<>/?\\|`~ "
# keyboard rows and columns, the alphabet and the digits: a password that is a stretch of one
# of these (repeated, either direction) is a walk, however long
_WALKS = (
    "1234567890",
    "abcdefghijklmnopqrstuvwxyz",
    "qwertyuiop",
    "asdfghjkl",
    "zxcvbnm",
    "qwertzuiop",
    "azertyuiop",
    "qsdfghjklm",
    "wxcvbn",
    "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
    "qazwsxedcrfvtgbyhnujmikolp",
    "zaqxswcdevfrbgtnhymjukilop",
    "!@#$%^&*()",
    "qwertyuiopasdfghjklzxcvbnm",
)


@functools.cache
def common_passwords() -> frozenset[str]:
    """The bundled list of common passwords, lower-case."""
    text = (
        importlib.resources.files("isekai.admin")
        .joinpath("common-passwords.txt")
        .read_text(encoding="utf-8")
    )
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def _is_walk(text: str) -> bool:
    for walk in _WALKS:
        for line in (walk, walk[::-1]):
            # long enough to hold any stretch of the password's length, wrapping around
            repeated = line * (len(text) // len(line) + 2)
            if text in repeated:
                return True
    return False


def check_password(password: str, username: str | None = None) -> None:
    """``ValueError`` (saying why) unless ``password`` follows the policy above."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password must be at most {MAX_PASSWORD_BYTES} bytes (UTF-8)")
    folded = password.casefold()
    if username:
        name = username.casefold()
        if folded == name or (len(name) >= 3 and name in folded):
            raise ValueError("the password must not contain the username")
    common = common_passwords()
    if folded in common:
        raise ValueError("the password is one of the most common passwords: choose another")
    core = folded.strip(_EDGES)
    if core != folded and len(core) >= 4 and core in common:
        raise ValueError(
            f"the password is a common password ({core!r}) with digits or symbols added: "
            "choose another"
        )
    if len(set(folded)) < MIN_DISTINCT:
        raise ValueError(f"the password must have at least {MIN_DISTINCT} different characters")
    if _is_walk(folded) or (core and core != folded and _is_walk(core) and len(core) >= 6):
        raise ValueError("the password is a keyboard or alphabet run: choose another")
