"""The human form of `meshnode status`: words instead of Python values, the mesh's members listed (bounded),
the last refusals in short, and fields from the network printed as text, never as markup."""

from __future__ import annotations

from rich.console import Console

from meshnode.cli_tables import status_table

STATUS = {"node_id": "ac93" * 16, "name": "a", "mesh_id": "aace" * 8, "version": "0.1.0", "state": "running",
          "listen": "0.0.0.0:44245", "uptime_s": 7.6, "peers": 1, "members": 3,
          "member_list": [{"name": "b", "node_id": "47e3" * 16, "linked": True},
                          {"name": "c", "node_id": "51c0" * 16, "linked": False}],
          "workers": 0, "data_dir": "/srv/a/data", "mdns": True, "capture": None, "recent_refusals": []}


def _render(status: dict) -> str:
    console = Console(width=160, record=True)
    console.print(status_table(status))
    return console.export_text()


def _row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(label + " "))


def test_no_python_values_in_the_human_status() -> None:
    text = _render({**STATUS, "surprise": False, "empty": {}})
    for python in ("True", "False", "None", "[]", "{}"):
        assert python not in text, python
    assert _row(text, "mDNS").split()[-1] == "on"
    assert _row(text, "capture").split()[-1] == "off"
    assert _row(text, "recent refusals").split()[-1] == "none"
    assert _row(text, "uptime").split()[-1] == "7.6s"
    assert _row(text, "surprise").split()[-1] == "no" and _row(text, "empty").split()[-1] == "none"
    assert "member list" not in text          # drawn inside the members row


def test_status_lists_the_members_and_says_how_many_are_not_listed() -> None:
    text = _render(STATUS)
    assert "3 known, 1 linked now" in _row(text, "members")
    b = next(line for line in text.splitlines() if " b " in line)
    c = next(line for line in text.splitlines() if " c " in line)
    assert "47e347e347e347e3" in b and "linked" in b and "47e347e347e347e34" not in b
    assert "51c051c051c051c0" in c and "via others" in c
    assert "and 1 more, not listed" in text
    # an older daemon (a count, no list) still prints
    assert _row(_render({**STATUS, "member_list": None}), "members").split()[-1] == "3"


def test_recent_refusals_are_short_and_never_markup() -> None:
    refusals = [{"time_us": 1_700_000_000_000_000 + i, "address": f"10.0.0.{i}:4000", "reason": "not_tls",
                 "detail": "[red]x[/red] " + "y" * 300} for i in range(8)]
    text = _render({**STATUS, "recent_refusals": refusals + [{"time_us": float("nan")}, "junk"]})
    assert "9, the last 5:" in text
    assert "10.0.0.7:4000" in text and "10.0.0.2:4000" not in text
    assert "[red]x[/red]" in text and "y" * 200 not in text


def test_member_names_and_refusals_from_peers_are_escaped() -> None:
    import io

    forged = "b\nc  51c051c051c051c0  linked[red]R[/red][link=http://x]L[/link]\x1b[31mE"
    status = {**STATUS, "member_list": [{"name": forged, "node_id": "47e3" * 16, "linked": True}],
              "recent_refusals": [{"time_us": 1, "address": forged, "reason": forged, "detail": forged}],
              forged: forged}
    console = Console(file=io.StringIO(), width=220, force_terminal=True, color_system="truecolor", highlight=False)
    console.print(status_table(status))
    out = console.file.getvalue()
    assert "\x1b]8;" not in out and "\x1b[31m" not in out
    assert "[red]R[/red]" in out and "b\\nc  51c0" in out
    assert not any(line.lstrip().startswith("c  51c0") for line in out.splitlines())   # no forged row
