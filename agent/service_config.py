"""Remote configuration on the live sensor: what a pushed document changes, and how (DESIGN.md 6).

Pushed documents arrive in the publisher's thread and wait in a queue; the service loop hands them
to RemoteConfig (agent/remote_config.py: signature, version, validation, atomic storage, ack and
rollback) in the main thread, which calls `apply` here. Everything runs without losing flow,
device or baseline state:

- capture.bpf and capture.batch_size: set on the open capture handle;
- capture.interface, snaplen, promiscuous, buffer_mb, timeout_ms: the capture stage alone is
  reopened (Service.reopen_capture), CAP_NET_RAW raised around the open; if it was given up (started
  as root, or capture.reopen_on_push = false) or the open fails, the push is nacked and the running
  capture kept. capture.reopen_on_push itself only changes with a restart;
- flows and hints: the running table takes new timeouts, bound and head limits (hints switched on
  or off, or timeouts longer than its timer wheel, are refused the same way);
- inventory: new bounds, networks and role rules; devices kept;
- uplink: new batching at once; a new broker address or TLS files restart the publisher on the
  same spool; the rollback timer undoes a push that cuts the sensor off;
- health and log: at once;
- capture.workers: only at a restart. With workers > 1 (agent/workers.py) there is no capture here
  to reopen: a change that needs one is nacked ("restart the service"), while bpf (compiled here
  first), batch_size, flows and hints are checked on this process's idle flow table and then sent to
  every worker.

If `apply` raises half-way, RemoteConfig calls it again from new to old, which undoes each step.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agent import crypto, logsetup
from agent.capture import CaptureError, check_filter
from agent.config import AgentConfig
from agent.remote_config import RemoteConfig, changed_keys
from agent.roles import load_rules
from agent.workers import forward

if TYPE_CHECKING:
    from agent.outbound import Outbound
    from agent.service import Service

log = structlog.get_logger("agent.service_config")
_LIVE_CAPTURE_KEYS = frozenset({"capture.bpf", "capture.batch_size"})
_BROKER_KEYS = frozenset({"uplink.broker_host", "uplink.broker_port", "uplink.ca_file", "uplink.cert_file",
                          "uplink.key_file"})


def remote_config(service: Service, outbound: Outbound, version: int) -> RemoteConfig | None:
    """The sensor's remote configuration, or None when its keys are not installed (pushes ignored)."""
    up = service.settings.uplink
    central = Path(up.keys_dir) / "central.pub"
    box, _ = crypto.key_paths(up.keys_dir, "sensor-box")
    if not central.is_file() or not box.is_file():
        log.warning("remote_config_off", missing=[str(p) for p in (central, box) if not p.is_file()])
        return None
    return RemoteConfig(service.settings, version, crypto.load_verify_key(central), up.sensor_id,
                        crypto.load_decryption_key(box), up.state_dir,
                        apply=lambda old, new: apply(service, old, new), ack=outbound.uplink.config_ack)


def drain(remote: RemoteConfig | None, inbox: queue.SimpleQueue[bytes]) -> None:
    """Handle the documents the publisher received since the last call (main thread)."""
    while remote is not None and not inbox.empty():
        ack = remote.handle(inbox.get_nowait())
        if ack:
            log.info("config_push", version=ack.get("version"), ok=ack.get("ok"), errors=ack.get("errors"))


def apply(service: Service, old: AgentConfig, new: AgentConfig) -> None:
    """Put `new` into effect on the running service; ValueError for what needs a restart."""
    changed = set(changed_keys(old, new))
    if "capture.reopen_on_push" in changed:
        raise ValueError("capture.reopen_on_push: only a restart of the service changes what it may keep")
    if "capture.workers" in changed:
        raise ValueError("capture.workers: only a restart of the service changes the capture processes")
    reopen = {key for key in changed if key.startswith("capture.")} - _LIVE_CAPTURE_KEYS
    if service.pool is not None:
        _to_workers(service, changed, reopen, new)
    elif reopen and service.capture is not None:
        service.reopen_capture(new.capture)
    elif service.capture is not None:
        if "capture.bpf" in changed:
            service.capture.set_filter(new.capture.bpf)
        service.capture.batch_size = new.capture.batch_size
    if service.pool is None:
        service.table.reconfigure(new.flows, new.hints)
    if service.inventory is not None and any(key.startswith("inventory.") for key in changed):
        wanted = new.inventory
        rules = load_rules(wanted.roles_file or None).with_overrides(wanted.role_overrides,
                                                                     "inventory.role_overrides")
        service.inventory.reconfigure(wanted.max_devices, rules, wanted.local_networks, wanted.refresh)
    if service.health is not None:
        service.health.reconfigure(new.health)
    if service.outbound is not None:
        service.outbound.uplink.reconfigure(new.uplink)
        if changed & _BROKER_KEYS:
            service.outbound.restart_publisher(new)
    logsetup.configure(new.log.level)
    service.settings = new
    log.info("config_applied", changed=sorted(changed))


def _to_workers(service: Service, changed: set[str], reopen: set[str], new: AgentConfig) -> None:
    """Capture, flow and hint changes for the capture workers, checked here first; ValueError if refused."""
    assert service.pool is not None
    if reopen:
        raise ValueError(f"{', '.join(sorted(reopen))}: with capture.workers > 1 the captures are not "
                         "reopened; restart the service to apply this change")
    if "capture.bpf" in changed:
        try:
            check_filter(new.capture.bpf, service.table.linktype, new.capture.snaplen)
        except CaptureError as exc:
            raise ValueError(str(exc)) from exc
    service.table.reconfigure(new.flows, new.hints)  # the same checks the workers' tables make
    forward(service.pool, new.flows, new.hints, new.capture.bpf if "capture.bpf" in changed else None,
            new.capture.batch_size)
