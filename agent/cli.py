"""The `ward-agent` command line (also `python -m agent`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from agent import __version__, config, keys_cli, learn_cli, logsetup, policy_cli
from agent.central import cli as central_cli
from agent.detect import Detection, with_site_files
from agent.emit import FlowTally, JsonLines
from agent.pipeline import RunTotals, build_inventory, fan_out, replay
from agent.records import Finding, FlowRecord

if TYPE_CHECKING:
    from agent import outbound as outbound_parts

EX_OK, EX_DATAERR, EX_NOINPUT, EX_TEMPFAIL = 0, 65, 66, 75


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ward-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ward-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    rep = commands.add_parser("replay", help="run the sensor pipeline over capture files")
    rep.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap or pcapng files, read in order")
    rep.add_argument("--config", metavar="FILE", help="agent TOML configuration (defaults otherwise)")
    rep.add_argument("--emit", metavar="FILE", default="-", help="JSON Lines output, - for stdout (default)")
    rep.add_argument("--report", metavar="FILE", help="also write a readable summary, - for stderr")
    rep.add_argument("--hints", action="store_true",
                     help="also emit the protocol hints read from flow heads (type hint)")
    rep.add_argument("--uplink", action="store_true",
                     help="also send the records to the broker set in [uplink], and wait until it has them")
    rep.add_argument("--drain-timeout", type=float, default=120.0, metavar="S",
                     help="with --uplink: seconds to wait for the spool to drain (default 120)")
    rep.add_argument("--baseline", metavar="FILE", help="detect against a baseline made by ward-agent learn")
    rep.add_argument("--policy", metavar="FILE", help="a segmentation policy: flows outside it are findings")
    rep.add_argument("--no-fast-path", action="store_true", help=argparse.SUPPRESS)
    live = commands.add_parser("run", help="run the sensor live on the tap interface (the service)")
    live.add_argument("--config", metavar="FILE", help="agent TOML configuration")
    keys_cli.add_commands(commands)
    learn_cli.add_commands(commands)
    policy_cli.add_commands(commands)
    central_cli.add_commands(commands)
    return parser


@contextlib.contextmanager
def _output(path: str | None, dash: TextIO) -> Iterator[TextIO | None]:
    if path is None:
        yield None
    elif path == "-":
        yield dash
    else:
        with open(path, "w", encoding="utf-8") as stream:
            yield stream


def _replay(args: argparse.Namespace, settings: config.AgentConfig) -> int:
    log = structlog.get_logger("agent.cli")
    tally = FlowTally()
    totals = RunTotals()
    try:
        inventory = build_inventory(settings, totals) if settings.inventory.enabled else None
        outbound = _open_outbound(settings, totals) if args.uplink else None
    except (config.ConfigError, OSError, ValueError) as exc:
        print(f"ward-agent: {exc}", file=sys.stderr)
        return config.EX_CONFIG
    if outbound is not None:
        outbound.publisher.start()
    with _output(args.emit, sys.stdout) as out, _output(args.report, sys.stderr) as report:
        writer = JsonLines(out) if out is not None else None
        findings: list[Finding] = []

        def on_finding(finding: Finding) -> None:
            findings.append(finding)
            if writer is not None:
                writer.record(finding.to_dict())
            if outbound is not None:
                outbound.uplink.finding(finding)

        wanted = with_site_files(settings.detectors, args.baseline, args.policy)
        try:
            detection = Detection(wanted, inventory, totals.counters, on_finding) if wanted.enabled else None
        except (ValueError, OSError) as exc:  # a baseline or policy file that cannot be used
            print(f"ward-agent: {exc}", file=sys.stderr)
            return config.EX_CONFIG
        sinks: list[Callable[[FlowRecord], None]] = [tally.flow] if report is not None else []
        if writer is not None:
            sinks.append(writer.flow)
        if outbound is not None:
            sinks.append(outbound.uplink.flow)
        on_flow = fan_out(sinks)
        replay(args.captures, settings, on_flow, fast_path=not args.no_fast_path,
               on_hint=writer.hint if writer is not None and args.hints else None, inventory=inventory,
               totals=totals, detection=detection)
        devices = inventory.devices() if inventory is not None else []
        if outbound is not None:
            delivered = _deliver(outbound, devices, args.drain_timeout)
        summary = totals.summary()
        if writer is not None:
            for device in devices:
                writer.record(device)
            writer.record(summary)
        if report is not None:
            report.write(tally.report(summary, devices, findings))
    log.info("replay_done", frames=summary["frames"], flows=summary["flows"], seconds=summary["seconds"],
             unaccounted=summary["unaccounted"], capture_errors=len(summary["capture_errors"]))
    if summary["capture_errors"]:
        return EX_NOINPUT if summary["frames"] == 0 else EX_DATAERR
    if outbound is not None and not delivered:
        log.error("uplink_not_drained", timeout=args.drain_timeout, hint="is the broker reachable?")
        return EX_TEMPFAIL
    return EX_OK


def _open_outbound(settings: config.AgentConfig, totals: RunTotals) -> outbound_parts.Outbound:
    """The uplink parts (spool, keys, publisher), imported only when a replay uses them."""
    from agent import outbound as outbound_parts
    return outbound_parts.open_outbound(settings, totals.counters)


def _deliver(outbound: outbound_parts.Outbound, devices: list[dict[str, Any]], timeout: float) -> bool:
    """The replay's devices as one snapshot, then wait until the broker has everything."""
    outbound.uplink.devices("snapshot", devices)
    delivered = outbound.drain(timeout)
    outbound.close(drain_seconds=2.0)
    return delivered


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("keys", "central", "learn", "policy"):  # they read their own files
        return int(args.handler(args))
    try:
        settings = config.load(getattr(args, "config", None))
    except config.ConfigError as exc:
        print(f"ward-agent: {exc}", file=sys.stderr)
        return config.EX_CONFIG
    logsetup.configure(settings.log.level)
    if args.command == "replay":
        return _replay(args, settings)
    if args.command == "run":
        from agent import service  # the live service's parts (uplink, health, workers) load only here
        return service.run(settings, args.config)
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects unknown commands
