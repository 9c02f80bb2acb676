#!/usr/bin/env python3
"""A mosquitto (2.0) configuration and access control for ward sensors: TLS, client certificates only.

Usable as a module (tests) and as a CLI::

    python scripts/broker_conf.py OUTDIR --pki DIR [--port 8883] [--bind 127.0.0.1] [--persistence]
                                         [--user mosquitto] [--max-queued N] [--max-inflight N]
                                         [--client CN ...] [--collector CN ...] [--plugin PATH | --acl-file]
    mosquitto -c OUTDIR/mosquitto.conf

writes OUTDIR/mosquitto.conf and OUTDIR/dynamic-security.json (OUTDIR/acl with --acl-file), and OUTDIR/data
when persistence is on.

The listener (there is no plaintext one)
    TLS 1.2+ with cafile/certfile/keyfile from the PKI directory (scripts/broker_pki.py);
    `require_certificate true`: no client certificate signed by our CA, no TCP session;
    `use_identity_as_username true`: the certificate's CN is the user name access control sees;
    `use_username_as_clientid true`: the client id is replaced by that user name, so no certificate can
    take over (and disconnect) another client's session by sending its client id;
    `allow_anonymous false`.

Access control (topics `ward/<site>/<sensor>/...`, DESIGN.md section 4)
    collector     reads up/#, status, config/ack of every sensor; writes every sensor's config and ack
                  (the end-to-end acknowledgement of what it committed, agent/acks.py).
    each client   (CN = sensor id) writes its own up/#, status (also its will) and config/ack, reads its own
                  config and ack. Nothing else: a refused publish gets PUBACK 0x87 (not authorized), a
                  refused subscription SUBACK 0x87. The site level is a wildcard: sensor ids are unique
                  across sites (they already key the collector's de-duplication), and the collector checks
                  that a sensor publishes under its registered site.

    Default: mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so, found under /usr/lib/*/ or
    given with --plugin), configured from a generated dynamic-security.json. It has no %u patterns, so there
    is one client and one role per CN: the CNs of PKI/clients/*.crt (or --client), each with a role
    `own-<CN>` for its own topics; the collector CNs (--collector, default `collector`) also get the role
    `collector`. The collector may subscribe to any filter under ward/, directly or shared
    (`$share/<group>/...`, agent/central/mqtt_in.py), and receives only the topics it reads, as with the
    ACL file; a sensor may subscribe only to its own config and ack (the plugin checks subscriptions, so
    a foreign one gets SUBACK 0x87). Clients have no password: they authenticate by certificate, and the
    plugin finds them by the CN user name. `defaultACLAccess` denies publish (both ways) and subscribe,
    allows unsubscribe. A certificate issued later
    needs the configuration regenerated and the broker restarted (the plugin reads the file at start only).

    --acl-file: the same rights as a plain mosquitto ACL file (`pattern ... %u`), for brokers without the
    plugin. mosquitto 2.0's acl_file does not check subscriptions: a foreign subscription is granted
    (SUBACK 0x01) and simply receives nothing, as `read` is checked per message on delivery. Publishing is
    refused (0x87) the same way. SIGHUP re-reads this file.

Limits (documented choices, all overridable)
    max_inflight_messages 20      outgoing QoS 1 messages per client in flight; also the Receive Maximum
                                  the broker announces to v5 clients (the publisher honours it).
    max_queued_messages 100000    per client, beyond the in-flight ones (the collector's backlog while it
    max_queued_bytes 256 MiB      is away); past either limit mosquitto DROPS silently, which is why the
                                  sensor's spool, not the broker, is the source of truth.
    max_packet_size 1 MiB         larger packets disconnect the client (v5 clients are told the limit).
    persistence false             (on: data/mosquitto.db, autosave every 60 s) the broker acknowledges
                                  before it writes either way; sensors re-send what the collector has
                                  not acknowledged on .../ack (agent/acks.py).
    persistent_client_expiration 7d   sessions of vanished clients are freed.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from broker_pki import COLLECTOR_CN, ca_paths, validate_cn

PLUGIN_GLOBS: Final = tuple(f"{prefix}/mosquitto_dynamic_security.so" for prefix in (
    "/usr/lib/*", "/usr/lib", "/usr/local/lib/*", "/usr/local/lib"))
DYNSEC_FILE: Final = "dynamic-security.json"
COLLECTOR_READS: Final = ("ward/+/+/up/#", "ward/+/+/status", "ward/+/+/config/ack")
COLLECTOR_WRITES: Final = ("ward/+/+/config", "ward/+/+/ack")
COLLECTOR_SUBSCRIBES: Final = ("ward/#", "$share/+/ward/#")  # delivery: COLLECTOR_READS only
OWN_WRITES: Final = ("ward/+/{cn}/up/#", "ward/+/{cn}/status", "ward/+/{cn}/config/ack")
OWN_READS: Final = ("ward/+/{cn}/config", "ward/+/{cn}/ack")

ACL: Final = f"""\
# ward-agent broker ACL (scripts/broker_conf.py). %u = client certificate CN (use_identity_as_username).
# The collector: everything the sensors send, and their configuration documents.
user {COLLECTOR_CN}
topic read ward/+/+/up/#
topic read ward/+/+/status
topic read ward/+/+/config/ack
topic write ward/+/+/config
topic write ward/+/+/ack

# Every sensor (CN = sensor id): its own topics only.
pattern write ward/+/%u/up/#
pattern write ward/+/%u/status
pattern write ward/+/%u/config/ack
pattern read ward/+/%u/config
pattern read ward/+/%u/ack
"""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """What varies between a test broker and a deployed one."""

    pki: Path
    port: int = 8883
    bind: str = "127.0.0.1"
    persistence: bool = False
    run_as: str | None = None  # mosquitto's `user`; None = the Debian default (mosquitto)
    max_inflight_messages: int = 20
    max_queued_messages: int = 100_000
    max_queued_bytes: int = 256 * 1024 * 1024
    max_packet_size: int = 1024 * 1024
    log_types: tuple[str, ...] = ("error", "warning", "notice", "information")
    pin_client_id: bool = True  # use_username_as_clientid; off only to show the takeover it prevents
    acl_file: bool = False  # True: a plain acl_file instead of the dynamic-security plugin
    clients: tuple[str, ...] | None = None  # CNs known to the plugin; None = the PKI's clients/*.crt
    collectors: tuple[str, ...] = (COLLECTOR_CN,)  # CNs with the collector's rights
    plugin: Path | None = None  # mosquitto_dynamic_security.so; None = found by find_plugin()


def find_plugin() -> Path:
    """The installed dynamic-security plugin (its directory is the architecture's, e.g. aarch64-linux-gnu)."""
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    raise FileNotFoundError("mosquitto_dynamic_security.so not found (give --plugin PATH, or use --acl-file)")


def client_cns(settings: BrokerSettings) -> tuple[str, ...]:
    """The CNs the plugin knows: settings.clients, or those with a certificate in PKI/clients; and the
    collectors."""
    found = settings.clients
    if found is None:
        found = tuple(sorted(p.stem for p in (settings.pki / "clients").glob("*.crt")))
    names = dict.fromkeys(validate_cn(cn) for cn in (*found, *settings.collectors))
    return tuple(names)


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def _role(name: str, reads: tuple[str, ...], writes: tuple[str, ...],
          subscribes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A role receiving `reads`, writing `writes` and subscribing to `subscribes` (default: `reads`)."""
    acls = [_acl("subscribePattern", topic) for topic in (reads if subscribes is None else subscribes)]
    acls += [_acl("publishClientReceive", topic) for topic in reads]
    acls += [_acl("publishClientSend", topic) for topic in writes]
    return {"rolename": name, "acls": acls}


def dynsec_config(settings: BrokerSettings) -> dict[str, Any]:
    """The dynamic-security plugin's configuration: one client and one own-topics role per CN, the
    collector role for the collectors, everything else denied (unsubscribing aside)."""
    cns = client_cns(settings)
    roles = [_role(COLLECTOR_CN, COLLECTOR_READS, COLLECTOR_WRITES, COLLECTOR_SUBSCRIBES)]
    roles += [_role(f"own-{cn}", tuple(t.format(cn=cn) for t in OWN_READS),
                    tuple(t.format(cn=cn) for t in OWN_WRITES)) for cn in cns]
    clients = [{"username": cn, "textName": f"certificate CN {cn}",
                "roles": [{"rolename": f"own-{cn}"}]
                + ([{"rolename": COLLECTOR_CN}] if cn in settings.collectors else [])} for cn in cns]
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                                 "subscribe": False, "unsubscribe": True},
            "clients": clients, "groups": [], "roles": roles}


def render(settings: BrokerSettings, out: Path) -> str:
    """The text of mosquitto.conf for a broker whose files live in `out`."""
    ca, _ = ca_paths(settings.pki)
    if settings.acl_file:
        access = [f"acl_file {(out / 'acl').resolve()}"]
    else:
        plugin = settings.plugin if settings.plugin is not None else find_plugin()
        access = [f"plugin {plugin}", f"plugin_opt_config_file {(out / DYNSEC_FILE).resolve()}"]
    lines = [
        "# ward-agent broker (generated by scripts/broker_conf.py; see its docstring for every choice)",
        "per_listener_settings false",
        "allow_anonymous false",
        *access,
        f"max_inflight_messages {settings.max_inflight_messages}",
        f"max_queued_messages {settings.max_queued_messages}",
        f"max_queued_bytes {settings.max_queued_bytes}",
        f"max_packet_size {settings.max_packet_size}",
        "persistent_client_expiration 7d",
        "set_tcp_nodelay true",
        f"persistence {str(settings.persistence).lower()}",
        "log_dest stderr",
        *(f"log_type {kind}" for kind in settings.log_types),
        "connection_messages true",
    ]
    if settings.persistence:
        lines += [f"persistence_location {(out / 'data').resolve()}/", "autosave_interval 60"]
    if settings.run_as is not None:
        lines.append(f"user {settings.run_as}")
    lines += [
        "",
        f"listener {settings.port} {settings.bind}",
        "protocol mqtt",
        f"cafile {ca.resolve()}",
        f"certfile {(settings.pki / 'server.crt').resolve()}",
        f"keyfile {(settings.pki / 'server.key').resolve()}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        f"use_username_as_clientid {str(settings.pin_client_id).lower()}",
    ]
    return "\n".join(lines) + "\n"


def _acl_text(collectors: tuple[str, ...]) -> str:
    head, rest = ACL.split(f"user {COLLECTOR_CN}\n", 1)
    block, tail = rest.split("\n\n", 1)
    return head + "".join(f"user {cn}\n{block}\n\n" for cn in collectors) + tail


def write(settings: BrokerSettings, out: Path) -> Path:
    """Write mosquitto.conf and dynamic-security.json (or acl) into `out` (and create data/ for
    persistence); the conf's path."""
    out.mkdir(parents=True, exist_ok=True)
    if settings.persistence:
        (out / "data").mkdir(exist_ok=True)
    if settings.acl_file:
        (out / "acl").write_text(_acl_text(settings.collectors))
    else:
        (out / DYNSEC_FILE).write_text(json.dumps(dynsec_config(settings), indent=2) + "\n")
    conf = out / "mosquitto.conf"
    conf.write_text(render(settings, out))
    return conf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory for mosquitto.conf and dynamic-security.json")
    parser.add_argument("--pki", type=Path, required=True, help="directory made by scripts/broker_pki.py")
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--persistence", action="store_true")
    parser.add_argument("--user", default=None, help="user mosquitto switches to when started as root")
    parser.add_argument("--max-queued", type=int, default=100_000)
    parser.add_argument("--max-inflight", type=int, default=20)
    parser.add_argument("--client", action="append", metavar="CN",
                        help="a client CN the plugin knows (repeat; default: the CNs of PKI/clients/*.crt)")
    parser.add_argument("--collector", action="append", metavar="CN",
                        help=f"a CN with the collector's rights (repeat; default: {COLLECTOR_CN})")
    access = parser.add_mutually_exclusive_group()
    access.add_argument("--plugin", type=Path, default=None, help="path of mosquitto_dynamic_security.so")
    access.add_argument("--acl-file", action="store_true",
                        help="a plain acl_file instead of the plugin (subscriptions are then not refused)")
    args = parser.parse_args(argv)
    settings = BrokerSettings(pki=args.pki, port=args.port, bind=args.bind, persistence=args.persistence,
                              run_as=args.user, max_inflight_messages=args.max_inflight,
                              max_queued_messages=args.max_queued, acl_file=args.acl_file,
                              clients=tuple(args.client) if args.client else None,
                              collectors=tuple(args.collector or (COLLECTOR_CN,)), plugin=args.plugin)
    print(write(settings, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
