"""Reading a ps.json file: bounded size, UTF-8, JSON nesting, duplicate keys; JSON path names.

Every failure is a `ConfigError` naming the file. Numbers JSON cannot hold exactly (NaN,
Infinity, 1e400, integers of hundreds of digits) are read as non-finite floats, which the
parser then refuses with the JSON path of the key that holds them.
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import warnings
from typing import Any

from hps.errors import ConfigError

#: A ps.json larger than this is refused unread (a real one is a few KiB).
MAX_PS_JSON_BYTES = 64 << 20
#: Integers with more digits than this are read as ±inf (and then refused where a number is expected).
MAX_INT_DIGITS = 100

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]{1,120}")
_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60


def short_repr(value: Any) -> str:
    """`repr(value)` cut to about 60 characters per string / container level (for messages);
    never raises (Python refuses to print ints of more than 4300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<{'negative ' if value < 0 else ''}integer of {value.bit_length()} bits>"
    try:
        return _SHORT.repr(value)
    except Exception:  # an object whose repr fails, an int inside a container too long to print
        return f"<{type(value).__name__}>"


def join_path(path: str, key: Any) -> str:
    """JSON path of `key` inside `path`: `models[0].gpucacheper`; odd keys as `models[0]['a b']`."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_SHORT.repr(key)}]"


def read_ps_json(path: str | os.PathLike, warning_class: type[Warning]) -> Any:
    """The JSON value in the file at `path` (UTF-8, an optional BOM), or `ConfigError` naming it.

    A key given twice in one object keeps its last value (as HugeCTR's nlohmann::json does)
    and earns a `warning_class` warning naming the key's JSON path."""
    try:
        with open(path, "rb") as f:  # read(n) allocates n bytes first: size the read by the file's size
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(size, MAX_PS_JSON_BYTES) + 1 if size else MAX_PS_JSON_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ps.json: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL or an unencodable character in the path
        raise ConfigError(f"{short_repr(os.fspath(path))}: not a usable file name: {exc}") from None
    if len(data) > MAX_PS_JSON_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_PS_JSON_BYTES} bytes, not a ps.json")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                          f"(line {line})") from None
    return parse_json_text(text, str(path), warning_class)


def parse_json_text(text: str, where: str, warning_class: type[Warning]) -> Any:
    """`json.loads(text)` with duplicate keys reported and bounded numbers; errors name `where`."""
    duplicates: dict[int, list[str]] = {}

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        twice: list[str] = []
        for key, value in items:
            if key in obj and key not in twice:
                twice.append(key)
            obj[key] = value
        if twice:
            duplicates[id(obj)] = twice
        return obj

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_int=_parse_int, parse_float=float)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply (a ps.json has 3 levels)") from None
    if duplicates:
        _warn_duplicates(value, duplicates, where, warning_class)
    return value


def _parse_int(text: str) -> int | float:
    if len(text) > MAX_INT_DIGITS:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def _warn_duplicates(value: Any, duplicates: dict[int, list[str]], where: str,
                     warning_class: type[Warning]) -> None:
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key in duplicates.get(id(node), ()):
                warnings.warn(f"{where}: {join_path(path, key)}: key given twice in one JSON object; the last "
                              "value is used (as in HugeCTR)", warning_class, stacklevel=5)
            children = [(v, join_path(path, k)) for k, v in node.items() if isinstance(v, (dict, list))]
        else:
            children = [(v, f"{path}[{i}]") for i, v in enumerate(node) if isinstance(v, (dict, list))]
        stack.extend(reversed(children))  # document order
