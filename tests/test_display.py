"""What a peer names reaches a log or a terminal escaped (issue 16, item 6): `safe_text`, `safe_markup`,
and the escaping log formatter the CLI installs for the daemon and the simulator."""

from __future__ import annotations

import io
import logging

import pytest

from meshnode.display import SAFE_TEXT_LIMIT, SafeFormatter, escape_controls, install_logging, safe_markup, safe_text

FORGED = "b\n2025-01-01 00:00:00 INFO    meshnode.node: peer x (00) up[red]R[/red][link=http://x]L[/link]\x1b[2J"


def test_plain_names_pass_unchanged() -> None:
    for s in ("alpha", "gpu-box_1.lab", "peer up at 10.0.0.1:7400", "naïve café", "日本語", "a b"):
        assert safe_text(s) == s


@pytest.mark.parametrize("char, shown", [
    ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\x00", "\\x00"), ("\x1b", "\\x1b"), ("\x7f", "\\x7f"),
    ("\x9b", "\\x9b"),            # C1 CSI: a terminal takes it as ESC [
    ("\u202e", "\\u202e"),        # right-to-left override
    ("\u2066", "\\u2066"),        # left-to-right isolate
    ("\u200b", "\\u200b"),        # zero-width space
    ("\u2028", "\\u2028"), ("\u2029", "\\u2029"),
    ("\ufeff", "\\ufeff"), ("\udc80", "\\udc80"), ("\U000e0001", "\\U000e0001"),
])
def test_control_and_format_characters_are_shown_escaped(char: str, shown: str) -> None:
    assert safe_text(f"a{char}b") == f"a{shown}b"
    assert escape_controls(f"a{char}b") == f"a{shown}b"


def test_one_line_always_and_no_fake_escapes() -> None:
    out = safe_text(FORGED)
    assert "\n" not in out and "\x1b" not in out and out.isprintable()
    # a literal backslash-n is not the same as a newline: backslashes are doubled
    assert safe_text("a\\nb") == "a\\\\nb" and safe_text("a\nb") == "a\\nb"
    assert safe_text(None) == "?" and safe_text(3) == "3" and safe_text(b"x\n") == "b'x\\\\n'"


def test_long_strings_are_cut_with_a_count() -> None:
    out = safe_text("x" * 70_000)
    assert out == "x" * SAFE_TEXT_LIMIT + f"…(+{70_000 - SAFE_TEXT_LIMIT})"
    assert safe_text("x" * 500, limit=None) == "x" * 500
    # the bound is on what is read, so escapes cannot make it unbounded either
    assert len(safe_text("\x1b" * 10_000)) < 5 * SAFE_TEXT_LIMIT


def test_safe_markup_is_inert_in_rich() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=300, force_terminal=True, color_system="truecolor", highlight=False)
    console.print("peer " + safe_markup(FORGED))
    out = console.file.getvalue()
    assert "[red]R[/red]" in out and "[link=http://x]" in out
    assert "\x1b]8;" not in out          # no hyperlink escape
    assert "\x1b[31m" not in out and "\x1b[2J" not in out
    assert out.count("\n") == 1


def _log_through(formatter: logging.Formatter, msg: str, *args: object, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test_display.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)     # whatever level an earlier test (a CLI run) left on the root logger
    logger.addHandler(handler)
    try:
        if exc:
            try:
                raise ValueError("bad\x1b[31m name\nsecond line")
            except ValueError:
                logger.exception(msg, *args)
        else:
            logger.warning(msg, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_the_log_formatter_writes_one_line_per_record() -> None:
    fmt = "%(levelname)s %(name)s: %(message)s"
    plain = _log_through(logging.Formatter(fmt), "peer %s up", FORGED)
    assert plain.count("\n") == 2 and "\x1b" in plain          # what the attack run saw
    safe = _log_through(SafeFormatter(fmt), "peer %s up", FORGED)
    assert safe.count("\n") == 1 and "\x1b" not in safe
    assert "peer b\\n2025-01-01" in safe
    # already-escaped text is left as it is (safe_text at the call site and the formatter agree)
    assert _log_through(SafeFormatter("%(message)s"), "peer %s up", safe_text(FORGED)) == \
        f"peer {safe_text(FORGED)} up\n"
    # A traceback keeps its own lines, but nothing in it reaches the terminal raw.
    tb = _log_through(SafeFormatter(fmt), "handling %s failed", "b\nx", exc=True)
    first, *rest = tb.splitlines()
    assert first.endswith("handling b\\nx failed") and rest[0].startswith("Traceback")
    assert "\x1b" not in tb and "ValueError: bad\\x1b[31m name" in tb


def test_install_logging_escapes_the_root_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    install_logging("info", fmt="%(levelname)s %(message)s", stream=stream)
    assert isinstance(root.handlers[0].formatter, SafeFormatter) and root.level == logging.INFO
    logging.getLogger("meshnode.node").info("peer %s up", "b\nINFO forged")
    assert stream.getvalue() == "INFO peer b\\nINFO forged up\n"
    # Called again (a second CLI command in one process), it adds no second handler.
    install_logging("debug", fmt="%(message)s", stream=stream)
    assert len(root.handlers) == 1


def test_install_logging_makes_an_existing_plain_handler_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    stream = io.StringIO()
    existing = logging.StreamHandler(stream)
    existing.setFormatter(logging.Formatter("%(message)s"))
    monkeypatch.setattr(root, "handlers", [existing])
    monkeypatch.setattr(root, "level", root.level)
    install_logging("info", fmt="unused %(message)s")
    logging.getLogger("meshnode.node").warning("%s", "a\rb")
    assert stream.getvalue() == "a\\rb\n" and root.handlers == [existing]
