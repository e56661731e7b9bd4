"""The errors users hit: one clear line, non-zero exit, and a failed start leaves no instance behind."""
import os
import socket

import pytest

from harness import TCPServer, connect, echo_handler, free_port, recv_all, expect_fail




def status_of(v, name):
    return [i for i in v.json("skynet", "status") if i["name"] == name]


def test_remote_unknown_to_discovery(pair):
    _, b = pair
    stranger = os.urandom(32).hex()
    port = free_port()
    r = b.cli("skynet", "start", "--pk", stranger, "--remote", "8080", "--local", str(port), "--raw-tcp", "--dmsg")
    expect_fail(r, "unknown to discovery", stranger)
    assert status_of(b, f"skynet-client-{port}") == []
    expect_fail(b.cli("skynet", "stop", f"skynet-client-{port}"), "no instance named")
    # The failed forward does not hold the port.
    s = socket.socket(); s.bind(("127.0.0.1", port)); s.close()


def test_remote_offline(net, pair):
    _, b = pair
    c = net.start_visor("visor-offline")
    c_pk = c.pk
    c.proc.stop()
    r = b.cli("skynet", "start", "--pk", c_pk, "--remote", "8080", "--local", "0", "--raw-tcp", "--dmsg")
    expect_fail(r, "offline")


def test_port_not_exposed(pair):
    a, b = pair
    port = free_port()
    r = b.cli("skynet", "start", "--pk", a.pk, "--remote", "1", "--local", str(port), "--raw-tcp", "--dmsg")
    expect_fail(r, "port 1 is not exposed")
    assert status_of(b, f"skynet-client-{port}") == []


def test_nothing_listening_behind_exposed_port(pair):
    """The connecting client is closed; the forward stays up and works once the service appears."""
    a, b = pair
    dead = free_port()
    a.ok("skynet", "srv", "start", "--ports", str(dead))
    try:
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(dead), "--local", "0", "--raw-tcp", "--dmsg")
        s = connect(info["local_port"], timeout=15)
        s.sendall(b"hello")
        try:
            assert recv_all(s) == b""  # closed, not hung
        except ConnectionResetError:
            pass  # closed with our unread "hello" in its buffer: a reset is a close too
        s.close()
        assert status_of(b, info["name"])[0]["state"] == "running"
        backend = TCPServer(echo_handler, port=dead)
        try:
            s = connect(info["local_port"])
            s.sendall(b"now it works")
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == b"now it works"
            s.close()
        finally:
            backend.close()
        b.ok("skynet", "stop", info["name"])
    finally:
        a.cli("skynet", "srv", "stop", f"skynet-{dead}")


def test_local_port_in_use(pair):
    a, b = pair
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        a.ok("skynet", "srv", "start", "--ports", "4801")
        r = b.cli("skynet", "start", "--pk", a.pk, "--remote", "4801", "--local", str(port), "--raw-tcp", "--dmsg")
        expect_fail(r, f"local port {port} is already in use")
        assert status_of(b, f"skynet-client-{port}") == []
    finally:
        blocker.close()
        a.cli("skynet", "srv", "stop", "skynet-4801")


@pytest.mark.parametrize("key", ["abc", "G" * 64, "A" * 64, "0" * 63, "0" * 65])
def test_malformed_key(pair, key):
    _, b = pair
    r = b.cli("skynet", "start", "--pk", key, "--remote", "80", "--local", "0", "--raw-tcp")
    expect_fail(r, "invalid public key", "64 lowercase hex")


@pytest.mark.parametrize("args", [
    ["--remote", "70000", "--local", "9000"],
    ["--remote", "0", "--local", "9000"],
    ["--remote", "80", "--local=-1"],
    ["--remote", "80", "--local", "65536"],
])
def test_port_out_of_range(pair, args):
    a, b = pair
    r = b.cli("skynet", "start", "--pk", a.pk, *args, "--raw-tcp")
    expect_fail(r, "out of range")


def test_srv_ports_out_of_range(pair):
    a, _ = pair
    expect_fail(a.cli("skynet", "srv", "start", "--ports", "8080,99999"), "port 99999 is out of range")
    expect_fail(a.cli("skynet", "srv", "start", "--ports", "80,x"), "invalid port")


def test_visor_not_running(net):
    port = free_port()
    r = net.run_cli("skynet", "status", rpc=f"127.0.0.1:{port}")
    expect_fail(r, "no visor running at 127.0.0.1:%d" % port)


def test_skynet_without_direct_address_fails_with_reason(pair):
    a, b = pair  # these visors have no stcpr listener
    a.ok("skynet", "srv", "start", "--ports", "4804")
    try:
        r = b.cli("skynet", "start", "--pk", a.pk, "--remote", "4804", "--local", "0", "--raw-tcp", "--skynet")
        expect_fail(r, "no direct transport", "publishes no direct (stcpr) address")
    finally:
        a.cli("skynet", "srv", "stop", "skynet-4804")


def test_duplicate_name_and_exposed_port(pair):
    a, b = pair
    a.ok("skynet", "srv", "start", "--ports", "4802")
    try:
        expect_fail(a.cli("skynet", "srv", "start", "--ports", "4802", "--name", "other"), "already exposed")
        # The same name again replaces the instance's ports (and whitelist) in place.
        replaced = a.json("skynet", "srv", "start", "--ports", "4803", "--name", "skynet-4802")
        assert replaced["ports"] == [4803]
        assert [i["ports"] for i in a.json("skynet", "srv", "status") if i["name"] == "skynet-4802"] == [[4803]]
    finally:
        a.cli("skynet", "srv", "stop", "skynet-4802")
    expect_fail(a.cli("skynet", "srv", "stop", "no-such"), "no instance named no-such")


def test_wrong_control_token_is_refused(net, pair):
    a, _ = pair
    host, port = a.rpc.split(":")
    token_file = os.path.join(net.env["SKYWIRE_RUNTIME_DIR"], f"rpc-{host}-{port}.token")
    assert oct(os.stat(token_file).st_mode & 0o777) == "0o600"
    import urllib.request, urllib.error
    req = urllib.request.Request(f"http://{a.rpc}/v1/visor", headers={"Authorization": "Bearer " + "0" * 64})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://{a.rpc}/v1/visor", timeout=10)
    assert e.value.code == 401
