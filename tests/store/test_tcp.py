"""TCPStore specifics: ports, joining workers, garbage on the wire, clean shutdown."""

from __future__ import annotations

import socket
import struct
import threading
from datetime import timedelta

import pytest
import store_workers as w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from mpdist.errors import DistNetworkError, DistStoreError
from mpdist.store import TCPStore
from mpdist.store import _protocol as proto

LOCAL = "127.0.0.1"
SHORT = timedelta(milliseconds=200)


def _master(**kw) -> TCPStore:
    kw.setdefault("wait_for_workers", False)
    kw.setdefault("timeout", timedelta(seconds=30))
    return TCPStore(LOCAL, 0, is_master=True, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


def test_port_zero_picks_a_port_and_clients_share_the_data(no_leaks):
    with _master() as m:
        assert m.port > 0 and m.is_master
        with TCPStore(LOCAL, m.port, timeout=timedelta(seconds=30)) as c:
            assert not c.is_master
            c.set("k", b"v")
            assert m.get("k") == b"v"
            assert m.add("n", 4) == 4 and c.add("n", 1) == 5
            assert c.num_keys() == m.num_keys() == 2


def test_port_in_use_is_a_network_error(no_leaks):
    with socket.socket() as busy:
        busy.bind((LOCAL, 0))
        busy.listen()
        with pytest.raises(DistNetworkError, match=str(busy.getsockname()[1])):
            TCPStore(LOCAL, busy.getsockname()[1], is_master=True, wait_for_workers=False)
    with _master() as m, pytest.raises(DistNetworkError, match="in use"):
        TCPStore(LOCAL, m.port, is_master=True, wait_for_workers=False)


def test_wait_for_workers_timeout_message(no_leaks):
    with pytest.raises(DistStoreError) as ei:
        TCPStore(LOCAL, 0, world_size=3, is_master=True, timeout=SHORT)
    assert str(ei.value) == "Timed out after 0.2 seconds waiting for clients. 1/3 clients joined."


def test_wait_for_workers_returns_when_all_joined(no_leaks):
    port = _free_port()
    clients: list[TCPStore] = []
    errors: list[BaseException] = []

    def join() -> None:
        # connects before or after the master listens: the client retries until its timeout
        try:
            clients.append(TCPStore(LOCAL, port, world_size=3, timeout=timedelta(seconds=30)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=join) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        with TCPStore(
            LOCAL, port, world_size=3, is_master=True, timeout=timedelta(seconds=30)
        ) as m:
            for t in threads:
                t.join()
            assert not errors
            assert m.get("init/") == b"3"
            assert m.num_keys() == 1  # the internal join counter is a key
    finally:
        for t in threads:
            t.join()
        for c in clients:
            c.close()


def test_client_without_server_times_out(no_leaks):
    with pytest.raises(DistNetworkError, match="timed out"):
        TCPStore(LOCAL, _free_port(), timeout=SHORT)


def test_bad_constructor_args():
    with pytest.raises(TypeError):
        TCPStore(LOCAL, "80", is_master=True)
    with pytest.raises(TypeError):
        TCPStore(1, 0, is_master=True)
    with pytest.raises(ValueError):
        TCPStore(LOCAL, 70000, is_master=True)
    with pytest.raises(ValueError):
        TCPStore(LOCAL, 0, is_master=False)
    with pytest.raises(ValueError):
        TCPStore(LOCAL, 0, world_size=0, is_master=True)
    with pytest.raises(ValueError):
        TCPStore(LOCAL, 0, is_master=True, timeout=timedelta(seconds=-1))


def _raw(port: int) -> socket.socket:
    s = socket.create_connection((LOCAL, port), timeout=30)
    return s


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        proto.HEADER.pack(proto.MAGIC, 200, 0),  # unknown op
        proto.HEADER.pack(proto.MAGIC, proto.Op.SET, 6)
        + struct.pack("<I", 9)
        + b"xx",  # bad fields
        proto.encode_frame(proto.Op.SET, [b"only-a-key"]),  # wrong field count
        proto.encode_frame(proto.Op.GET, [b"short", b"k"]),  # bad timeout field
    ],
)
def test_garbage_connection_is_dropped_and_others_carry_on(garbage, no_leaks):
    with _master() as m, TCPStore(LOCAL, m.port, timeout=timedelta(seconds=30)) as c:
        got: list[bytes] = []
        waiter = threading.Thread(target=lambda: got.append(c.get("later")))
        waiter.start()
        try:
            with _raw(m.port) as bad:
                bad.sendall(garbage)
                assert bad.recv(100) == b""  # the server hung up on it
            m.set("later", b"fine")
        finally:
            waiter.join()
        assert got == [b"fine"]
        assert c.add("n", 1) == 1


def test_client_disconnecting_while_parked_does_not_hurt(no_leaks):
    with _master() as m:
        with _raw(m.port) as gone:
            gone.sendall(proto.encode_frame(proto.Op.GET, [proto.encode_timeout(None), b"k"]))
        m.set("k", b"v")  # wakes the parked request of a closed connection
        assert m.get("k") == b"v"


def test_close_stops_the_server_thread_and_every_socket(no_leaks):
    with w.no_new_fds():
        m = _master()
        c = TCPStore(LOCAL, m.port, timeout=timedelta(seconds=30))
        c.set("a", b"1")
        assert any(t.name.startswith("mpdist-tcpstore-server") for t in threading.enumerate())
        err = w.get_interrupted_by_close(c)  # close wakes the blocked get
        m.close()
        m.close()  # idempotent
        assert err is not None and "closed" in str(err)
        assert not any(t.name.startswith("mpdist-tcpstore-server") for t in threading.enumerate())
    with pytest.raises(DistStoreError, match="closed"):
        m.get("a")


def test_server_gone_is_a_network_error(no_leaks):
    m = _master()
    c = TCPStore(LOCAL, m.port, timeout=timedelta(seconds=30))
    try:
        c.set("a", b"1")
        m.close()
        with pytest.raises(DistNetworkError):
            c.get("a")
    finally:
        c.close()
        m.close()


def test_timeout_answer_keeps_the_connection_usable(no_leaks):
    with _master() as m:
        m.set("a", b"1")
        with pytest.raises(DistStoreError, match=r"timed out.*'b'") as ei:
            m.wait(["a", "b"], SHORT)
        assert "'a'" not in str(ei.value)  # only the missing key is named
        m.set("b", b"2")
        assert m.multi_get(["a", "b"]) == [b"1", b"2"]


def test_eight_processes_add_exactly():
    with _master(timeout=timedelta(seconds=60)) as m:
        w.adds_from_eight_processes(m, ("tcp", m.port))


def test_one_mib_values_cross_processes_intact():
    with _master(timeout=timedelta(seconds=60)) as m:
        w.big_values_from_another_process(m, ("tcp", m.port))


@settings(max_examples=20, deadline=None)
@given(fields=hst.lists(hst.binary(max_size=50), max_size=5), code=hst.integers(0, 255))
def test_protocol_fields_round_trip(fields, code):
    frame = proto.encode_frame(code, fields)
    magic, got_code, length = proto.HEADER.unpack_from(frame, 0)
    assert (magic, got_code, length) == (proto.MAGIC, code, len(frame) - proto.HEADER.size)
    assert proto.decode_fields(frame[proto.HEADER.size :]) == fields


@pytest.fixture(scope="module")
def shared_master():
    with _master() as m:
        yield m


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=hst.binary(min_size=1, max_size=64), valid_header=hst.booleans())
def test_random_bytes_never_hurt_the_server(shared_master, junk, valid_header):
    if valid_header:  # a well-formed header with a random op and length, then junk
        junk = proto.HEADER.pack(proto.MAGIC, junk[0] % 16, len(junk)) + junk
    with _raw(shared_master.port) as bad:
        bad.sendall(junk)
        bad.shutdown(socket.SHUT_WR)  # so a frame waiting for more bytes ends too
        while bad.recv(4096):  # the server answers or hangs up; either way it ends
            pass
    assert shared_master.add("still-alive", 1) >= 1


@pytest.mark.parametrize("seconds", [float("inf"), 1e300, -1.0])
def test_endless_timeouts_on_the_wire_park_forever_without_harm(seconds, no_leaks):
    with _master() as m:
        with _raw(m.port) as c:
            c.sendall(proto.encode_frame(proto.Op.GET, [struct.pack("<d", seconds), b"k"]))
            assert m.add("alive", 1) == 1  # the server still serves others
            m.set("k", b"v")
            reply = c.recv(100)
        status, fields = reply[2], proto.decode_fields(reply[proto.HEADER.size :])
        assert (status, fields) == (proto.Status.OK, [b"v"])


def test_long_timeouts_are_fine(no_leaks):
    with _master(timeout=timedelta(days=365 * 100)) as m:
        t = threading.Timer(0.02, m.set, args=("k", b"v"))
        t.start()
        try:
            assert m.get("k") == b"v"
        finally:
            t.join()


def test_threads_sharing_one_client_use_several_connections(no_leaks):
    with _master() as m, TCPStore(LOCAL, m.port, timeout=timedelta(seconds=30)) as c:
        # two threads park a get each on the same client while others keep adding
        got: list[bytes] = []
        getters = [threading.Thread(target=lambda k=k: got.append(c.get(k))) for k in "xy"]
        adders = [
            threading.Thread(target=lambda: [c.add("n", 1) for _ in range(100)]) for _ in range(4)
        ]
        for t in getters + adders:
            t.start()
        for t in adders:
            t.join()
        m.multi_set(["x", "y"], [b"1", b"2"])
        for t in getters:
            t.join()
        assert c.get("n") == b"400"
        assert sorted(got) == [b"1", b"2"]
