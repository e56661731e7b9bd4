"""Forwards and exposed ports declared in the visor config: started with the visor, applied again by
`skywire cli visor reload` and SIGHUP; runtime instances are left alone; an invalid file changes nothing."""
import json
import signal
import time

import pytest

from harness import TCPServer, echo_handler, expect_fail, free_port, roundtrip


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def write_skynet(path, skynet):
    config = json.loads(path.read_text())
    config["skynet"] = skynet
    path.write_text(json.dumps(config, indent=2))


def by_name(items):
    return {i["name"]: i for i in items}


def works(port: int, text: bytes = b"through the declared forward") -> bool:
    return roundtrip(port, text) == text


@pytest.fixture(scope="module")
def declared(net):
    """Visor a exposes two echo backends from its config; visor b declares one forward to it."""
    backends = [TCPServer(echo_handler), TCPServer(echo_handler)]
    a_config = net.gen_config("cfg-a")
    write_skynet(a_config, {"servers": [
        {"name": "echo1", "ports": [backends[0].port]},
        {"name": "echo2", "ports": [backends[1].port], "backend_timeout": 5},
    ]})
    a = net.start_visor("cfg-a", config=a_config)
    b_config = net.gen_config("cfg-b")
    local1 = free_port()
    write_skynet(b_config, {"forwards": [
        {"name": "f1", "pk": a.pk, "remote": backends[0].port, "local": local1, "raw_tcp": True, "network": "dmsg"},
    ]})
    b = net.start_visor("cfg-b", config=b_config)
    try:
        yield a, b, backends, local1
    finally:
        for backend in backends:
            backend.close()


def test_declared_instances_start_with_the_visor(declared):
    a, b, backends, local1 = declared
    servers = by_name(a.json("skynet", "srv", "status"))
    assert servers["echo1"]["source"] == "config" and servers["echo1"]["ports"] == [backends[0].port]
    assert servers["echo2"]["backend_timeout"] == 5
    f1 = wait_for(lambda: (lambda f: f if f["state"] == "running" else None)(by_name(b.json("skynet", "status"))["f1"]),
                  "f1 running")
    assert f1["source"] == "config" and f1["local_port"] == local1 and f1["mode"] == "raw-tcp"
    assert works(local1)
    # The text table shows where each instance comes from.
    table = b.ok("skynet", "status")
    assert table.splitlines()[0].split()[:3] == ["NAME", "SOURCE", "STATE"]
    assert any(line.split()[:2] == ["f1", "config"] for line in table.splitlines())
    # Declared instances are not copied into the state file (the config is their source).
    for path in b.config.parent.rglob("skynet-instances.jsonl"):
        assert '"f1"' not in path.read_text()


def test_reload_add_change_remove_keeps_runtime(declared):
    a, b, backends, local1 = declared
    # A runtime forward, started with the CLI: reload must leave it alone.
    runtime = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backends[1].port), "--local", "0",
                     "--raw-tcp", "--dmsg", "--name", "rt")
    assert runtime["source"] == "runtime"

    # Add f2.
    local2 = free_port()
    f1 = {"name": "f1", "pk": a.pk, "remote": backends[0].port, "local": local1, "raw_tcp": True, "network": "dmsg"}
    f2 = {"name": "f2", "pk": a.pk, "remote": backends[1].port, "local": local2, "raw_tcp": True, "network": "dmsg"}
    write_skynet(b.config, {"forwards": [f1, f2]})
    out = b.ok("visor", "reload")
    assert "started: f2" in out and "unchanged: f1" in out, out
    wait_for(lambda: by_name(b.json("skynet", "status"))["f2"]["state"] == "running", "f2 running")
    assert works(local2)

    # Change f1's local port: replaced; the old port is closed, the new one works.
    local1b = free_port()
    f1b = dict(f1, local=local1b)
    write_skynet(b.config, {"forwards": [f1b, f2]})
    result = b.json("visor", "reload")
    assert result["replaced"] == ["f1"] and result["unchanged"] == ["f2"] and result["failed"] == [], result
    wait_for(lambda: by_name(b.json("skynet", "status"))["f1"]["state"] == "running", "f1 running again")
    assert by_name(b.json("skynet", "status"))["f1"]["local_port"] == local1b
    assert works(local1b)
    with pytest.raises(OSError):
        roundtrip(local1, b"old port", timeout=5)

    # Remove f2.
    write_skynet(b.config, {"forwards": [f1b]})
    result = b.json("visor", "reload")
    assert result["stopped"] == ["f2"], result
    names = by_name(b.json("skynet", "status"))
    assert "f2" not in names
    # The runtime forward was never touched.
    assert names["rt"]["source"] == "runtime" and names["rt"]["state"] == "running"
    assert names["rt"]["since"] == runtime["since"]
    assert works(runtime["local_port"])
    b.ok("skynet", "stop", "rt")


def test_reload_changes_a_declared_server(declared):
    a, b, backends, _ = declared
    write_skynet(a.config, {"servers": [
        {"name": "echo1", "ports": [backends[0].port], "whitelist": [b.pk]},
        {"name": "echo2", "ports": [backends[1].port], "backend_timeout": 5},
    ]})
    result = a.json("visor", "reload")
    assert result["replaced"] == ["echo1"] and result["unchanged"] == ["echo2"], result
    assert by_name(a.json("skynet", "srv", "status"))["echo1"]["whitelist"] == [b.pk]
    # Removing a server from the config stops it.
    write_skynet(a.config, {"servers": [{"name": "echo1", "ports": [backends[0].port], "whitelist": [b.pk]}]})
    assert a.json("visor", "reload")["stopped"] == ["echo2"]
    assert "echo2" not in by_name(a.json("skynet", "srv", "status"))


@pytest.mark.parametrize("bad, needles", [
    ({"forwards": [{"name": "ok", "pk": "PK", "remote": 80, "local": "LOCAL"}, {"name": "bad", "pk": "nothex", "remote": 80, "local": 1}]},
     ["skynet.forwards[1] \"bad\"", "pk"]),
    ({"forwards": [{"name": "bad", "pk": "PK", "remote": 80, "local": 0}]}, ["skynet.forwards[0] \"bad\"", "local port 0"]),
    ({"forwards": [{"name": "bad", "pk": "PK", "remote": 80, "local": 1, "network": "carrier-pigeon"}]}, ["unknown network"]),
    ({"forwards": [{"name": "bad", "pk": "PK", "remote": 80, "local": 1, "raw-tcp": True}]}, ["unknown field \"raw-tcp\""]),
    ({"servers": [{"name": "s", "ports": [70000]}]}, ["skynet.servers[0] \"s\"", "out of range"]),
    ({"forwards": [{"name": "dup", "pk": "PK", "remote": 80, "local": 1}, {"name": "dup", "pk": "PK", "remote": 81, "local": 2}]},
     ["skynet.forwards[1] \"dup\"", "also used"]),
])
def test_invalid_file_changes_nothing(declared, bad, needles):
    a, b, _, _ = declared
    before = by_name(b.json("skynet", "status"))
    text = json.dumps(bad).replace("\"PK\"", json.dumps(a.pk)).replace("\"LOCAL\"", str(free_port()))
    write_skynet(b.config, json.loads(text))
    err = expect_fail(b.cli("visor", "reload"), *needles)
    assert "invalid config" in err
    after = by_name(b.json("skynet", "status"))
    assert after.keys() == before.keys()
    for name in before:
        assert after[name]["since"] == before[name]["since"]
    assert all(i["state"] == "running" for i in after.values())


def test_reload_refuses_a_runtime_name(declared):
    a, b, backends, _ = declared
    rt = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backends[0].port), "--local", "0", "--raw-tcp",
                "--dmsg", "--name", "taken")
    write_skynet(b.config, {"forwards": [
        {"name": "taken", "pk": a.pk, "remote": backends[0].port, "local": free_port(), "raw_tcp": True}]})
    expect_fail(b.cli("visor", "reload"), "skynet.forwards[0] \"taken\"", "runtime forward")
    assert by_name(b.json("skynet", "status"))["taken"]["since"] == rt["since"]
    b.ok("skynet", "stop", "taken")


def test_sighup_reloads(declared):
    a, b, backends, _ = declared
    local3 = free_port()
    write_skynet(b.config, {"forwards": [
        {"name": "hup", "pk": a.pk, "remote": backends[0].port, "local": local3, "raw_tcp": True, "network": "dmsg"}]})
    b.proc.popen.send_signal(signal.SIGHUP)
    wait_for(lambda: by_name(b.json("skynet", "status")).get("hup", {}).get("state") == "running", "SIGHUP applied")
    assert works(local3)
    assert b.proc.alive()
