"""librdkafka clients as hps wants them: bad settings as `ConfigError`, and its logs and errors in
Python logging, rate-limited.

Left alone, librdkafka prints every connection failure to stderr from its own threads (hundreds of
lines for a dead broker, several a second) and a setting out of range surfaces as a raw
`KafkaException`. Here:

- `make_client(factory, conf, settings, what)` builds a `Consumer` / `Producer` / `AdminClient`
  and turns librdkafka's refusal of a property into a `ConfigError` naming the hps setting it came
  from (`settings` maps librdkafka property → our name, e.g. "max.partition.fetch.bytes" →
  "update_source.receive_buffer_size");
- `client_logging(logger, name, ...)` returns the `logger` and `error_cb` properties to add to a
  client's configuration: librdkafka's own lines go to `logger` at DEBUG (connection failures,
  which `error_cb` reports once) or at their level, rate-limited per facility; `error_cb` keeps the
  last error (`ClientErrors.last`) and calls back the owner, which says it in one line;
- `RateLimitedLog`: at most one line per key every `interval_s`, with the count of the lines held back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from hps.errors import ConfigError

#: Seconds between two lines of one kind (per table, per broker) from a rate-limited log.
LOG_INTERVAL_S = 10.0

#: The property librdkafka names: 'Configuration property "x" value ...', 'No such configuration property: "x"'.
_PROPERTY = re.compile(r'[Cc]onfiguration property:? "?([A-Za-z0-9_.]+)"?')


class RateLimitedLog:
    """At most one log line per key every `interval_s` seconds; the next one says how many were held back.

    Thread-safe. `log(level, key, msg, *args)` returns True when it wrote the line."""

    def __init__(self, logger: logging.Logger, interval_s: float | None = None) -> None:
        self.logger = logger
        self.interval_s = LOG_INTERVAL_S if interval_s is None else float(interval_s)
        self._lock = threading.Lock()
        self._state: dict[Any, tuple[float, int]] = {}  # key -> (time of the last line, lines held back since)

    def log(self, level: int, key: Any, msg: str, *args: Any) -> bool:
        """Log `msg % args` at `level` unless a line of `key` was written less than `interval_s` ago."""
        now = time.monotonic()
        with self._lock:
            last, held = self._state.get(key, (-1e18, 0))
            if now - last < self.interval_s:
                self._state[key] = (last, held + 1)
                return False
            self._state[key] = (now, 0)
        if held:
            msg = f"{msg} (%d more like it in the last %.0f s)"
            args = (*args, held, now - last)
        self.logger.log(level, msg, *args)
        return True

    def forget(self, key: Any) -> None:
        """Reset `key`, so that its next line is written at once (e.g. after a recovery)."""
        with self._lock:
            self._state.pop(key, None)


@dataclass
class ClientErrors:
    """What a client's `error_cb` saw: the last error's text and code name, and how many."""

    last: str = ""
    last_code: str = ""
    count: int = 0
    all_brokers_down: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, err: Any) -> None:
        with self._lock:
            self.last = err.str()
            self.last_code = err.name()
            self.count += 1
            self.all_brokers_down = err.name() == "_ALL_BROKERS_DOWN" or (
                self.all_brokers_down and err.name() == "_TRANSPORT")

    def clear_down(self) -> None:
        with self._lock:
            self.all_brokers_down = False


class _LibrdkafkaLogger:
    """The object confluent-kafka calls as `logger.log(level, "%s [%s] %s", facility, client, text)`."""

    def __init__(self, limiter: RateLimitedLog, name: str) -> None:
        self._limiter = limiter
        self._name = name

    def log(self, level: int, fmt: str, *args: Any) -> None:
        facility = str(args[0]) if args else ""
        text = str(args[-1]) if args else fmt
        # FAIL / ERROR lines are connection failures that error_cb reports once, in our words
        if facility in ("FAIL", "ERROR") or level < logging.WARNING:
            self._limiter.logger.debug("%s: librdkafka %s: %s", self._name, facility, text)
        else:
            self._limiter.log(level, ("librdkafka", self._name, facility), "%s: librdkafka %s: %s",
                              self._name, facility, text)


def client_logging(logger: logging.Logger, name: str, on_error: Callable[[Any], None] | None = None,
                   interval_s: float | None = None) -> tuple[dict[str, Any], ClientErrors]:
    """librdkafka properties that route a client's logs and errors to `logger` (see the module docstring).

    Returns `(properties, errors)`: add `properties` to the client's configuration; `errors` holds
    the last error seen. `on_error(KafkaError)` runs on every error, in the thread that polls the client."""
    limiter = RateLimitedLog(logger, interval_s)
    errors = ClientErrors()

    def error_cb(err: Any) -> None:
        errors.record(err)
        if on_error is not None:
            on_error(err)

    return {"logger": _LibrdkafkaLogger(limiter, name), "error_cb": error_cb}, errors


def make_client(factory: Callable[[dict[str, Any]], Any], conf: dict[str, Any], settings: dict[str, str],
                what: str) -> Any:
    """`factory(conf)`, with librdkafka's refusal of a property raised as `ConfigError`.

    `settings` maps a librdkafka property to the hps setting it was derived from, so the error
    names what the user wrote (e.g. `update_source.receive_buffer_size = 3000000000`). `what`
    names the client ("Kafka consumer of hps.volatile.host")."""
    import confluent_kafka

    try:
        return factory(conf)
    except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
        text = str(exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else exc).strip()
        match = _PROPERTY.search(text)
        prop = match.group(1) if match else None
        value = f" = {conf[prop]!r}" if prop in conf else ""
        if prop is not None and prop in settings:
            origin = f"{settings[prop]} (librdkafka {prop}{value})"
        elif prop is not None:
            origin = f"librdkafka property {prop}{value}"
        else:
            origin = "its librdkafka configuration"
        raise ConfigError(f"{what}: {origin} was refused: {text}") from None
