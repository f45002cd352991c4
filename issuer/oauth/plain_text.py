"""Text a person reads before approving: refused when it could show other than it says.

Control characters (Unicode category Cc: newlines, tabs, escapes and the C1 controls)
and the bidirectional formatting characters (U+202A–U+202E, U+2066–U+2069, U+200E,
U+200F, U+061C) let a requester lay out text so it reads differently than it is: a
right-to-left override in a creditor's name reverses what follows, a newline starts
what looks like another line of the page. CIBA's ``binding_message`` (§7.1: "plain
text") and every string of ``authorization_details`` shown on the approval page are held
to :func:`is_plain`.
"""

from __future__ import annotations

import re

_HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
REFUSED = "control characters (newlines, tabs…) and bidirectional formatting characters"


def is_plain(text: str) -> bool:
    """Whether ``text`` has neither control nor bidirectional formatting characters."""
    return _HIDDEN.search(text) is None
