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
