"""Short-lived, single-use tokens that let a browser page open a realtime session without the API key.

A browser cannot set `Authorization` on a WebSocket. Its server (or the page, after the user types a
key into it) asks `POST /api/v1/realtime/tokens` with the key and hands the page a token that
- opens one realtime session only (nothing else accepts it),
- within `ttl_s` of being issued (60 s by default), and
- once: it is spent by the session it opens, so one seen in a proxy log or browser history is useless.

Tokens are signed with a key made when the server starts (none survive a restart; none need to).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

from qasr.errors import Overloaded

_PREFIX = "qrt_"
MAX_OUTSTANDING = 10_000
"""Unexpired tokens at once; more are refused (429) until some expire or are spent."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """Issues and redeems realtime tokens (see the module docstring). Used on the event loop only."""

    def __init__(self, ttl_s: float, secret: bytes | None = None) -> None:
        self.ttl_s = ttl_s
        self._secret = secret or secrets.token_bytes(32)
        self._outstanding: dict[str, float] = {}  # nonce -> expiry, until spent or expired

    def issue(self) -> tuple[str, float]:
        """A new token and its expiry (Unix time)."""
        self._prune()
        if len(self._outstanding) >= MAX_OUTSTANDING:
            raise Overloaded("Too many realtime tokens are outstanding; retry shortly.")
        nonce = secrets.token_hex(16)
        expires = time.time() + self.ttl_s
        payload = _b64(json.dumps({"n": nonce, "e": round(expires, 3), "p": "realtime"}).encode())
        self._outstanding[nonce] = expires
        return f"{_PREFIX}{payload}.{self._sign(payload)}", expires

    def redeem(self, token: str) -> bool:
        """True (and the token is spent) when `token` is one of ours, unexpired and unspent."""
        if not token.startswith(_PREFIX) or len(token) > 512:
            return False
        payload, _, signature = token[len(_PREFIX) :].partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return False
        try:
            claims = json.loads(_unb64(payload))
            nonce, expires, purpose = str(claims["n"]), float(claims["e"]), claims["p"]
        except (ValueError, KeyError, TypeError):
            return False
        if purpose != "realtime" or expires < time.time():
            return False
        return self._outstanding.pop(nonce, None) is not None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def _prune(self) -> None:
        now = time.time()
        for nonce in [n for n, e in self._outstanding.items() if e < now]:
            del self._outstanding[nonce]
