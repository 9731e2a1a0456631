"""Showing text that came from the network to a person: in a log line or on a terminal.

A peer chooses its hello name, its topics, the reason and detail of its bye, and (through a mesh CA
that signs what it is given) even a certificate name. Printed as they are, such strings forge log
lines ("b\\n2025-01-01 ... INFO peer x up"), move the cursor or recolour the terminal (ESC, CSI),
reverse text (U+202E) or, in a rich table, become colour and hyperlink markup ("[link=...]"). The
house rule (docs/DESIGN.md, "Security model") is that anything a peer names is escaped before it
reaches a log or a terminal. This module is the one place that says how:

- `safe_text(s)`: one printable line for a remote string. Control and format characters (C0, DEL,
  C1, bidi overrides, zero-width and line/paragraph separators, surrogates, unassigned code points)
  become visible escapes (`\\n`, `\\x1b`, `\\u202e`), a backslash becomes `\\\\` so that an escape
  cannot be faked, and long strings are cut. Log call sites wrap every remote value in it:
  `log.info("peer %s up", safe_text(link.name))`.
- `safe_markup(s)`: `safe_text` and then rich's markup escape, for the rare place that must build a
  markup string; tables should instead put `rich.text.Text(safe_text(s))` in their cells (a `Text` is
  never parsed as markup).
- `SafeFormatter` / `install_logging`: belt and braces for the daemon's log. Every record's final
  message has its control characters escaped, so a call site that forgot `safe_text` still writes
  exactly one line per record. (It does not escape backslashes: the message is ours, not a peer's,
  and doubling every backslash of a Windows path or a regex would only make logs harder to read.)
"""

from __future__ import annotations

import logging
import sys
import unicodedata
from typing import IO, Any, Final

__all__ = ["SAFE_TEXT_LIMIT", "SafeFormatter", "escape_controls", "install_logging", "safe_markup",
           "safe_text"]

# Long enough for any name, topic or reason a well-behaved peer sends (names are at most 64 characters,
# see identity.validate_node_name); short enough that one remote string cannot make a log line huge.
SAFE_TEXT_LIMIT: Final = 200

# Categories escaped: Cc (C0, DEL, C1: newline, ESC, CSI...), Cf (format: bidi overrides and isolates,
# zero-width characters, soft hyphen, BOM), Zl / Zp (line and paragraph separators, which some viewers
# break lines on), Cs (lone surrogates: they cannot even be encoded for stderr), Co (private use) and
# Cn (unassigned: a terminal may treat them as anything).
_ESCAPED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_SHORT: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    short = _SHORT.get(c)
    if short is not None:
        return short
    cp = ord(c)
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _needs_escape(c: str) -> bool:
    return unicodedata.category(c) in _ESCAPED_CATEGORIES


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every control or format character written as a visible escape; nothing else changes.

    `keep_newlines` leaves "\\n" alone (for tracebacks, whose lines are ours)."""
    if text.isprintable():   # the common case, in C: ASCII letters, digits, punctuation and spaces
        return text
    return "".join(
        _escape_char(c) if _needs_escape(c) and not (keep_newlines and c == "\n") else c for c in text
    )


def safe_text(value: Any, *, limit: int | None = SAFE_TEXT_LIMIT) -> str:
    """A remote string (or any value: it is str()-ed) as one printable line of at most about `limit`
    characters: control characters escaped, backslashes doubled, the rest cut with a count of what was cut.

    None is shown as "?" (a peer that has not said its name yet, say) rather than "None"."""
    if value is None:
        return "?"
    text = value if isinstance(value, str) else str(value)
    cut = 0
    if limit is not None and len(text) > limit:
        # Cut before escaping, so that the bound holds for the input as well as the output
        # (an escape is at most 10 characters).
        cut = len(text) - limit
        text = text[:limit]
    text = escape_controls(text.replace("\\", "\\\\"))
    return f"{text}…(+{cut})" if cut else text


def safe_markup(value: Any, *, limit: int | None = SAFE_TEXT_LIMIT) -> str:
    """`safe_text` made inert inside a rich markup string ("[red]" shows as "[red]", not as colour)."""
    from rich.markup import escape

    return escape(safe_text(value, limit=limit))


class SafeFormatter(logging.Formatter):
    """A Formatter whose every line is one record: control characters in the message escaped.

    The message (after %-formatting with its arguments) is escaped, so that a remote string that
    reached a log call without `safe_text` cannot start a new line, move the cursor or change colour.
    A traceback keeps its newlines (they are Python's), but other control characters in it are escaped
    too, since an exception message may quote a peer."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name
        # record.message was set by format() just before this call and is recomputed by every
        # formatter, so replacing it here does not change what another handler sees.
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return escape_controls(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return escape_controls(super().formatStack(stack_info), keep_newlines=True)


def install_logging(level: int | str, *, fmt: str, stream: IO[str] | None = None) -> None:
    """`logging.basicConfig(level=, stream=, format=)` with a SafeFormatter. Called once by the CLI
    before the daemon (or the simulator) starts. Like basicConfig, it adds no handler when the root
    logger already has one (a test runner's, or an embedding program's); such a handler that uses a
    plain Formatter is given the SafeFormatter equivalent, so that the daemon's log is escaped either way."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        handler.setFormatter(SafeFormatter(fmt))
        root.addHandler(handler)
    else:
        for existing in root.handlers:
            current = existing.formatter
            if current is None or type(current) is logging.Formatter:
                existing.setFormatter(SafeFormatter(current._fmt if current is not None else fmt,
                                                    current.datefmt if current is not None else None))
    root.setLevel(level.upper() if isinstance(level, str) else level)
