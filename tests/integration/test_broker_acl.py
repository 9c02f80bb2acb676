"""The broker set-up (scripts/broker_pki.py, broker_conf.py) confines each certificate to its own topics."""

from __future__ import annotations

import os
import socket
import ssl
import stat
from pathlib import Path

import broker_pki
import pytest
from broker import (
    MOSQUITTO,
    SITE,
    Broker,
    mosquitto_fixture,  # noqa: F401  (the `mosquitto` fixture)
)

A, B = f"ward/{SITE}/ward3-a", f"ward/{SITE}/ward3-b"
NOT_AUTHORIZED = 0x87


def _connect_packet(client_id: bytes) -> bytes:
    """An MQTT v5 CONNECT (clean start, keepalive 60, no properties)."""
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + len(client_id).to_bytes(2, "big") + client_id
    return bytes([0x10, len(body)]) + body


def _answer(sock: socket.socket) -> bytes:
    """What the broker sends back to a CONNECT, or b"" if it closes or resets the connection."""
    sock.settimeout(5)
    try:
        sock.sendall(_connect_packet(b"ward3-a"))
        return sock.recv(64)
    except (OSError, ssl.SSLError):
        return b""


def test_sensor_publishes_to_own_topics(mosquitto: Broker) -> None:
    """ward3-a may publish its data, status and config acks (a success code, < 0x80)."""
    sensor = mosquitto.client("ward3-a")
    codes = [sensor.publish(f"{A}/{suffix}", b"x") for suffix in ("up/flows", "status", "config/ack")]
    assert all(code is not None and code.value < 0x80 for code in codes), codes


def test_sensor_cannot_publish_to_other_sensor(mosquitto: Broker) -> None:
    """ward3-a publishing on ward3-b's data topic gets PUBACK 0x87 'Not authorized'."""
    code = mosquitto.client("ward3-a").publish(f"{B}/up/flows", b"forged")
    assert code is not None and (code.value, code.getName()) == (NOT_AUTHORIZED, "Not authorized")


def test_sensor_cannot_write_its_config(mosquitto: Broker) -> None:
    """Only the collector writes a sensor's config topic; the sensor's own attempt gets 0x87."""
    code = mosquitto.client("ward3-a").publish(f"{A}/config", b"{}", retain=True)
    assert code is not None and code.value == NOT_AUTHORIZED


def test_sensor_cannot_read_other_sensor(mosquitto: Broker) -> None:
    """ward3-a's subscription to ward3-b's topics gets SUBACK 0x87 (the dynamic-security plugin checks
    subscriptions) and delivers nothing, while ward3-b gets its own config."""
    spy, owner = mosquitto.client("ward3-a"), mosquitto.client("ward3-b")
    suback = spy.subscribe(f"{B}/#")
    owner.subscribe(f"{B}/config")
    mosquitto.client("collector").publish(f"{B}/config", b"config for b", retain=True)
    owner.publish(f"{B}/up/flows", b"data of b")
    assert owner.wait_messages(f"{B}/config", 1) == [(f"{B}/config", b"config for b", False)]
    assert [(code.value, code.getName()) for code in suback] == [(NOT_AUTHORIZED, "Not authorized")]
    assert spy.messages() == []


def test_acl_file_grants_foreign_subscription_but_delivers_nothing(tmp_path: Path) -> None:
    """The --acl-file fallback: mosquitto 2.0's acl_file grants the foreign subscription (SUBACK 0x01) and
    checks `read` per message instead, so ward3-a still receives nothing of ward3-b's."""
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip("mosquitto is not installed")
    broker = Broker.create(tmp_path / "broker", acl_file=True)
    assert not (broker.directory / "conf" / "dynamic-security.json").exists()
    broker.start()
    try:
        spy, owner = broker.client("ward3-a"), broker.client("ward3-b")
        suback = spy.subscribe(f"{B}/#")
        owner.subscribe(f"{B}/config")
        broker.client("collector").publish(f"{B}/config", b"config for b")
        assert owner.wait_messages(f"{B}/config", 1) == [(f"{B}/config", b"config for b", False)]
        assert [code.value for code in suback] == [1]
        assert spy.messages() == []
        code = broker.client("ward3-a").publish(f"{B}/up/flows", b"forged")
        assert code is not None and code.value == NOT_AUTHORIZED
    finally:
        broker.close_clients()
        broker.kill()


def test_unknown_certificate_gets_no_rights(mosquitto: Broker) -> None:
    """A CA-signed certificate issued after the configuration was written (so unknown to the plugin)
    connects, but may neither publish nor subscribe, even to what would be its own topics."""
    broker_pki.issue_client(mosquitto.settings.pki, "ward3-c")
    late = mosquitto.client("ward3-c")
    code = late.publish(f"ward/{SITE}/ward3-c/up/flows", b"x")
    assert code is not None and code.value == NOT_AUTHORIZED
    assert [code.value for code in late.subscribe(f"ward/{SITE}/ward3-c/config")] == [NOT_AUTHORIZED]


def test_sensor_cannot_read_other_sensors_acks(mosquitto: Broker) -> None:
    """The collector's ack for ward3-b reaches ward3-b; ward3-a, subscribed to it too, gets nothing."""
    spy, owner = mosquitto.client("ward3-a"), mosquitto.client("ward3-b")
    spy.subscribe(f"{B}/ack")
    owner.subscribe(f"{B}/ack")
    code = mosquitto.client("collector").publish(f"{B}/ack", b'{"boot":1,"seqs":[[0,9]]}')
    assert code is not None and code.value < 0x80
    assert owner.wait_messages(f"{B}/ack", 1) == [(f"{B}/ack", b'{"boot":1,"seqs":[[0,9]]}', False)]
    assert spy.messages() == []


@pytest.mark.parametrize("sensor, target", [("ward3-a", A), ("ward3-b", A)])
def test_sensor_cannot_write_an_ack(mosquitto: Broker, sensor: str, target: str) -> None:
    """Only the collector acknowledges: a sensor's forged ack (its own or another's) gets PUBACK 0x87."""
    subscriber = mosquitto.client("ward3-a")
    subscriber.subscribe(f"{A}/ack")
    code = mosquitto.client(sensor).publish(f"{target}/ack", b'{"boot":1,"seqs":[[0,99]]}')
    assert code is not None and (code.value, code.getName()) == (NOT_AUTHORIZED, "Not authorized")
    assert subscriber.messages() == []


def test_sensor_reads_own_retained_config(mosquitto: Broker) -> None:
    """The collector's retained config document reaches the sensor it is for."""
    mosquitto.client("collector").publish(f"{A}/config", b"v1", retain=True)
    sensor = mosquitto.client("ward3-a")
    sensor.subscribe(f"{A}/config")
    assert sensor.wait_messages(f"{A}/config", 1) == [(f"{A}/config", b"v1", True)]


def test_collector_receives_every_sensor(mosquitto: Broker) -> None:
    """The collector's subscription to ward/+/+/up/# gets data from both sensors."""
    collector = mosquitto.client("collector")
    collector.subscribe("ward/+/+/up/#")
    mosquitto.client("ward3-a").publish(f"{A}/up/flows", b"a")
    mosquitto.client("ward3-b").publish(f"{B}/up/flows", b"b")
    assert sorted(p for _, p, _ in collector.wait_messages("ward/", 2)) == [b"a", b"b"]


def test_collector_shared_subscription(mosquitto: Broker) -> None:
    """The collector may subscribe through a shared group ($share/<group>/...) and gets the data; a sensor's
    shared subscription to another sensor's topics is refused (0x87)."""
    collector = mosquitto.client("collector")
    assert [c.value for c in collector.subscribe("$share/central/ward/+/+/up/#")] == [1]
    spy = mosquitto.client("ward3-a")
    assert [c.value for c in spy.subscribe(f"$share/central/{B}/#")] == [NOT_AUTHORIZED]
    mosquitto.client("ward3-b").publish(f"{B}/up/flows", b"b")
    assert collector.wait_messages("ward/", 1) == [(f"{B}/up/flows", b"b", False)]
    assert spy.messages() == []


def test_collector_cannot_forge_sensor_data(mosquitto: Broker) -> None:
    """The collector's certificate cannot publish on a sensor's data topic (0x87)."""
    code = mosquitto.client("collector").publish(f"{A}/up/flows", b"forged")
    assert code is not None and code.value == NOT_AUTHORIZED


def test_client_id_takeover_prevented(mosquitto: Broker) -> None:
    """ward3-a connecting with client id 'ward3-b' does not disconnect ward3-b (use_username_as_clientid)."""
    victim = mosquitto.client("ward3-b")
    assert victim.connected() is not None
    intruder = mosquitto.client("ward3-a", client_id="ward3-b")
    assert intruder.connected() is not None and not intruder.connected().is_failure  # type: ignore[union-attr]
    code = victim.publish(f"{B}/up/flows", b"still here")
    assert code is not None and code.value < 0x80
    assert not any(e[0] == "disconnect" for e in victim.events)


def test_client_id_takeover_without_pinning(mosquitto: Broker) -> None:
    """The counter-check: without use_username_as_clientid the same intruder kicks ward3-b off."""
    mosquitto.reconfigure(pin_client_id=False)
    mosquitto.restart()
    victim = mosquitto.client("ward3-b")
    victim.client.reconnect_delay_set(60, 60)
    assert victim.connected() is not None
    mosquitto.client("ward3-a", client_id="ward3-b").connected()
    events = victim.wait_for(lambda ev: any(e[0] == "disconnect" for e in ev))
    assert any(e[0] == "disconnect" for e in events)
    assert "Client ward3-b already connected, closing old connection." in mosquitto.log.read_text()


def test_no_plaintext_mqtt(mosquitto: Broker) -> None:
    """A plain-TCP MQTT CONNECT on the broker's only port gets no CONNACK."""
    with socket.create_connection(("127.0.0.1", mosquitto.port), timeout=5) as sock:
        assert _answer(sock) == b""


def test_tls_without_client_certificate_refused(mosquitto: Broker) -> None:
    """TLS with a valid server but no client certificate: the broker closes before any CONNACK."""
    context = ssl.create_default_context(cafile=str(mosquitto.ca))
    with socket.create_connection(("127.0.0.1", mosquitto.port), timeout=5) as raw:
        try:
            sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        except ssl.SSLError:
            return  # refused during the handshake (TLS 1.2)
        assert _answer(sock) == b""


def test_certificate_from_another_ca_refused(mosquitto: Broker) -> None:
    """A client certificate named 'ward3-b' but issued by a stranger's CA gets no CONNACK."""
    rogue = mosquitto.directory / "rogue"
    broker_pki.init_ca(rogue)
    cert, key = broker_pki.issue_client(rogue, "ward3-b").cert, broker_pki.client_paths(rogue, "ward3-b")[1]
    context = ssl.create_default_context(cafile=str(mosquitto.ca))
    context.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", mosquitto.port), timeout=5) as raw:
        try:
            sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        except ssl.SSLError:
            return
        assert _answer(sock) == b""


def test_private_keys_are_owner_only(mosquitto: Broker) -> None:
    """Every private key the PKI script wrote has mode 0600."""
    keys = sorted(mosquitto.settings.pki.rglob("*.key"))
    assert len(keys) == 5
    assert {stat.S_IMODE(k.stat().st_mode) for k in keys} == {0o600}


@pytest.mark.parametrize("cn", ["", "a/b", "a+b", "#", "..", "x" * 65])
def test_client_name_must_be_one_topic_level(cn: str) -> None:
    """A CN that is not one plain topic level (so %u in the ACL could escape its level) is refused."""
    with pytest.raises(ValueError):
        broker_pki.validate_cn(cn)
