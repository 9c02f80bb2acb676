"""Remote configuration on the sensor: check, store and apply a pushed document; undo one that cuts it off.

`RemoteConfig.handle(envelope)` runs, in this order, and stops at the first refusal (agent/config_envelope.py
has the envelope): size <= max_bytes (`too_large`); framing (`malformed`); signature by the pinned central
key (`signature`); the header names this sensor (`other_sensor`); the exact envelope already applied or
last refused, i.e. the retained copy redelivered after a reconnect, is ignored without an answer; a
version not above both the running one and the last one tried (`stale`: old documents and replays);
decryption with the sensor's box key (`decrypt`); UTF-8 TOML (`toml`); agent.config.parse, every problem
(`invalid`); harmful values the validator lets through (`harmful`, see `harmful`). Then the document is
written atomically (temporary file, fsync, rename) to state_dir/agent.toml behind a stamp line (version,
sensor, envelope SHA-256), the running one kept as agent.toml.last-good (absent while the packaged file
runs), and apply(old, new) is called (`write_failed`, `apply_failed`: files and settings are put back).

Acks (sent through `ack`, returned by `handle`; {} when nothing is sent): {"version", "ok": true,
"changed": [dotted keys]} or {"version", "ok": false, "reason", "errors": ["<reason>: <detail>", ...]};
version is null when the header could not be trusted. A version, once authentic and readable, counts as
tried (state_dir/agent.toml.seen), so a refused document stays refused.

Probation: after an apply, `tick(now, connected)` (called about once a second by the owner) watches the
broker connection. Connected at a tick `confirm_after` seconds or more into probation, or a further
document arriving, confirms the new settings; disconnected for `grace` seconds rolls back to the previous
settings (files and apply(bad, good)) and acks {"version": previous, "ok": true, "rolled_back": bad,
"errors": [...]}, sent once the broker is reachable again. Not thread-safe: call from one thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent import config, crypto
from agent.config import AgentConfig, ConfigError
from agent.config_envelope import decrypt_envelope, verify_envelope

REASONS: Final = ("too_large", "malformed", "signature", "other_sensor", "stale", "decrypt", "toml",
                  "invalid", "harmful", "write_failed", "apply_failed")
STORED, LAST_GOOD, SEEN = "agent.toml", "agent.toml.last-good", "agent.toml.seen"
_STAMP: Final = re.compile(r"# ward-agent remote configuration version=(\d+) sensor=(\S+) "
                           r"sha256=([0-9a-f]{64})\n")
_MAY_BE_ZERO: Final = frozenset({"flows.tcp_close_grace", "health.loss_percent"})
_NEEDS_VISIT: Final = ("uplink.sensor_id", "uplink.site", "uplink.state_dir", "uplink.keys_dir")
log = structlog.get_logger("agent.remote_config")


class Refused(Exception):
    def __init__(self, reason: str, details: list[str], version: int | None = None) -> None:
        super().__init__(f"{reason}: {'; '.join(details)}")
        self.reason, self.version = reason, version
        self.errors = [f"{reason}: {detail}" for detail in details]


@dataclass(frozen=True, slots=True)
class _Running:
    config: AgentConfig
    version: int
    text: str | None  # the stamped file text when it came from a push; None: the packaged file
    digest: str = ""


@dataclass(frozen=True, slots=True)
class Start:
    """What to run at start: the settings, the pushed version they carry (or shadow), and their file."""

    config: AgentConfig
    version: int
    source: Path | None
    notes: tuple[str, ...] = ()


def load_start(packaged: str | Path | None, state_dir: str | Path) -> Start:
    """state_dir/agent.toml (else its last-good) when newer than the packaged file, else the packaged file.

    A packaged file edited after the last push wins, but the pushed version is still remembered, so the
    retained document does not come back over it. ConfigError only from the packaged file."""
    notes: list[str] = []
    for path in (Path(state_dir) / STORED, Path(state_dir) / LAST_GOOD):
        found = _read_stored(path, notes)
        if found is None:
            continue
        if packaged is not None and Path(packaged).stat().st_mtime > path.stat().st_mtime:
            notes.append(f"{packaged} changed after {path} was stored: it wins")
            return Start(config.load(packaged), found[1], Path(packaged), tuple(notes))
        return Start(found[0], found[1], path, tuple(notes))
    return Start(config.load(packaged), 0, Path(packaged) if packaged else None, tuple(notes))


def harmful(old: AgentConfig, new: AgentConfig, state_dir: str | Path) -> list[str]:
    """Valid values that would still hurt a box nobody visits: every problem, with its dotted path."""
    problems = []
    for path, value in _values(new).items():
        if type(value) in (int, float) and value <= 0 and path not in _MAY_BE_ZERO:
            problems.append(f"{path}: {value!r} would stop or spin its stage; it must be above 0")
    old_values = _values(old)
    for path in _NEEDS_VISIT:
        if old_values[path] != _values(new)[path]:
            problems.append(f"{path}: cannot change remotely (from {old_values[path]!r} to "
                            f"{_values(new)[path]!r}); it needs a visit")
    if old.uplink.enabled and not new.uplink.enabled:
        problems.append("uplink.enabled: false would cut the sensor off from the centre for good")
    if old.capture.interface and not new.capture.interface:
        problems.append("capture.interface: empty would stop the capture")
    if new.uplink.spool_max_mb != old.uplink.spool_max_mb:
        try:
            room = _spool_room(Path(state_dir))
        except OSError as exc:
            problems.append(f"uplink.spool_max_mb: cannot measure free disk in {state_dir}: {exc}")
        else:
            if new.uplink.spool_max_mb << 20 > room:
                problems.append(f"uplink.spool_max_mb: {new.uplink.spool_max_mb} MiB is more than the "
                                f"{room >> 20} MiB free for the spool in {state_dir}")
    return problems


def changed_keys(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Dotted paths whose values differ (e.g. "capture.bpf"), in schema order."""
    old_values = _values(old)
    return [path for path, value in _values(new).items() if old_values[path] != value]


class RemoteConfig:
    """The sensor's side of remote configuration (module docstring)."""

    def __init__(self, current: AgentConfig, version: int, central_key: Ed25519PublicKey, sensor_id: str,
                 box_key: X25519PrivateKey, state_dir: str | Path, max_bytes: int = 65536, *,
                 apply: Callable[[AgentConfig, AgentConfig], None], ack: Callable[[dict[str, Any]], None],
                 grace: float = 120.0, confirm_after: float = 10.0) -> None:
        self._central, self._sensor, self._box = central_key, sensor_id, box_key
        self._dir, self._max_bytes = Path(state_dir), max_bytes
        self._apply, self._ack, self._grace, self._confirm_after = apply, ack, grace, confirm_after
        self._running = self._adopt(current, version)
        self._seen = self._read_seen()
        self._previous: _Running | None = None  # set while on probation
        self._probation_start: float | None = None
        self._down_since: float | None = None
        self.counts: Counter[str] = Counter()

    @property
    def version(self) -> int:
        return self._running.version

    @property
    def config(self) -> AgentConfig:
        return self._running.config

    @property
    def on_probation(self) -> bool:
        return self._previous is not None

    def handle(self, payload: bytes) -> dict[str, Any]:
        """Check, store and apply one envelope; the ack sent ({} for an ignored retained copy)."""
        try:
            ack = self._accept(bytes(payload))
        except Refused as refused:
            ack = {"version": refused.version, "ok": False, "reason": refused.reason,
                   "errors": refused.errors}
            log.warning("config_refused", version=refused.version, errors=refused.errors)
        self.counts["ignored" if not ack else "applied" if ack["ok"] else ack["reason"]] += 1
        if ack:
            self._ack(ack)
        return ack

    def tick(self, now: float, connected: bool) -> dict[str, Any] | None:
        """Watch the broker connection while on probation; the rollback ack when it rolled back."""
        if self._previous is None:
            return None
        if self._probation_start is None:
            self._probation_start = now
        if connected:
            self._down_since = None
            if now - self._probation_start >= self._confirm_after:
                self._previous = None
            return None
        if self._down_since is None:
            self._down_since = now
        if now - self._down_since < self._grace:
            return None
        return self._rollback(now - self._down_since)

    # -- handling -------------------------------------------------------------------------------------------

    def _accept(self, payload: bytes) -> dict[str, Any]:
        self._previous = None  # a message came through the broker: the running settings reach it
        if len(payload) > self._max_bytes:
            raise Refused("too_large", [f"{len(payload)} bytes, the limit is {self._max_bytes}"])
        try:
            header = verify_envelope(payload, self._central)
        except crypto.OpenError as exc:
            raise Refused(exc.reason, [str(exc).split(": ", 1)[-1]]) from None
        version = header.version
        if header.sensor != self._sensor:
            raise Refused("other_sensor", [f"the document is for {header.sensor!r}"], version)
        digest = hashlib.sha256(payload).hexdigest()
        if digest in (self._running.digest, self._seen[1]):
            return {}
        newest = max(self._running.version, self._seen[0])
        if version <= newest:
            raise Refused("stale", [f"version {version} is not newer than {newest} "
                                    f"(running {self._running.version})"], version)
        try:
            new, text = self._open(payload, version)
            ack = self._install(new, version, digest, _stamp(version, self._sensor, digest) + text)
        except Refused as refused:
            if refused.reason != "write_failed":  # authentic but refused: it stays refused
                self._remember_seen(version, digest)
            raise
        self._remember_seen(version, digest)
        return ack

    def _open(self, payload: bytes, version: int) -> tuple[AgentConfig, str]:
        try:
            text = decrypt_envelope(payload, self._box, self._central).decode("utf-8")
        except crypto.OpenError as exc:
            raise Refused("decrypt", [str(exc).split(": ", 1)[-1]], version) from None
        except UnicodeDecodeError:
            raise Refused("toml", ["the document is not UTF-8"], version) from None
        return self._validate(text, version), text

    def _validate(self, text: str, version: int) -> AgentConfig:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise Refused("toml", [str(exc)], version) from None
        try:
            new = config.parse(document)
        except ConfigError as exc:
            raise Refused("invalid", exc.problems, version) from None
        problems = harmful(self._running.config, new, self._dir)
        if problems:
            raise Refused("harmful", problems, version)
        return new

    def _install(self, new: AgentConfig, version: int, digest: str, stamped: str) -> dict[str, Any]:
        previous = self._running
        try:
            if previous.text is None:
                (self._dir / LAST_GOOD).unlink(missing_ok=True)
            else:
                _write_atomic(self._dir / LAST_GOOD, previous.text)
            _write_atomic(self._dir / STORED, stamped)
        except OSError as exc:  # not remembered as tried: a redelivery after a reconnect may succeed
            raise Refused("write_failed", [f"{self._dir}: {exc.strerror or exc}"], version) from None
        try:
            self._apply(previous.config, new)
        except Exception as exc:  # the owner's code: whatever it raises, the old settings come back
            self._restore(previous)
            self._reapply(new, previous.config)
            raise Refused("apply_failed", [f"{type(exc).__name__}: {exc}"], version) from None
        self._running = _Running(new, version, stamped, digest)
        self._previous, self._probation_start, self._down_since = previous, None, None
        log.info("config_applied", version=version, changed=changed_keys(previous.config, new))
        return {"version": version, "ok": True, "changed": changed_keys(previous.config, new)}

    def _rollback(self, down: float) -> dict[str, Any]:
        bad, good = self._running, self._previous
        assert good is not None
        self._previous = None
        try:
            self._restore(good)
        except OSError as exc:
            log.error("config_rollback_write_failed", error=str(exc))
        self._reapply(bad.config, good.config)
        self._running = good
        self.counts["rolled_back"] += 1
        ack = {"version": good.version, "ok": True, "rolled_back": bad.version,
               "errors": [f"rolled_back: version {bad.version} left the broker unreachable for {down:.0f} s; "
                          f"back on version {good.version}"]}
        log.warning("config_rolled_back", version=bad.version, back_to=good.version)
        self._ack(ack)
        return ack

    def _reapply(self, old: AgentConfig, new: AgentConfig) -> None:
        try:
            self._apply(old, new)
        except Exception:  # nothing better to go back to: log it, keep running
            log.exception("config_reapply_failed")
            self.counts["reapply_failed"] += 1

    def _restore(self, running: _Running) -> None:
        if running.text is None:
            (self._dir / STORED).unlink(missing_ok=True)
        else:
            _write_atomic(self._dir / STORED, running.text)

    # -- state files ---------------------------------------------------------------------------------------

    def _adopt(self, current: AgentConfig, version: int) -> _Running:
        """The running settings; their stored text and digest when state_dir/agent.toml holds them."""
        found = _read_stored(self._dir / STORED, [])
        if found is not None and found[1] == version and found[0] == current:
            text = (self._dir / STORED).read_text(encoding="utf-8")
            match = _STAMP.match(text)
            return _Running(current, version, text, match.group(3) if match else "")
        return _Running(current, version, None)

    def _read_seen(self) -> tuple[int, str]:
        try:
            seen = json.loads((self._dir / SEEN).read_text(encoding="utf-8"))
            if type(seen.get("version")) is int and isinstance(seen.get("sha256"), str):
                return max(seen["version"], self._running.version), seen["sha256"]
        except (OSError, ValueError, AttributeError):
            pass
        return self._running.version, ""

    def _remember_seen(self, version: int, digest: str) -> None:
        self._seen = (version, digest)
        try:
            _write_atomic(self._dir / SEEN, json.dumps({"version": version, "sha256": digest}) + "\n")
        except OSError as exc:
            log.warning("config_seen_not_written", error=str(exc))


def _stamp(version: int, sensor: str, digest: str) -> str:
    return f"# ward-agent remote configuration version={version} sensor={sensor} sha256={digest}\n"


def _read_stored(path: Path, notes: list[str]) -> tuple[AgentConfig, int] | None:
    """(settings, version) of a stamped stored file; None (with a note unless absent) if unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        notes.append(f"{path}: unreadable: {exc}")
        return None
    match = _STAMP.match(text)
    try:
        if match is None:
            raise ConfigError(["no remote configuration stamp"])
        return config.parse(tomllib.loads(text)), int(match.group(1))
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        notes.append(f"{path}: not usable: {exc}")
        return None


def _values(settings: AgentConfig) -> dict[str, Any]:
    return {f"{section.name}.{name}": value for section in dataclasses.fields(settings)
            for name, value in dataclasses.asdict(getattr(settings, section.name)).items()}


def _spool_room(state_dir: Path) -> int:
    """Bytes the spool could grow to: free space in the state directory plus what the spool holds now."""
    held = 0
    spool = state_dir / "spool"
    if spool.is_dir():
        held = sum(entry.stat().st_size for entry in os.scandir(spool) if entry.is_file())
    return shutil.disk_usage(state_dir).free + held


def _write_atomic(path: Path, text: str) -> None:
    """Temporary file (mode 0600: a document can hold secrets), fsync, rename over path, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
