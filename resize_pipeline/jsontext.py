"""Text that every file name survives: JSON with an explicit escape for bytes that are not UTF-8.

A Linux file name is bytes; Python reads ``b"bad\\xff.jpg"`` as ``"bad\\udcff.jpg"`` (surrogateescape).
Such a `str` cannot be encoded as UTF-8, so a plain ``json.dumps(..., ensure_ascii=False)`` followed
by ``.encode("utf-8")`` fails, and writing it raw would make the file invalid UTF-8. `dumps` writes
the lone surrogate as the JSON escape ``\\udcff`` instead: the document stays valid UTF-8, everything
else keeps its readable form (byte-identical to before for valid names), and ``json.loads`` returns
the same `str`, which ``os.fsencode`` turns back into the original bytes.

Where there is no JSON layer (a Parquet string column, a log line), `display` writes those bytes as
``\\xff`` (Python's ``backslashreplace``).
"""

from __future__ import annotations

import json
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(m: re.Match) -> str:
    return f"\\u{ord(m.group()):04x}"


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps(obj, ensure_ascii=False, **kwargs)``, lone surrogates written as ``\\uXXXX``."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    return _SURROGATE.sub(_escape, text) if _SURROGATE.search(text) else text


def display(text: str) -> str:
    """`text` as valid UTF-8: bytes of a name that are not UTF-8 shown as ``\\xNN``."""
    if not _SURROGATE.search(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
