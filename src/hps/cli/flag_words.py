"""Error messages in the words of the command line: `overwrite=True` → `--overwrite`.

The library's errors name Python parameters (`convert_file(..., overwrite=True)`); the CLI calls the
same functions, so before printing an `HpsError` it rewrites the parameters of the subcommand that
ran into its flags (each subcommand declares its `flags`: parameter → flag).
"""

from __future__ import annotations

import re
from typing import Mapping

#: "... or allow_pickle=True (convert_file)": the Python spelling given beside the CLI's, dropped.
_PYTHON_ALTERNATIVE = re.compile(r" or \w+=\S+ \(\w+\)")
#: "(hps convert --overwrite)": the CLI spelling in parentheses, redundant once the flag is named.
_CLI_ASIDE = re.compile(r" \(hps [a-z -]+(?: --[a-z-]+)*\)")


def flag_words(message: str, flags: Mapping[str, str]) -> str:
    """`message` with each `param=True` written as its flag, `param=value` as `--flag value` and a
    bare `param` (an identifier with an underscore) as `--flag`, for the `flags` (parameter → flag)
    of the subcommand that ran. Flags that take no value are those whose parameter is `=True`."""
    if not flags:
        return message
    message = _PYTHON_ALTERNATIVE.sub("", message)
    message = _CLI_ASIDE.sub("", message)
    for param, flag in flags.items():
        message = re.sub(rf"\b{param}=True\b", flag, message)
        message = re.sub(rf"\b{param}=(['\"]?)([^\s'\",;)]+)\1", rf"{flag} \2", message)
        if "_" in param:
            message = re.sub(rf"(?<![-\w]){param}\b", flag, message)
    return message
