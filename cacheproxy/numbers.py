"""Numbers in protocol text: ASCII digits only. Pure.

HTTP's grammar is ABNF, where ``DIGIT`` is ``%x30-39`` (RFC 5234 appendix B.1;
RFC 9110 section 14.1.1 builds byte ranges from it, section 8.6 Content-Length,
section 10.2.3 delay-seconds). Python's ``int()`` and ``str.isdigit()`` take much
more: other scripts' digits (``"\\u0663"``, ARABIC-INDIC DIGIT THREE, is 3 to
``int()``), signs, underscores (``"1_000"``) and surrounding whitespace, and
``isdigit()`` is true of superscripts (``"\\u00b2"``) that ``int()`` then refuses
with a ValueError. Every number read from a request, a peer or an upstream goes
through here instead.
"""

from __future__ import annotations

import re

# An explicit class, not \d: \d is any Unicode decimal digit in a str pattern.
_DIGITS = re.compile(r"[0-9]+")
# Past 19 digits a number no longer fits a signed 64-bit offset: no file is that big.
MAX_DIGITS = 19


def is_digits(text: str) -> bool:
    """Whether ``text`` is one or more ASCII digits and nothing else."""
    return _DIGITS.fullmatch(text) is not None


def parse_digits(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """``text`` as a non-negative integer when it is 1 to ``max_digits`` ASCII
    digits; None for anything else (no sign, no space, no other script)."""
    if len(text) > max_digits or not is_digits(text):
        return None
    return int(text)
