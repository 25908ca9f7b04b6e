"""Rate limits per API key (or client address): requests, tokens per minute, open streams.

Token buckets, as OpenAI limits: a key's request bucket holds ``burst`` requests and refills at
``rps``; its token bucket holds a minute's ``tpm`` and refills continuously.  Over a limit ->
429 ``rate_limit_exceeded`` with ``Retry-After`` (and ``retry-after-ms``, which the SDKs read
first); every response carries ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``.

    limits = Limits(rps=5, burst=10, tpm=100_000, streams=4)
    headers = limits.admit("key_1a2b", tokens=1200)   # raises RateLimited when over
    limits.stream_opened("key_1a2b") ... limits.stream_closed("key_1a2b")

With a bus the limits are global: each replica still decides alone (no round trip per
request), and tells the others every 100 ms what it took (``take_spent``/``absorb``) and
how many streams each caller has open on it (``open_streams``/``streams_elsewhere``), so a
caller's budget is shared by every replica within that delay (``oxiserve.bus.limits``).

At most ``MAX_KEYS`` callers are tracked (least recently seen dropped first): a bucket that has
refilled is the same as a new one, so forgetting an idle caller changes nothing, and a flood of
distinct keys or addresses cannot grow the state without bound.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from oxiserve.errors import APIError

MAX_KEYS = 10_000
STREAMS_STALE = 3.0  # seconds another replica's open-stream counts hold without being repeated
Headers = tuple[tuple[str, str], ...]


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


@dataclass(slots=True)
class _Bucket:
    level: float
    at: float

    def refill(self, now: float, rate: float, size: float) -> None:
        self.level = min(size, self.level + (now - self.at) * rate)
        self.at = now


@dataclass(slots=True)
class _Caller:
    requests: _Bucket
    tokens: _Bucket
    streams: int = 0


def _reset(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``20ms``."""
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


class Limits:
    """See the module docstring; ``rps``/``tpm``/``streams`` 0 switch that limit off."""

    def __init__(
        self,
        rps: float = 0.0,
        burst: int = 0,
        tpm: int = 0,
        streams: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rps, self.tpm, self.streams = rps, tpm, streams
        self.burst = float(burst or max(1, math.ceil(rps)))
        self._clock = clock
        self._callers: OrderedDict[str, _Caller] = OrderedDict()
        self.shared = False  # a bus shares them: what is taken here is noted for the others
        self._spent: dict[str, list[float]] = {}  # caller -> [requests, tokens] since told
        self._streams_changed: set[str] = set()
        # caller -> replica -> (its open streams, when it said so)
        self._elsewhere: dict[str, dict[str, tuple[int, float]]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.rps or self.tpm or self.streams)

    def _caller(self, who: str, now: float) -> _Caller:
        caller = self._callers.get(who)
        if caller is None:
            caller = _Caller(_Bucket(self.burst, now), _Bucket(float(self.tpm), now))
            self._callers[who] = caller
            while len(self._callers) > MAX_KEYS:
                oldest, state = next(iter(self._callers.items()))
                if state.streams:  # never forget a caller with streams open
                    self._callers.move_to_end(oldest)
                    break
                del self._callers[oldest]
        else:
            self._callers.move_to_end(who)
        return caller

    def admit(self, who: str, tokens: int = 0, *, stream: bool = False) -> Headers:
        """Take one request (and ``tokens``) from ``who``'s buckets; the headers to send.
        Raises RateLimited (with the same headers and Retry-After) when over a limit."""
        now = self._clock()
        caller = self._caller(who, now)
        requests, budget = caller.requests, caller.tokens
        waits: list[float] = []
        if self.rps:
            requests.refill(now, self.rps, self.burst)
            if requests.level < 1:
                waits.append((1 - requests.level) / self.rps)
        if self.tpm:
            budget.refill(now, self.tpm / 60.0, float(self.tpm))
            if tokens > self.tpm:
                raise RateLimited(
                    f"Request too large: {tokens} tokens asked for, the limit is {self.tpm} "
                    "tokens per minute.", headers=self._headers(caller),
                )  # fmt: skip
            if budget.level < tokens:
                waits.append((tokens - budget.level) / (self.tpm / 60.0))
        if stream and self.streams and caller.streams + self._others(who, now) >= self.streams:
            raise RateLimited(
                f"Too many open streams: at most {self.streams} at once.",
                headers=(("retry-after", "1"), *self._headers(caller)),
            )  # fmt: skip
        if waits:
            wait = max(waits)
            raise RateLimited(
                f"Rate limit reached: retry in {_reset(wait)}.",
                headers=(("retry-after", str(max(1, math.ceil(wait)))),
                         ("retry-after-ms", str(max(1, math.ceil(wait * 1000)))),
                         *self._headers(caller)),
            )  # fmt: skip
        if self.rps:
            requests.level -= 1
        if self.tpm:
            budget.level -= tokens
        if self.shared:
            spent = self._spent.setdefault(who, [0.0, 0.0])
            spent[0] += 1
            spent[1] += tokens
        return self._headers(caller)

    # --- shared by a bus ---------------------------------------------------------------------

    def take_spent(self) -> dict[str, list[float]]:
        """What was taken here since the last call, per caller: [requests, tokens]."""
        spent, self._spent = self._spent, {}
        return spent

    def absorb(self, who: str, requests: float, tokens: float) -> None:
        """Another replica took this from ``who``'s budget: it is gone here too."""
        now = self._clock()
        caller = self._caller(who, now)
        # A bucket may owe at most one more bucketful: what others took cannot lock a caller
        # out for longer than refilling twice takes.
        if self.rps:
            caller.requests.refill(now, self.rps, self.burst)
            caller.requests.level = max(-self.burst, caller.requests.level - requests)
        if self.tpm:
            caller.tokens.refill(now, self.tpm / 60.0, float(self.tpm))
            caller.tokens.level = max(-float(self.tpm), caller.tokens.level - tokens)

    def open_streams(self, every: bool = False) -> dict[str, int]:
        """Callers' open streams here: those changed since the last call (``every``: all
        with one open, as a replica repeats them so others' counts never go stale)."""
        changed, self._streams_changed = self._streams_changed, set()
        if every:
            changed |= {who for who, caller in self._callers.items() if caller.streams}
        return {who: self._callers[who].streams if who in self._callers else 0
                for who in changed}  # fmt: skip

    def streams_elsewhere(self, replica: str, counts: dict[str, int]) -> None:
        now = self._clock()
        for who, count in counts.items():
            self._elsewhere.setdefault(who, {})[replica] = (count, now)
        while len(self._elsewhere) > MAX_KEYS:  # the oldest callers said of go first
            del self._elsewhere[next(iter(self._elsewhere))]

    def streams_open_elsewhere(self, who: str) -> int:
        """``who``'s open streams on the other replicas, as they last said."""
        return self._others(who, self._clock())

    def requests_left(self, who: str) -> float:
        """What ``who``'s request bucket holds now (its burst for an unknown caller)."""
        caller = self._callers.get(who)
        if caller is None:
            return self.burst
        caller.requests.refill(self._clock(), self.rps, self.burst)
        return caller.requests.level

    def _others(self, who: str, now: float) -> int:
        replicas = self._elsewhere.get(who)
        if not replicas:
            return 0
        for replica, (_, said) in list(replicas.items()):
            if now - said > STREAMS_STALE:  # a replica that stopped saying: gone
                del replicas[replica]
        return sum(count for count, _ in replicas.values())

    def _headers(self, caller: _Caller) -> Headers:
        headers: list[tuple[str, str]] = []
        if self.rps:
            level = caller.requests.level
            headers += [
                ("x-ratelimit-limit-requests", str(int(self.burst))),
                ("x-ratelimit-remaining-requests", str(max(0, math.floor(level)))),
                ("x-ratelimit-reset-requests", _reset((self.burst - level) / self.rps)),
            ]
        if self.tpm:
            level = caller.tokens.level
            headers += [
                ("x-ratelimit-limit-tokens", str(self.tpm)),
                ("x-ratelimit-remaining-tokens", str(max(0, math.floor(level)))),
                ("x-ratelimit-reset-tokens", _reset((self.tpm - level) / (self.tpm / 60.0))),
            ]
        return tuple(headers)

    def stream_opened(self, who: str) -> None:
        self._caller(who, self._clock()).streams += 1
        if self.shared:
            self._streams_changed.add(who)

    def stream_closed(self, who: str) -> None:
        caller = self._callers.get(who)
        if caller is not None and caller.streams:
            caller.streams -= 1
            if self.shared:
                self._streams_changed.add(who)

    @property
    def tracked(self) -> int:
        return len(self._callers)
