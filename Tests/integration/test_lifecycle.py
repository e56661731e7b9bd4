"""Instances survive visor restarts; forwards come back by themselves after outages."""
import json
import socket
import time

from harness import TCPServer, echo_handler, roundtrip




def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # the visor may be restarting
            last = e
        time.sleep(0.3)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


def test_restarts_restore_servers_and_forwards(net):
    a_cfg = net.gen_config("life-a")
    b_cfg = net.gen_config("life-b")
    a = net.start_visor("life-a", config=a_cfg)
    b = net.start_visor("life-b", config=b_cfg)
    backend = TCPServer(echo_handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port), "--whitelist", b.pk, "--backend-timeout", "7.5", "--preserve-host")
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
        port = info["local_port"]
        assert roundtrip(port, b"before") == b"before"

        # Server visor restart: exposure and whitelist come back.
        a.proc.stop()
        a = net.start_visor("life-a2", config=a_cfg)
        srv = a.json("skynet", "srv", "status")
        assert [(i["name"], i["ports"], i["whitelist"]) for i in srv] == [(f"skynet-{backend.port}", [backend.port], [b.pk])]
        assert (srv[0]["backend_timeout"], srv[0]["preserve_host"]) == (7.5, True)  # HTTP options too
        # The forward on b notices and comes back by itself.
        wait_for(lambda: roundtrip(port, b"after server restart") == b"after server restart", 60, "forward after server restart")

        # Client visor restart: the forward is listening again on the same port, and works.
        b.proc.stop()
        b = net.start_visor("life-b2", config=b_cfg)
        listed = b.json("skynet", "status")
        assert [(i["name"], i["local_port"], i["remote_pk"], i["network"]) for i in listed] == [(info["name"], port, a.pk, "dmsg")]
        wait_for(lambda: b.json("skynet", "status", info["name"])[0]["state"] == "running", 60, "running after client restart")
        assert roundtrip(port, b"after client restart") == b"after client restart"

        # stop removes it from the state file: not restored.
        b.ok("skynet", "stop", info["name"])
        b.proc.stop()
        b = net.start_visor("life-b3", config=b_cfg)
        assert b.json("skynet", "status") == []
    finally:
        backend.close()


def test_relay_and_remote_restart_forward_comes_back(net):
    a_cfg = net.gen_config("outage-a")
    a = net.start_visor("outage-a", config=a_cfg)
    b = net.start_visor("outage-b")
    backend = TCPServer(echo_handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
        port = info["local_port"]
        assert roundtrip(port, b"x" * 100000) == b"x" * 100000
        # Kill the relay: the forward shows reconnecting, its port stays bound.
        relay_port = net.relay_port
        net.relay.kill()
        wait_for(lambda: b.json("skynet", "status", info["name"])[0]["state"] == "reconnecting", 20, "reconnecting")
        s = socket.socket(); 
        try:
            s.bind(("127.0.0.1", port))
            raise AssertionError("the forward's port was released during the outage")
        except OSError:
            pass
        finally:
            s.close()
        # Long enough for the forward's keeper to back off (its dials fail at 0, 1, 3 and 7 s;
        # the next waits 8 s more).
        time.sleep(8)
        # Relay back (same key and port), remote visor restarted too.
        net.start_relay("relay-back", port=relay_port, key_name="relay")
        a.proc.kill()
        a = net.start_visor("outage-a2", config=a_cfg)
        payload = bytes(range(256)) * 4096
        wait_for(lambda: roundtrip(port, payload) == payload, 90, "byte-exact transfer after the outage")
        # A connection that got through ends the keeper's pause: the forward says `running` now,
        # not after the keeper's backoff.
        wait_for(lambda: b.json("skynet", "status", info["name"])[0]["state"] == "running", 3,
                 "running once a connection went through")
    finally:
        backend.close()


def test_idle_forward_says_running_soon_after_the_relay_is_back(net):
    """A forward without connections, after a relay outage long enough for its keeper to back
    off to 30 s: once both visors have their relay sessions again, it says `running` within a
    few seconds (its keeper re-dials when a relay session comes up), not after the backoff."""
    a = net.start_visor("idle-a")
    b = net.start_visor("idle-b")
    backend = TCPServer(echo_handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
        assert roundtrip(info["local_port"], b"before") == b"before"
        relay_port = net.relay_port
        net.relay.kill()
        wait_for(lambda: b.json("skynet", "status", info["name"])[0]["state"] == "reconnecting", 20, "reconnecting")
        # The keeper's dials fail at about 0, 1, 3, 7, 15 and 31 s (each pause up to 20 % longer);
        # the next is due 30 s later. The relay comes back after the 31 s dial.
        time.sleep(36)
        net.start_relay("relay-back", port=relay_port, key_name="relay")
        # Each visor's relay keeper is backing off too (up to 10 s): wait for both sessions.
        wait_for(lambda: a.json("visor", "info")["relays"] and b.json("visor", "info")["relays"], 30, "both relay sessions back")
        # No connection is made meanwhile: only the keeper can bring the state back. Before the
        # keeper re-dialled on a relay session coming up, this took until the 30 s pause ended.
        wait_for(lambda: b.json("skynet", "status", info["name"])[0]["state"] == "running", 10,
                 "running after both relay sessions came back")
        assert roundtrip(info["local_port"], b"after") == b"after"
    finally:
        backend.close()


def test_corrupt_state_file_names_file_and_line(net):
    cfg = net.gen_config("corrupt-state")
    v = net.start_visor("corrupt-state", config=cfg)
    v.ok("skynet", "srv", "start", "--ports", "4810")
    v.ok("skynet", "srv", "start", "--ports", "4811")
    v.proc.stop()
    state = json.loads(cfg.read_text())["state_dir"]
    path = cfg.parent / state / "skynet-instances.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    path.write_text(lines[0] + "\n" + '{"kind": "server", "name": broken\n' + lines[1] + "\n")
    v2 = net.start_visor("corrupt-state-2", config=cfg)
    names = sorted(i["name"] for i in v2.json("skynet", "srv", "status"))
    assert names == ["skynet-4810", "skynet-4811"]
    log = v2.proc.log()
    assert f"{path}:2:" in log, log[-2000:]
