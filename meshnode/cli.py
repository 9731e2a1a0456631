"""The `meshnode` command."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from . import __version__

if TYPE_CHECKING:
    from .config import Config

# Exit codes: 1 = the thing looked at is bad or absent (malformed packet, no daemon answering);
# 2 = what the user gave is wrong (usage, config file, identity files).
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
CONFIG_ENV = "MESHNODE_CONFIG"
DEFAULT_CONFIG = "node.toml"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshnode")
def main() -> None:
    """Peer-to-peer mesh daemon for machine learning over packed ternary HDC vectors."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(allow_dash=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per packet or error (JSON lines).")
@click.option("--trust", "trust_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Public key (raw 32 bytes, hex or PEM), node certificate, mesh CA certificate, or a mesh "
                   "or node directory, whose signatures count as valid. Repeatable.")
@click.option("--summary", is_flag=True, help="Per file, a table per kind and topic (packets, bytes, first and "
              "last time, origins), totals, signature statuses and error counts, instead of every packet.")
@click.option("--kind", "kinds", multiple=True, metavar="KIND",
              help="Only packets of this kind (hello, ping, vectors, fragment, ...). Repeatable.")
@click.option("--topic", "topics", multiple=True, metavar="TOPIC",
              help="Only packets with this topic; a trailing * matches a prefix (quote it). Repeatable.")
@click.option("--peer", "peers", multiple=True, metavar="NAME_OR_ID",
              help="Only packets whose origin, or the capture record's peer, has this name or hex id "
                   "prefix. Repeatable.")
@click.option("--format", "input_format", type=click.Choice(["auto", "packet", "frames", "capture", "hex"]),
              default="auto", show_default=True,
              help="What the input is. auto: by the file's suffix (.bin packet, .frames, .mncap capture, .hex), "
                   "else (stdin, other names) by its content; see docs/INSPECT.md.")
def inspect(files: tuple[Path, ...], as_json: bool, trust_paths: tuple[Path, ...], summary: bool,
            kinds: tuple[str, ...], topics: tuple[str, ...], peers: tuple[str, ...], input_format: str) -> None:
    """Decode packets: one packet, a stream of frames, hex text, or a capture file (- for stdin).

    For each packet: header, body fields, signature status (valid, invalid, unknown_key,
    self_signed, unsigned, ignored for a fragment's) and, for every vector block, its dimension, encoding, bytes on the wire,
    fraction of zeros and size relative to float32. Times are shown in UTC; nodes by name where a
    certificate tells it (a name ending in "?" is one only the node's own hello claims). Exits 1 if
    any input is malformed, any signature is invalid or a packet that must be signed is not (among
    the packets the filters select); errors give the reason code and the byte offset.
    """
    from .inspect import (
        Filter, InputFormat, InspectError, Summary, TrustStore, format_error, format_for_name, format_text,
        inspect_bytes, parse_kinds,
    )

    try:
        selection = Filter(parse_kinds(kinds), topics, peers)
    except ValueError as exc:
        _fail(f"--kind: {exc}", EXIT_USAGE)
    trust = TrustStore()
    for path in trust_paths:
        try:
            trust.add_file(path)
        except (OSError, ValueError) as exc:
            raise click.UsageError(f"--trust {path}: {exc}") from None

    failed = False
    for path in files:
        name = str(path)
        try:
            data = sys.stdin.buffer.read() if name == "-" else path.read_bytes()
        except OSError as exc:
            click.echo(f"{name}: error cannot_read: {exc.strerror or exc}", err=True)
            failed = True
            continue
        counts = Summary() if summary else None
        fmt = InputFormat(input_format) if input_format != "auto" else format_for_name(name)
        for result in selection.select(inspect_bytes(data, trust, fmt=fmt), trust.names):
            if counts is not None:
                failed = failed or isinstance(result, InspectError)
                counts.add(result)
            elif isinstance(result, InspectError):
                failed = True
                if as_json:
                    click.echo(json.dumps({"file": name, **result.as_json()}))
                else:
                    click.echo(format_error(name, result), err=True)
            elif as_json:
                click.echo(json.dumps({"file": name, **result}))
            else:
                click.echo(format_text(name, result, trust.names))
        if counts is not None:
            if as_json:
                click.echo(json.dumps({"file": name, "summary": counts.as_json(trust.names)}))
            else:
                click.echo(counts.format(name, trust.names))
    sys.exit(EXIT_BAD_INPUT if failed else 0)


# ---------------------------------------------------------------------------- mesh and node init


def _fail(message: str, code: int) -> NoReturn:
    """One line on stderr and exit: errors here are for people, not tracebacks."""
    click.echo("error: " + " ".join(str(message).split()), err=True)
    sys.exit(code)


@main.group()
def mesh() -> None:
    """The mesh CA: the key that decides who belongs to the mesh."""


@mesh.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing CA (every node must then be enrolled again).")
def mesh_init(directory: Path, force: bool) -> None:
    """Create a mesh CA (Ed25519) in DIRECTORY: ca.key (secret) and ca.crt."""
    from .identity import CA_CERT_FILE, CA_KEY_FILE, IdentityError, init_mesh

    try:
        ca = init_mesh(directory, force=force)
    except IdentityError as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"{directory}: {exc.strerror or exc}", EXIT_USAGE)
    d = directory.absolute()
    click.echo(f"mesh id         {ca.mesh_id.hex()}")
    click.echo(f"CA certificate  {d / CA_CERT_FILE}")
    click.echo(f"CA key          {d / CA_KEY_FILE}  (secret: keep it off the nodes; it enrols new ones)")


@main.group()
def node() -> None:
    """This machine's membership of a mesh: key, certificate and node.toml."""


@node.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--mesh", "mesh_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory made by `meshnode mesh init` (its ca.key signs the new certificate).")
@click.option("--name", required=True, help="Node name: letters, digits, '.', '_' or '-'.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="TCP port for peers; 0 picks a free one. Give a fixed port if others list this node.")
@click.option("--listen-host", default=None, help="Address to accept peers on [default: 0.0.0.0].")
@click.option("--static-peer", "static_peers", multiple=True, metavar="HOST:PORT",
              help="A peer to dial beyond the LAN. Repeatable.")
@click.option("--data-dir", default="data", show_default=True,
              help="State, control socket and captures; relative to DIRECTORY.")
@click.option("--no-mdns", is_flag=True, help="No mDNS discovery: peers only from --static-peer (and who dials in).")
@click.option("--force", is_flag=True, help="Replace an existing key, certificate and node.toml.")
def node_init(directory: Path, mesh_dir: Path, name: str, port: int, listen_host: str | None,
              static_peers: tuple[str, ...], data_dir: str, no_mdns: bool, force: bool) -> None:
    """Enrol a node: key, certificate signed by the mesh CA, and DIRECTORY/node.toml."""
    import tomllib

    from .config import CONFIG_FILE, ConfigError, default_config_text, parse_config, write_default_config
    from .identity import IdentityError, init_node, load_mesh, validate_node_name

    config_path = directory.absolute() / CONFIG_FILE
    values: dict[str, Any] = {"data_dir": data_dir, "listen_port": port, "static_peers": static_peers,
                              "mdns": not no_mdns}
    if listen_host is not None:
        values["listen_host"] = listen_host
    try:
        # Everything is checked before the first file is written, so a typo leaves nothing behind.
        validate_node_name(name)
        if not force and (config_path.exists() or config_path.is_symlink()):
            _fail(f"{config_path}: already exists; refusing to overwrite (use --force)", EXIT_USAGE)
        parse_config(tomllib.loads(default_config_text(name, **values)), base_dir=directory.absolute(),
                     source=config_path)
        if not mesh_dir.is_dir():
            _fail(f"--mesh {mesh_dir}: no such directory (create the mesh with `meshnode mesh init`)",
                  EXIT_USAGE)
        ca = load_mesh(mesh_dir)
        identity = init_node(directory, ca, name, force=force)
        write_default_config(config_path, name=name, force=force, **values)
    except (IdentityError, ConfigError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"{exc.filename or directory}: {exc.strerror or exc}", EXIT_USAGE)
    click.echo(f"node id  {identity.node_id_hex}")
    click.echo(f"name     {identity.name}")
    click.echo(f"mesh id  {identity.mesh_id.hex()}")
    click.echo(f"config   {config_path}")
    click.echo(f"start it with: meshnode run --config {config_path}")


# -------------------------------------------------------------------------------------- the daemon


def _config_option(f: F) -> F:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar=CONFIG_ENV,
        default=DEFAULT_CONFIG, show_default=f"${CONFIG_ENV} or ./{DEFAULT_CONFIG}",
        help="The node's node.toml.",
    )(f)


def _load_config(path: Path, *, check_files: bool) -> Config:
    from .config import ConfigError, load_config

    try:
        return load_config(path, check_files=check_files)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)


@main.command()
@_config_option
@click.option("--capture", type=click.Path(dir_okay=False, path_type=Path),
              help="Record every packet sent or received to this file (instead of capture.file).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="Instead of node.log_level.")
def run(config_path: Path, capture: Path | None, log_level: str | None) -> None:
    """Run the daemon until SIGINT or SIGTERM.

    Exits 2, with one line on stderr, when the config or identity files are unusable.
    """
    from .identity import IdentityError, load_node_identity

    cfg = _load_config(config_path, check_files=True)
    try:
        # Caught here rather than deep in start-up: a wrong key or a certificate from another mesh
        # is the most common first-run mistake, and deserves the same one-line answer as a config typo.
        load_node_identity(cfg.identity.key, cfg.identity.cert, cfg.identity.ca_cert)
    except IdentityError as exc:
        _fail(str(exc), EXIT_USAGE)
    _check_workers(cfg, config_path)
    if log_level:
        cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, log_level=log_level.lower()))
    from .display import install_logging

    # Escaping formatter: a peer's name, topic or bye reason that reaches a log call unescaped still
    # cannot start a line of its own or send terminal codes (docs/DESIGN.md, "Security model").
    install_logging(cfg.node.log_level, stream=sys.stderr,
                    fmt="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        from .node import run_daemon
    except ImportError as exc:
        if exc.name != "meshnode.node":
            raise  # a bug inside the daemon's modules: the traceback is what a developer needs
        _fail(f"the daemon is not available in this build ({exc})", EXIT_BAD_INPUT)
    from .config import ConfigError

    try:
        code = run_daemon(cfg, capture=capture.absolute() if capture is not None else None)
    except (ConfigError, IdentityError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _check_workers(cfg: Config, config_path: Path) -> list[Any]:
    """A worker that cannot run (unknown type, bad settings, a missing extra, a link to a worker that is
    not there) stops the start with one line and exit 2, like a config typo does."""
    from .workers.base import WorkerSettingsError
    from .workers.registry import check_workers

    try:
        return check_workers(cfg.workers, base_dir=config_path.absolute().parent)
    except WorkerSettingsError as exc:
        _fail(f"{config_path}: {exc}", EXIT_USAGE)


@main.command()
@_config_option
@click.option("--worker", help="The trainer worker (needed when the node has several).")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def export(config_path: Path, worker: str | None, out: Path) -> None:
    """Write a trainer's synchronised adapter as a peft adapter directory OUT (the daemon need not run).

    Load it with transformers + peft: AutoModelForSequenceClassification on the base model, then
    PeftModel.from_pretrained(model, OUT). Exits 2 when there is no such trainer or no checkpoint yet.
    """
    from .workers.base import WorkerSettingsError
    from .workers.trainer import CHECKPOINT
    from .workers.trainer_settings import parse_settings

    cfg = _load_config(config_path, check_files=False)
    trainers = [w for w in cfg.workers if w.type == "trainer" and (worker is None or w.name == worker)]
    if len(trainers) != 1:
        names = ", ".join(w.name for w in cfg.workers if w.type == "trainer") or "none"
        _fail(f"{config_path}: " + (f"no trainer worker named {worker!r}" if worker else
                                    "name one trainer worker with --worker") + f" (trainers: {names})", EXIT_USAGE)
    (w,) = trainers
    checkpoint = cfg.node.data_dir / "workers" / w.name / CHECKPOINT
    if not checkpoint.is_file():
        _fail(f"{checkpoint}: no checkpoint yet (the trainer writes one after its first merged round)", EXIT_USAGE)
    try:
        settings = parse_settings(w.name, w.settings, base_dir=config_path.absolute().parent)
    except WorkerSettingsError as exc:
        _fail(f"{config_path}: {exc}", EXIT_USAGE)
    from .workers.trainer_export import export_adapter

    try:
        info = export_adapter(settings, checkpoint, out)
    except (ValueError, OSError) as exc:
        _fail(f"cannot export {checkpoint}: {exc}", EXIT_BAD_INPUT)
    click.echo(f"wrote {out}: the {w.name} adapter of {info['base_model']} at round {info['round']} "
               f"(classes {', '.join(info['classes'])})")


@main.command()
@_config_option
def check(config_path: Path) -> None:
    """Check node.toml, the identity files and every worker as `meshnode run` would, without starting.

    Prints what would run and exits 0 (with a warning on stderr for a setup that runs but likely not as
    meant, e.g. a loopback listen_host with mDNS on), or one line on stderr and exits 2.
    """
    from .identity import IdentityError, load_node_identity

    cfg = _load_config(config_path, check_files=True)
    try:
        ident = load_node_identity(cfg.identity.key, cfg.identity.cert, cfg.identity.ca_cert)
    except IdentityError as exc:
        _fail(str(exc), EXIT_USAGE)
    workers = _check_workers(cfg, config_path)
    listed = ", ".join(f"{w.name} ({w.type_name})" for w in workers) or "none"
    click.echo(f"{config_path}: ok: node {ident.name} ({ident.node_id_hex[:16]}), listening on "
               f"{cfg.node.listen_host}:{cfg.node.listen_port}, workers: {listed}")
    from .config import mdns_plan

    warning = mdns_plan(cfg).warning
    if warning is not None:  # runs, but likely not as meant: said here, and again by `run` at start
        click.echo(f"warning: {warning}", err=True)


# ----------------------------------------------------------------------------- asking the daemon


def _control_options(f: F) -> F:
    f = click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
                     help="Seconds to wait for the daemon.")(f)
    f = click.option("--socket", "socket_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="The control socket, instead of reading its path from the config.")(f)
    return _config_option(f)


def _json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")(f)


def _ask(cmd: str, config_path: Path, socket_path: Path | None, timeout: float) -> Any:
    from .control import ControlError, query_sync

    path = socket_path if socket_path is not None else _load_config(config_path, check_files=False).control.socket
    try:
        return query_sync(path, cmd, timeout=timeout)
    except ControlError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)


def _expect(cmd: str, value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        _fail(f"the daemon's {cmd} answer is a {type(value).__name__}, expected a {kind.__name__}", EXIT_BAD_INPUT)
    return value


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


@main.command()
@_control_options
@_json_option
def status(config_path: Path, socket_path: Path | None, timeout: float, as_json: bool) -> None:
    """What the local daemon is: node, mesh, address, uptime. Exits 1 if no daemon answers."""
    result = _expect("status", _ask("status", config_path, socket_path, timeout), dict)
    if as_json:
        _print_json(result)
    else:
        from .cli_tables import status_table

        _console().print(status_table(result))


@main.command()
@_control_options
@_json_option
def peers(config_path: Path, socket_path: Path | None, timeout: float, as_json: bool) -> None:
    """The local daemon's peer links. Exits 1 if no daemon answers."""
    result = _expect("peers", _ask("peers", config_path, socket_path, timeout), list)
    if as_json:
        _print_json(result)
    elif not result:
        click.echo("no peers")
    else:
        from .cli_tables import peers_table

        _console().print(peers_table(result))


@main.command()
@_control_options
@_json_option
@click.option("--all", "full", is_flag=True, help="Every status and metrics field (long).")
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds, with each trainer's last rounds, "
              "until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between redraws with --watch.")
def workers(config_path: Path, socket_path: Path | None, timeout: float, as_json: bool, full: bool, watch: bool,
            interval: float) -> None:
    """The local daemon's workers and what they report. Exits 1 if no daemon answers."""
    from .cli_tables import workers_table

    if watch:
        if as_json:
            _fail("--watch and --json do not go together (poll with --json instead)", EXIT_USAGE)
        _watch_workers(config_path, socket_path, timeout, interval, full)
        return
    result = _expect("workers", _ask("workers", config_path, socket_path, timeout), list)
    if as_json:
        _print_json(result)
    elif not result:
        click.echo("no workers")
    else:
        _console().print(workers_table(result, full=full))


def _watch_workers(config_path: Path, socket_path: Path | None, timeout: float, interval: float,
                   full: bool) -> None:
    import time

    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from .cli_tables import rounds_table, workers_table
    from .control import ControlError, query_sync

    path = socket_path if socket_path is not None else _load_config(config_path, check_files=False).control.socket
    console = _console()
    try:
        with Live(console=console, auto_refresh=False) as live:
            while True:
                stamp = time.strftime("%H:%M:%S")
                try:
                    result = query_sync(path, "workers", timeout=timeout)
                except ControlError as exc:   # the daemon restarting: say so and keep watching
                    live.update(Text(f"{stamp}  {exc}", style="yellow"), refresh=True)
                else:
                    parts: list[Any] = [Text(f"{stamp}  workers of {path}")]   # a path may hold "["
                    if isinstance(result, list):
                        parts.append(workers_table(result, full=full))
                        parts += [t for w in result if isinstance(w, dict) and (t := rounds_table(w)) is not None]
                    live.update(Group(*parts), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        pass


@main.command()
@_control_options
@_json_option
def counters(config_path: Path, socket_path: Path | None, timeout: float, as_json: bool) -> None:
    """The local daemon's counters (drops, refusals, traffic). Exits 1 if no daemon answers."""
    result = _expect("counters", _ask("counters", config_path, socket_path, timeout), dict)
    if as_json:
        _print_json(result)
    elif not result:
        click.echo("no counters")
    else:
        from .cli_tables import counters_table

        _console().print(counters_table(result))


@main.command()
@_control_options
def metrics(config_path: Path, socket_path: Path | None, timeout: float) -> None:
    """The local daemon's counters as Prometheus text (e.g. for node_exporter's textfile collector)."""
    result = _expect("metrics", _ask("metrics", config_path, socket_path, timeout), str)
    click.echo(result, nl=False)


@main.command()
@click.argument("texts", nargs=-1, required=True)
@click.option("--worker", help="The worker to ask (needed when several can classify).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds to wait for the daemon (it embeds the texts with its model).")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The control socket, instead of reading its path from the config.")
@_config_option
@_json_option
def predict(texts: tuple[str, ...], worker: str | None, timeout: float, socket_path: Path | None,
            config_path: Path, as_json: bool) -> None:
    """Classify TEXTS with the local daemon's transfer worker (its adopted knowledge). Use - to read
    one text per line from stdin. Exits 1 if no daemon answers or no worker can classify yet."""
    from .control import ControlError, query_sync

    items = [line for line in sys.stdin.read().splitlines() if line.strip()] if texts == ("-",) else list(texts)
    if not items:
        _fail("no texts to classify", EXIT_USAGE)
    path = socket_path if socket_path is not None else _load_config(config_path, check_files=False).control.socket
    args: dict[str, Any] = {"texts": items}
    if worker is not None:
        args["worker"] = worker
    try:
        result = query_sync(path, "classify", timeout=timeout, **args)
    except ControlError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    result = _expect("classify", result, dict)
    if as_json:
        _print_json(result)
        return
    labels, scores = result.get("labels") or [], result.get("scores") or []
    if len(labels) != len(items):
        _fail(f"the daemon answered {len(labels)} labels for {len(items)} texts", EXIT_BAD_INPUT)
    probability = result.get("score_kind") == "probability"
    # the header goes to stderr: stdout stays one "label<TAB>score<TAB>text" line per text, for pipes
    click.echo("label\t" + ("p" if probability else "score (a probe's output, not a probability)") + "\ttext",
               err=True)
    for text, label, row in zip(items, labels, scores):
        top = max(row) if row else float("nan")
        shown = text if len(text) <= 60 else text[:57] + "..."
        click.echo(f"{label}\t{top:.3f}\t{shown}")
    acc = result.get("accuracy")
    teacher = result.get("teacher")
    note = f"worker {result.get('worker')} (task {result.get('task')}"
    note += f", teacher {str(teacher)[:16]}" if teacher else ""
    note += f", eval accuracy {acc:.3f})" if isinstance(acc, (int, float)) else ")"
    click.echo(note, err=True)


@main.command()
@click.argument("scenario_path", metavar="SCENARIO.toml", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the JSON report here (per node, per link, per flow; see docs/SIM.md).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG here: delivered bytes over time by packet kind, per link (or per node), with "
                   "line rates, events and workers' accuracy.")
@click.option("--capture", "capture_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write one capture file per node (NAME.mncap, readable by `meshnode inspect`) here.")
@click.option("--seed", type=int, help="Run with this seed instead of the scenario's.")
@click.option("--quiet", is_flag=True, help="No live progress view.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="error", show_default=True,
              help="Log level of the simulated nodes.")
def sim(scenario_path: Path, report_path: Path | None, plot_path: Path | None, capture_dir: Path | None,
        seed: int | None, quiet: bool, log_level: str) -> None:
    """Run SCENARIO.toml: real nodes in one process over the simulated network, in simulated time.

    Shows progress while it runs and a summary at the end. Exits 0 when every expectation of the
    scenario's [expect] table is met, 1 when one is not; without [expect], 1 when the scenario has
    traffic and not all of it was delivered exactly once. 2 when the scenario file is wrong.
    """
    import time

    from .display import install_logging
    from .sim.report import LiveProgress, plot_report, print_summary, write_report
    from .sim.runner import run_scenario
    from .sim.scenario import ScenarioError, load_scenario

    install_logging(log_level, fmt="%(levelname)s %(name)s: %(message)s")
    try:
        scenario = load_scenario(scenario_path)
        if seed is not None:
            scenario = dataclasses.replace(scenario, seed=seed)
        console = _console()
        t0 = time.monotonic()
        if quiet or not console.is_terminal:
            report = run_scenario(scenario, capture_dir=capture_dir)
        else:
            with LiveProgress(console, scenario.name) as live:
                report = run_scenario(scenario, capture_dir=capture_dir, on_progress=live)
    except ScenarioError as e:
        raise click.UsageError(str(e)) from None
    print_summary(report, console, wall_s=time.monotonic() - t0)
    if report_path is not None:
        write_report(report, report_path)
        console.print(f"report: {report_path}")
    if plot_path is not None:
        plot_report(report, plot_path)
        console.print(f"plot: {plot_path}")
    if capture_dir is not None:
        console.print(f"captures: {capture_dir}/<node>.mncap")
    # The verdict (the summary printed it, with its reason): every stated expectation met, or without
    # [expect], all traffic delivered exactly once.
    if not report["verdict"]["passed"]:
        sys.exit(EXIT_BAD_INPUT)


@main.group()
def data() -> None:
    """Files for a fleet's nodes, made from one labelled dataset (no hand-written shards or anchors)."""


@data.command("fleet")
@click.argument("source", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--nodes", type=click.IntRange(1, 1024), default=2, show_default=True, help="Labelled shards.")
@click.option("--skew", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="Share of each shard from its own classes (node i owns classes i, i + nodes, ...).")
@click.option("--per-node", type=click.IntRange(min=1), default=1000, show_default=True, help="Rows per shard.")
@click.option("--anchors", type=click.IntRange(min=2), default=500, show_default=True,
              help="Unlabelled anchor texts (anchors.txt), disjoint from the shards.")
@click.option("--pool", type=click.IntRange(min=0), default=1500, show_default=True,
              help="More unlabelled texts (pool.txt), for a student's map to pseudo-label.")
@click.option("--eval-split", default="dev", show_default=True, help="SOURCE's split for the eval set.")
@click.option("--eval-rows", type=click.IntRange(min=1), default=None, help="At most this many eval rows.")
@click.option("--seed", type=int, default=0, show_default=True)
def data_fleet(source: Path, out: Path, nodes: int, skew: float, per_node: int, anchors: int, pool: int,
               eval_split: str, eval_rows: int | None, seed: int) -> None:
    """Write OUT/shard-<i>/ (label-skewed), OUT/anchors.txt, OUT/pool.txt and OUT/eval/ from SOURCE, a
    dataset directory (labels.json + <split>.jsonl[.gz], as in ../shared/data). All disjoint, seeded."""
    from .data import DataError
    from .shards import make_fleet_data

    try:
        fd = make_fleet_data(source, out, nodes=nodes, skew=skew, per_node=per_node, anchors=anchors, pool=pool,
                             eval_rows=eval_rows, eval_split=eval_split, seed=seed)
    except (DataError, ValueError, OSError) as exc:
        _fail(f"{source}: {exc}", EXIT_USAGE)
    for path in fd.shards:
        click.echo(f"shard    {path}")
    click.echo(f"anchors  {fd.anchors}\npool     {fd.pool or '(none: --pool 0)'}\neval     {fd.eval}")


@main.group()
def anchors() -> None:
    """Anchor files: the unlabelled texts a transfer teacher labels for its students."""


@anchors.command("make")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--count", type=click.IntRange(min=2), default=500, show_default=True, help="Texts to draw.")
@click.option("--split", default="train", show_default=True, help="SOURCE's split to draw from.")
@click.option("--exclude", "exclude", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A dataset (directory or jsonl) whose texts must not be anchors: the teacher's labelled data. "
                   "Repeatable.")
@click.option("--seed", type=int, default=0, show_default=True)
def anchors_make(source: Path, out: Path, count: int, split: str, exclude: tuple[Path, ...], seed: int) -> None:
    """Write OUT: COUNT texts of SOURCE (a dataset directory: labels.json + <split>.jsonl[.gz]), one per
    line, drawn with SEED, none of them in an --exclude dataset. Every node of a task uses the same file."""
    from .data import DataError
    from .shards import make_anchors

    try:
        n = make_anchors(source, out, count=count, split=split, seed=seed, exclude=exclude)
    except (DataError, ValueError, OSError) as exc:
        _fail(str(exc), EXIT_USAGE)
    click.echo(f"wrote {n} anchors to {out}" + (f" (the split had only {n} usable texts)" if n < count else ""))


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default="meshnode-demo",
              show_default=True, help="Where the mesh lives (kept afterwards; cleared if an earlier demo made it).")
@click.option("--sim", "sim_profile", metavar="PROFILE",
              help="Run the same mesh through the link simulator with this link profile (wifi, wan, lte, lan, "
                   "...) instead of as daemons on loopback.")
@click.option("--full", is_flag=True, help="The knowledge-loop scenario's bigger size (about 3x longer).")
@click.option("--keep-running", is_flag=True, help="Leave the daemons running at the end, to poke at them.")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True,
              help="Give up after this many seconds.")
@click.option("--quiet", is_flag=True, help="No live view; only the final table.")
def demo(directory: Path, sim_profile: str | None, full: bool, keep_running: bool, timeout: float,
         quiet: bool) -> None:
    """Two MiniLM trainers with label-skewed data and two SmolLM2 learners with no labels learn from each
    other on this machine: real daemons on loopback (or --sim), a live view, then each node's accuracy
    before and after, what it would have reached alone, and the bytes it cost.

    Exits 1 if a learner did not learn (or the mesh failed), 2 if the demo's packages or models are
    missing (the message says what to install).
    """
    from .demo import FULL, DemoFailed, DemoNotInstalled, DemoPlan, run_demo
    from .net.sim.links import PRESETS

    if sim_profile is not None and sim_profile not in PRESETS:
        _fail(f"--sim {sim_profile}: unknown link profile; known: {', '.join(PRESETS)}", EXIT_USAGE)
    plan = DemoPlan(sizes=FULL) if full else DemoPlan()
    try:
        run = run_demo(plan, directory, console=_console(), sim=sim_profile, keep_running=keep_running,
                       timeout=timeout, live=not quiet)
    except DemoNotInstalled as exc:
        _fail(str(exc), EXIT_USAGE)
    except DemoFailed as exc:
        click.echo(f"error: {exc}", err=True)   # may hold a daemon's last log lines: keep its newlines
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        sys.exit(130)
    if not run.outcome.ok:
        sys.exit(EXIT_BAD_INPUT)


def _console() -> Any:
    from rich.console import Console

    # Piped output gets rich's 80 columns unless told otherwise; 160 keeps a peer on one line.
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
    return Console(width=width, highlight=False)


if __name__ == "__main__":  # pragma: no cover
    main()
