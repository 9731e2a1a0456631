"""The human tables of `meshnode workers`: one state per worker, progress and accuracy in columns, and
values a daemon gets wrong (a missing field, a wrong type) printed as "-" rather than crashing."""

from __future__ import annotations

from rich.console import Console

from meshnode.cli_tables import rounds_table, workers_table


def _text(renderable) -> str:
    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()


TRAINER = {"name": "lora", "type": "trainer", "state": "running", "error": None,
           "status": {"state": "training", "round": 3, "rounds_target": 8, "accuracy": 0.71, "initial_accuracy": 0.5,
                      "loss": 0.41234, "doing": None,
                      "taught": {"rows": 200, "teacher_round": 4},
                      "history": [{"round": r, "merged": 2, "missing": [], "loss": 0.5 - r / 10, "accuracy": None,
                                   "bytes_sent": 4096, "bytes_received": 8192, "train_s": 1.5, "wait_s": 0.2,
                                   "eval_s": 0.0} for r in range(3)]},
           "metrics": {"bytes_sent": 12288, "bytes_received": 24576, "rounds": 3}}


def test_one_state_per_worker_the_workers_own_while_the_node_runs_it() -> None:
    text = _text(workers_table([TRAINER]))
    assert "training" in text and "running" not in text
    assert "3/8" in text and "0.500 -> 0.710" in text and "0.4123" in text
    assert "taught 200 rows by teacher round 4" in text
    failed = {**TRAINER, "state": "failed", "error": "ValueError: boom"}
    text = _text(workers_table([failed]))
    assert "failed" in text and "error: ValueError: boom" in text


def test_bad_fields_print_as_dashes() -> None:
    odd = {"name": "x", "type": "trainer", "state": "running",
           "status": {"state": None, "round": "three", "accuracy": "high", "loss": [1], "history": "no"},
           "metrics": "nope"}
    text = _text(workers_table([odd, "not a worker"]))
    assert "x" in text and "high" not in text
    assert rounds_table(odd) is None


def test_the_rounds_table_lists_the_last_rounds() -> None:
    text = _text(rounds_table(TRAINER))
    assert "lora: last rounds" in text
    assert len([line for line in text.splitlines() if line.strip().startswith(("0 ", "1 ", "2 "))]) == 3
    assert "4.0 KiB" in text and "8.0 KiB" in text


def test_full_shows_every_field() -> None:
    assert "rounds_target=8" in _text(workers_table([TRAINER], full=True))


# --------------------------------------------------------- what a peer names (issue 16, item 6)

FORGED = "b\nb          47e347e347e347e3  10.0.0.9:1  in   open[red]R[/red][link=http://x]L[/link]\x1b[31mE\u202e"


def _terminal(renderable) -> str:
    """What a colour terminal receives (not the plain export: the raw escape codes are the point)."""
    import io

    console = Console(file=io.StringIO(), width=220, force_terminal=True, color_system="truecolor",
                      highlight=False)
    console.print(renderable)
    return console.file.getvalue()


def _assert_inert(out: str) -> None:
    assert "\x1b]8;" not in out                  # no hyperlink
    assert "\x1b[31m" not in out and "\u202e" not in out   # the peer's own codes never reach the terminal
    assert "[red]R[/red]" in out and "[link=http://x]" in out   # markup shown as written
    assert "\\n" in out and "\\x1b" in out and "\\u202e" in out


def test_a_peer_name_is_one_row_and_never_markup() -> None:
    from meshnode.cli_tables import peers_table

    peers = [{"name": FORGED, "node_id": "ac93" * 16, "address": "127.0.0.1:1", "direction": "in",
              "state": "open"}, {"name": "b", "node_id": "47e3" * 16, "address": "127.0.0.1:2"}]
    out = _terminal(peers_table(peers))
    _assert_inert(out)
    rows = [line for line in out.splitlines() if "127.0.0.1" in line]
    assert len(rows) == 2                        # two peers, two rows: no forged third one
    assert sum(1 for line in out.splitlines() if line.startswith(("b ", "b\\"))) == 2


def test_worker_tables_escape_what_they_show() -> None:
    from meshnode.cli_tables import counters_table

    evil = {**TRAINER, "name": FORGED, "status": {**TRAINER["status"], "doing": FORGED,
                                                  "refused": {FORGED: 2}, "role": "student", "teacher": FORGED}}
    for renderable in (workers_table([evil]), workers_table([evil], full=True), rounds_table(evil),
                       counters_table({f"dropped.{FORGED}": 1})):
        _assert_inert(_terminal(renderable))
