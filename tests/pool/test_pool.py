"""A pool of many servers, as a platform team runs it: `xpupool manager`, three mock
servers of different sizes that register with it (`xpupool server --manager`), and
jobs placed by it (`xpupool run --memory`, with XPUPOOL_MANAGER). With etcd: two
managers sharing the pool, one killed mid-run, and restarts.

Run by scripts/run-pool-tests.sh after scripts/build-cuda-tests.sh (for spin) with
etcd installed (Debian's etcd-server). Figures go to stdout (pytest -s).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("XPUPOOL_BIN", str(ROOT / "target/release/xpupool"))
SPIN = str(ROOT / "tests/tenancy/build/spin")
GIB = 1 << 30


def wait_for(what, check, timeout=30, every=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Process:
    """A long-running xpupool command whose output goes to a file."""

    def __init__(self, path, argv, ready, env=None):
        self.log = path
        self.argv = argv
        self.env = env
        self.start(ready)

    def start(self, ready):
        # A restart appends to the log: only what this run wrote counts.
        self.offset = Path(self.log).stat().st_size if Path(self.log).exists() else 0
        self.out = open(self.log, "a+")
        self.proc = subprocess.Popen(self.argv, stdout=self.out, stderr=subprocess.STDOUT, env=self.env)
        wait_for(f"{ready!r} in {self.log}", lambda: self._ready(ready), timeout=60)

    def _ready(self, ready):
        assert self.proc.poll() is None, self.text()
        return ready in self.text()

    def text(self):
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def field(self, name):
        return re.findall(rf"^{name}: (\S+)", self.text(), re.M)[-1]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class Manager(Process):
    def __init__(self, tmp, name, tenants, args=(), etcd=None, state=None, listen="127.0.0.1:0"):
        self.dir = Path(tmp)
        self.state = state or self.dir / f"{name}-state"
        lines = []
        for tenant, fields in tenants.items():
            path = self.dir / f"{tenant}.token"
            path.write_text((tenant * 32)[:32] + "\n")
            path.chmod(0o600)
            lines += ["[[tenant]]", f'name = "{tenant}"', f'token_file = "{path}"']
            lines += [f"{k} = {v}" for k, v in fields.items()]
        config = self.dir / f"{name}.toml"
        config.write_text("\n".join(lines) + "\n")
        argv = [BIN, "manager", "--listen", listen, "--config", str(config),
                "--state-dir", str(self.state), "--metrics-listen", "127.0.0.1:0", *args]
        if etcd:
            argv += ["--etcd", etcd]
        super().__init__(self.dir / f"{name}.log", argv, "metrics: http://")
        self.refresh()

    def refresh(self):
        self.addr = self.field("listening")
        self.cert = self.field("certificate")
        self.join = self.field("join token file")
        self.operator = self.field("operator token file")
        self.metrics = self.field("metrics")

    def restart(self):
        self.kill()
        self.start("metrics: http://")
        self.refresh()


def client_env(managers, tenant, tmp):
    env = dict(os.environ)
    for k in ("XPUPOOL_SERVER", "XPUPOOL_TOKEN", "XPUPOOL_SERVER_CERT", "XPUPOOL_SERVER_FINGERPRINT"):
        env.pop(k, None)
    env["XPUPOOL_MANAGER"] = ",".join(m.addr for m in managers)
    env["XPUPOOL_MANAGER_CERT"] = managers[0].cert
    env["XPUPOOL_TOKEN_FILE"] = str(Path(tmp) / f"{tenant}.token")
    return env


class PoolServer(Process):
    def __init__(self, tmp, name, managers, devices, memory_mib, ttl_args=()):
        self.name = name
        d = Path(tmp)
        argv = [BIN, "server", "--backend", "mock", "--mock-devices", str(devices),
                "--mock-memory-mib", str(memory_mib), "--listen", "127.0.0.1:0",
                "--state-dir", str(d / f"{name}-state"), "--metrics-listen", "127.0.0.1:0",
                "--manager", ",".join(m.addr for m in managers), "--manager-cert", managers[0].cert,
                "--join-token-file", managers[0].join]
        super().__init__(d / f"{name}.log", argv, "registered with the pool manager")
        self.addr = self.field("listening")
        self.metrics = self.field("metrics")

    def metered(self):
        """{(tenant, device): (busy seconds, byte-seconds)} as this server measured them."""
        with urllib.request.urlopen(self.metrics, timeout=10) as r:
            text = r.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in ("xpupool_metered_busy_seconds_total", "xpupool_metered_memory_byte_seconds_total"):
                    key = (s.labels["tenant"], int(s.labels["device"]))
                    busy, held = out.get(key, (0.0, 0.0))
                    if "busy" in s.name:
                        busy += s.value
                    else:
                        held += s.value
                    out[key] = (busy, held)
        return out


def status(manager, tmp, *extra, token=None):
    argv = [BIN, "status", "--manager", manager.addr, "--manager-cert", manager.cert]
    if token:
        argv += ["--token-file", str(Path(tmp) / f"{token}.token")]
    else:
        argv += ["--operator-token-file", manager.operator]
    out = subprocess.run(argv + list(extra), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def pool_json(manager, tmp):
    return json.loads(status(manager, tmp, "--json"))


class Job:
    """`xpupool run --memory SIZE -- argv` of a tenant, placed by the manager(s)."""

    def __init__(self, managers, tmp, tenant, memory, *argv, extra=()):
        self.proc = subprocess.Popen(
            [BIN, "run", "--memory", memory, *extra, "--", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=client_env(managers, tenant, tmp), start_new_session=True)
        self.lines = []
        self.placed = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"placed on (\S+) devices? \[([\d, ]+)\]", line)
            if m:
                self.placed = (m.group(1), [int(x) for x in m.group(2).split(",")])

    def wait_placed(self, timeout=30):
        wait_for("a placement", lambda: self.placed or self.proc.poll() is not None, timeout)
        return self.placed

    def finish(self, timeout=120):
        self.proc.wait(timeout=timeout)
        self._reader.join(5)
        return self.proc.returncode, "".join(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.finish()


def leases(manager, tmp):
    return pool_json(manager, tmp)["leases"]


def wait_no_leases(manager, tmp):
    wait_for("the leases to be released", lambda: not leases(manager, tmp), timeout=30)


# Three servers: a has 1 device of 4 GiB, b 2 of 8 GiB, c 4 of 16 GiB.
SIZES = {"a": (1, 4096), "b": (2, 8192), "c": (4, 16384)}


@pytest.fixture
def pool(tmp_path):
    tenants = {
        "spread": {"policy": '"least-loaded"'},
        "pack": {"policy": '"bin-pack"'},
        "green": {"policy": '"lowest-energy"'},
        "near": {"policy": '"lowest-latency"'},
        "hi": {"policy": '"priority"', "priority": '"high"'},
        "lo": {"policy": '"bin-pack"', "priority": '"low"'},
        "capped": {"memory": '"6GiB"', "devices": "2"},
    }
    manager = Manager(tmp_path, "manager", tenants, args=["--server-ttl", "4", "--heartbeat-ms", "500"])
    servers = {n: PoolServer(tmp_path, n, [manager], *SIZES[n]) for n in SIZES}
    wait_for("three live servers", lambda: sum(s["alive"] for s in pool_json(manager, tmp_path)["servers"]) == 3)
    yield manager, servers, tmp_path
    for s in servers.values():
        s.kill()
    manager.kill()


def server_name(servers, address):
    return next(n for n, s in servers.items() if s.addr == address)


def hold(manager, tmp, tenant, memory, seconds=60, extra=()):
    return Job([manager], tmp, tenant, memory, "sleep", str(seconds), extra=extra)


def test_each_policy_places_where_it_should(pool):
    manager, servers, tmp = pool
    # least-loaded: every job on a device nothing else is on.
    jobs = [hold(manager, tmp, "spread", "2GiB") for _ in range(5)]
    got = [j.wait_placed() for j in jobs]
    assert len({(a, tuple(d)) for a, d in got}) == 5, got
    for j in jobs:
        j.stop()
    wait_no_leases(manager, tmp)

    # bin-pack: the smallest device that fits, filled before the next.
    jobs = []
    for _ in range(3):
        jobs.append(hold(manager, tmp, "pack", "2GiB"))
        jobs[-1].wait_placed()
    got = [(server_name(servers, a), d) for a, d in (j.placed for j in jobs)]
    assert got == [("a", [0]), ("a", [0]), ("b", [0])], got
    # Two devices on one server.
    two = hold(manager, tmp, "pack", "5GiB", extra=["--devices", "2"])
    assert (server_name(servers, two.wait_placed()[0]), len(two.placed[1])) == ("b", 2) or \
        server_name(servers, two.placed[0]) == "c", two.placed
    for j in jobs + [two]:
        j.stop()
    wait_no_leases(manager, tmp)

    # lowest-energy: onto the device already active while the jobs fit.
    jobs = []
    for _ in range(4):
        jobs.append(hold(manager, tmp, "green", "1GiB"))
        jobs[-1].wait_placed()
    assert len({(a, tuple(d)) for a, d in (j.placed for j in jobs)}) == 1, [j.placed for j in jobs]
    for j in jobs:
        j.stop()
    wait_no_leases(manager, tmp)

    # lowest-latency: the client measures its round trips; on loopback they are all
    # small, so it lands on one of the least loaded devices, and the job runs.
    job = Job([manager], tmp, "near", "1GiB", SPIN)
    code, out = job.finish()
    assert code == 0 and "PASS" in out, out
    wait_no_leases(manager, tmp)

    # priority: low jobs reserve every device but have not started; a high job
    # takes one of them, and that low job's holder is told.
    lows = []
    for n, (count, mib) in SIZES.items():
        for _ in range(count):
            lows.append(hold(manager, tmp, "lo", f"{mib}MiB"))
            lows[-1].wait_placed()
    assert len(leases(manager, tmp)) == 7
    high = hold(manager, tmp, "hi", "3GiB")
    assert high.wait_placed()
    held = leases(manager, tmp)
    assert sorted(l["tenant"] for l in held) == ["hi"] + ["lo"] * 6, held
    wait_for("the preempted job to hear of it",
             lambda: any("preempted before it started by a high job" in "".join(j.lines) for j in lows), timeout=20)
    for j in lows + [high]:
        j.stop()
    wait_no_leases(manager, tmp)


def test_concurrent_placements_never_over_commit(pool):
    manager, servers, tmp = pool
    # 3 GiB jobs: a takes 1, b 2 per device (4), c 5 per device (20): 25 fit.
    jobs = [hold(manager, tmp, "spread", "3GiB", seconds=20) for _ in range(50)]
    deadline = time.time() + 60
    while time.time() < deadline and sum(j.placed is not None or j.proc.poll() is not None for j in jobs) < 50:
        time.sleep(0.1)
    placed = [j for j in jobs if j.placed]
    refused = [j for j in jobs if not j.placed]
    snapshot = pool_json(manager, tmp)
    for j in jobs:
        j.stop()
    print(f"\n50 concurrent placements: {len(placed)} placed, {len(refused)} refused")
    assert len(placed) == 25, (len(placed), [j.lines for j in refused][:2])
    for r in refused:
        assert r.proc.returncode == 1 and "cannot place the job: no server has 3.0 GiB free" in "".join(r.lines), r.lines
    for s in snapshot["servers"]:
        for d in s["devices"]:
            assert d["reserved"] <= d["device"]["memory"], s
    wait_no_leases(manager, tmp)


def test_quota_wait_and_clear_refusals(pool):
    manager, servers, tmp = pool
    # capped may hold 6 GiB and 2 devices in the whole pool.
    a = hold(manager, tmp, "capped", "3GiB")
    b = hold(manager, tmp, "capped", "3GiB")
    a.wait_placed(), b.wait_placed()
    code, out = hold(manager, tmp, "capped", "1GiB").finish()
    assert code == 1 and "over quota: tenant capped holds 6.0 GiB of its pool quota of 6.0 GiB" in out, out
    # With --wait it queues, says so, and runs when room comes.
    waiting = hold(manager, tmp, "capped", "1GiB", seconds=1, extra=["--wait"])
    wait_for("the queue position", lambda: any("position 1 in the queue" in l for l in waiting.lines))
    assert not waiting.placed
    a.stop()
    code, out = waiting.finish(timeout=30)
    assert code == 0 and "placed on" in out, out
    b.stop()
    for memory, why in [("100GiB", "no device has 100.0 GiB: the largest has 16.0 GiB")]:
        code, out = hold(manager, tmp, "spread", memory).finish()
        assert code == 1 and why in out, out
    code, out = Job([manager], tmp, "spread", "1GiB", "true", extra=["--server-backend", "cuda"]).finish()
    assert code == 1 and "no server has the cuda backend (the pool has: mock)" in out, out
    # No --memory: said plainly.
    env = client_env([manager], "spread", tmp)
    out = subprocess.run([BIN, "run", "--", "true"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "xpupool run --memory SIZE" in out.stderr, out.stderr


def test_a_client_without_a_lease_is_refused(pool):
    manager, servers, tmp = pool
    fingerprint = servers["a"].field("fingerprint")
    for token in ["spreadspreadspreadspreadspreadsp", "lease:00.00"]:
        env = dict(os.environ, XPUPOOL_TOKEN=token)
        for k in ("XPUPOOL_MANAGER", "XPUPOOL_TOKEN_FILE"):
            env.pop(k, None)
        out = subprocess.run([BIN, "run", "--server", servers["a"].addr, "--fingerprint", fingerprint, "--", SPIN],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "PASS" not in out.stdout, out.stdout
        assert "admits only leases" in out.stderr or "not a valid lease" in out.stderr, out.stderr


def test_the_join_token_does_not_take_over_a_live_server(pool):
    """A second server with the join token, claiming a live server's address, is
    refused (and the real server keeps heart-beating); the operator token and the
    join token are not each other."""
    manager, servers, tmp = pool
    argv = [BIN, "server", "--backend", "mock", "--mock-devices", "1", "--listen", "127.0.0.1:0",
            "--state-dir", str(Path(tmp) / "impostor-state"), "--advertise", servers["a"].addr,
            "--manager", manager.addr, "--manager-cert", manager.cert, "--join-token-file", manager.join]
    impostor = Process(Path(tmp) / "impostor.log", argv, "is registered and alive")
    try:
        assert "registered with the pool manager" not in impostor.text()
        time.sleep(1.5)
        a = next(s for s in pool_json(manager, tmp)["servers"] if s["address"] == servers["a"].addr)
        assert a["alive"] and a["last_seen_seconds"] < 1.5, a
        assert len(a["devices"]) == 1
    finally:
        impostor.kill()
    out = subprocess.run([BIN, "status", "--manager", manager.addr, "--manager-cert", manager.cert,
                          "--operator-token-file", manager.join], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "unknown tenant token" in out.stderr, out.stderr


def test_a_restarted_server_registers_again_at_once(pool):
    """A server killed and started again (same state directory, same address)
    presents the key of its last registration, kept there, and so rejoins without
    waiting out the TTL of its previous run, as a new instance."""
    manager, servers, tmp = pool
    a = servers["a"]
    a.kill()
    # The same address: its registration is still alive in the manager.
    a.argv[a.argv.index("--listen") + 1] = a.addr
    started = time.monotonic()
    a.start("registered with the pool manager")
    rejoined = time.monotonic() - started
    assert a.field("listening") == a.addr
    print(f"\nrestarted server registered again after {rejoined:.1f} s (TTL 4 s)")
    assert rejoined < 3.0, rejoined
    assert "registered and alive" not in a.text()
    job = hold(manager, tmp, "pack", "1GiB", seconds=1)
    assert job.wait_placed()
    job.finish()


def test_a_killed_server_leaves_placement_and_its_leases_are_reclaimed(pool):
    manager, servers, tmp = pool
    job = hold(manager, tmp, "spread", "12GiB")  # only c's devices are that large
    assert server_name(servers, job.wait_placed()[0]) == "c"
    killed = time.time()
    servers["c"].kill()
    wait_for("c to leave", lambda: not next(s for s in pool_json(manager, tmp)["servers"] if s["address"] == servers["c"].addr)["alive"], timeout=15)
    wait_for("its lease to be reclaimed", lambda: not leases(manager, tmp), timeout=15)
    took = time.time() - killed
    print(f"\nkilled server: out of placement and its lease reclaimed after {took:.1f} s (TTL 4 s)")
    assert took <= 4 + 2.5, took
    code, out = hold(manager, tmp, "spread", "12GiB").finish()
    assert code == 1 and "no device has 12.0 GiB: the largest has 8.0 GiB" in out, out
    wait_for("the job to hear its lease is gone", lambda: any("lease is gone" in l for l in job.lines), timeout=20)
    job.stop()


def metering_error(managers, servers, tmp):
    """The manager's totals against what the servers measured, per tenant."""
    measured = {}
    for s in servers:
        for (tenant, _device), (busy, held) in s.metered().items():
            b, h = measured.get(tenant, (0.0, 0.0))
            measured[tenant] = (b + busy, h + held / GIB)
    billed = {t["name"]: (t["gpu_seconds"], t["gib_seconds"]) for t in pool_json(managers[0], tmp)["tenants"]}
    return measured, billed


def check_metering(managers, servers, tmp, tenants, expected_gib_s=None):
    # Wait for heartbeats to carry the final counters.
    def settled():
        measured, billed = metering_error(managers, servers, tmp)
        return all(t in measured and t in billed and
                   abs(billed[t][0] - measured[t][0]) <= 0.02 * measured[t][0] and
                   abs(billed[t][1] - measured[t][1]) <= 0.02 * measured[t][1]
                   for t in tenants) and (measured, billed)
    measured, billed = wait_for("metering to match", settled, timeout=20, every=0.5)
    for t in tenants:
        (mb, mh), (bb, bh) = measured[t], billed[t]
        print(f"\nmetering {t}: busy {mb:.3f} s measured, {bb:.3f} s billed ({100 * (bb - mb) / mb:+.2f}%); "
              f"memory {mh:.3f} GiB·s measured, {bh:.3f} billed ({100 * (bh - mh) / mh:+.2f}%)")
        if expected_gib_s:
            assert 0.9 * expected_gib_s[t] <= mh <= 1.5 * expected_gib_s[t], (mh, expected_gib_s[t])
    return measured, billed


def test_metering_equals_what_the_servers_measured(pool):
    manager, servers, tmp = pool
    jobs = [Job([manager], tmp, t, "2GiB", SPIN, "hold", "512", "3") for t in ("spread", "pack")]
    for j in jobs:
        code, out = j.finish()
        assert code == 0 and "PASS" in out, out
    # 512 MiB held for about 3 s each: about 1.5 GiB·s.
    check_metering([manager], servers.values(), tmp, ["spread", "pack"], {"spread": 1.5, "pack": 1.5})
    # The table and the billing export show the same.
    table = status(manager, tmp)
    assert "SERVER" in table and "spread" in table and servers["c"].addr in table, table
    csv = status(manager, tmp, "--usage", "--since", "1h")
    rows = [l.split(",") for l in csv.splitlines()]
    assert rows[0] == ["hour_start", "tenant", "server", "device", "uuid", "gpu_seconds", "gib_seconds"]
    assert {r[1] for r in rows[1:]} >= {"spread", "pack"}, csv
    # A tenant sees only its own.
    own = json.loads(status(manager, tmp, "--json", token="spread"))
    assert {t["name"] for t in own["tenants"]} == {"spread"}, own["tenants"]


def free_ports(n):
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def etcd(tmp_path):
    binary = shutil.which("etcd")
    if binary is None:
        pytest.fail("etcd is not installed (scripts/install-system-packages.sh installs Debian's etcd-server)")
    ports = free_ports(2)
    url = f"http://127.0.0.1:{ports[0]}"
    proc = subprocess.Popen([binary, "--data-dir", str(tmp_path / "etcd"), "--listen-client-urls", url,
                             "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{ports[1]}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{ports[1]}",
                             "--initial-cluster", f"default=http://127.0.0.1:{ports[1]}",
                             "--auto-compaction-mode=periodic", "--auto-compaction-retention=1h"],
                            stdout=open(tmp_path / "etcd.log", "w"), stderr=subprocess.STDOUT)

    def healthy():
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                return b"true" in r.read()
        except OSError:
            return False
    wait_for("etcd", healthy, timeout=30)
    yield url
    proc.kill()
    proc.wait()


def test_two_managers_on_etcd_one_killed_and_restarts_keep_the_totals(tmp_path, etcd):
    tenants = {"spread": {}, "pack": {"policy": '"bin-pack"'}}
    state = tmp_path / "managers"
    # Fixed ports, so that the managers come back where servers and clients look.
    pa, pb = free_ports(2)
    a = Manager(tmp_path, "a", tenants, etcd=etcd, state=state, listen=f"127.0.0.1:{pa}")
    b = Manager(tmp_path, "b", tenants, etcd=etcd, state=state, listen=f"127.0.0.1:{pb}")
    servers = [PoolServer(tmp_path, n, [a, b], *SIZES[n]) for n in ("a", "b")]
    wait_for("two live servers", lambda: sum(s["alive"] for s in pool_json(b, tmp_path)["servers"]) == 2)
    # A job placed through a; a is killed while it runs; it finishes, and b
    # places the next ones.
    first = Job([a, b], tmp_path, "spread", "1GiB", SPIN, "hold", "256", "4")
    first.wait_placed()
    time.sleep(1.5)
    a.kill()
    code, out = first.finish()
    assert code == 0 and "PASS" in out, out
    more = [Job([a, b], tmp_path, t, "1GiB", SPIN, "hold", "256", "2") for t in ("spread", "pack")]
    for j in more:
        code, out = j.finish()
        assert code == 0 and "PASS" in out, out
    measured, billed = check_metering([b], servers, tmp_path, ["spread", "pack"],
                                      {"spread": 1.5, "pack": 0.5})
    # Both managers restarted: the totals are in etcd.
    b.restart()
    a.restart()
    after = {t["name"]: (t["gpu_seconds"], t["gib_seconds"]) for t in pool_json(a, tmp_path)["tenants"]}
    for t in ("spread", "pack"):
        assert after[t][0] >= billed[t][0] - 1e-9 and after[t][1] >= billed[t][1] - 1e-9, (after, billed)
    # And placing goes on through the restarted ones.
    code, out = Job([a], tmp_path, "pack", "1GiB", SPIN).finish()
    assert code == 0 and "PASS" in out, out
    for s in servers:
        s.kill()
    a.kill()
    b.kill()
