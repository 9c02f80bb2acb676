"""The sensor's way out: boot counter, sealing keys, spool and publisher, built from [uplink].

`ward-agent run` and `ward-agent replay --uplink` both use it; the publisher thread puts pushed
configuration documents into `inbox`, which the service loop drains (agent/service_config.py).
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent import __version__
from agent.config import AgentConfig
from agent.publisher import Publisher, PublisherSettings
from agent.records import Counters
from agent.remote_config import RemoteConfig
from agent.spool import Spool
from agent.uplink import SensorKeys, Uplink, next_boot


@dataclass(slots=True)
class Outbound:
    """The uplink's parts, present only when [uplink] is enabled; `inbox` holds pushed configurations."""

    uplink: Uplink
    spool: Spool
    publisher: Publisher
    boot: int
    inbox: queue.SimpleQueue[bytes] = field(default_factory=queue.SimpleQueue)
    remote: RemoteConfig | None = None

    def restart_publisher(self, settings: AgentConfig) -> None:
        """A new broker address or TLS files: a new publisher on the same spool."""
        self.publisher.stop(timeout=2.0)
        self.publisher = _publisher(settings, self.spool, self.boot, self.inbox)
        self.uplink.notify = self.publisher.notify
        self.publisher.start()

    def drain(self, timeout: float) -> bool:
        """Flush and wait (wall time) until the spool is empty; False if it is not within `timeout`."""
        self.uplink.flush()
        self.spool.flush()
        self.publisher.notify()
        deadline = time.monotonic() + timeout
        while self.spool.stats.depth and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.spool.stats.depth == 0

    def close(self, drain_seconds: float) -> None:
        self.uplink.flush()
        self.spool.flush()
        self.publisher.stop(timeout=drain_seconds)
        self.spool.close()


def open_outbound(settings: AgentConfig, counters: Counters) -> Outbound:
    """Boot counter, keys, spool and publisher from [uplink]; raises OSError/ValueError if unusable."""
    up = settings.uplink
    state = Path(up.state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    boot = next_boot(state)
    keys = SensorKeys.load(up.keys_dir)
    spool = Spool(state / "spool", up.spool_max_mb << 20, up.fsync_interval)
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    publisher = _publisher(settings, spool, boot, inbox)
    uplink = Uplink(up, keys, spool, boot, counters, notify=publisher.notify)
    return Outbound(uplink, spool, publisher, boot, inbox)


def _publisher(settings: AgentConfig, spool: Spool, boot: int, inbox: queue.SimpleQueue[bytes]) -> Publisher:
    up = settings.uplink
    return Publisher(PublisherSettings(
        host=up.broker_host, port=up.broker_port, site=up.site, sensor=up.sensor_id,
        ca_file=Path(up.ca_file), cert_file=Path(up.cert_file), key_file=Path(up.key_file), boot=boot,
        version=__version__, capabilities=("flows", "devices", "findings", "health", "config")), spool,
        on_config=inbox.put)
