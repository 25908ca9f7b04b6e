"""API keys: who may call ``/v1``, and the identity their objects are stored under.

    keys = KeyRing(("sk-a",), "keys.txt")   # the keys given, and a file of them
    keys.identify("Bearer sk-a")            # -> "key_3a0b1c9d" (a fingerprint; never the key)
    keys.reload()                           # SIGHUP: the file read again

Keys are compared in constant time (``hmac.compare_digest`` against every key, whatever
matches first).  A key's fingerprint is the first 8 bytes of its SHA-256: the access log and the
store use it, so a key never appears in a log line or a database row.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from oxiserve.errors import APIError

log = logging.getLogger("oxiserve.keys")


class InvalidKey(APIError):
    """401, as OpenAI answers a missing or wrong key (the SDK raises AuthenticationError)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


def fingerprint(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class KeyRing:
    """The keys that open ``/v1`` (see the module docstring)."""

    def __init__(self, keys: tuple[str, ...] = (), path: str = "") -> None:
        self._given = tuple(k for k in keys if k)
        self._path = path
        self._keys: tuple[tuple[bytes, str], ...] = ()
        self.reload()

    @property
    def enabled(self) -> bool:
        """Whether keys are required: any key given, or a keys file (even one emptied later:
        emptying it locks everyone out rather than opening the server)."""
        return bool(self._given or self._path)

    def reload(self) -> int:
        """Read the keys file again (the keys given on the command line stay); returns how
        many keys there are.  A file that cannot be read keeps the keys it had."""
        keys = list(self._given)
        if self._path:
            try:
                lines = Path(self._path).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                if self._keys:
                    log.error("cannot read the keys file %s (%s): keeping the keys", self._path,
                              exc.strerror)  # fmt: skip
                    return len(self._keys)
                raise ValueError(
                    f"cannot read the keys file {self._path}: {exc.strerror}"
                ) from None
            keys += [
                line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")
            ]
        self._keys = tuple((k.encode("utf-8", "surrogatepass"), fingerprint(k)) for k in keys)
        return len(self._keys)

    def identify(self, authorization: str | None) -> str:
        """The fingerprint of the key in an ``Authorization`` header; raise InvalidKey if it is
        missing or matches no key."""
        if authorization is None or not authorization[:7].lower() == "bearer ":
            raise InvalidKey(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        offered = authorization[7:].strip().encode("utf-8", "surrogatepass")
        found = ""
        for key, print_ in self._keys:  # every key compared: the time says nothing of which
            if hmac.compare_digest(offered, key):
                found = print_
        if not found:
            raise InvalidKey("Incorrect API key provided.")
        return found
