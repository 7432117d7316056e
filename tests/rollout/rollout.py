#!/usr/bin/env python3
"""Rolling restarts of Sluice under load, with the kubelet's termination sequence.

What runs (all real, all local): a fresh Postgres database, 2 `sluice-api` and 2
`sluice-worker` processes, HAProxy in front of the APIs (health-checking
`GET /health/ready` every 2 s, one failure takes a server out, NO retries, NO redispatch:
the balancer hides nothing), a Prometheus server scraping every metrics endpoint once a
second, and an HTTP receiver that the `rollout.deliver` jobs POST to.

While a steady load of enqueues, reads and `?wait=` long-polls flows through HAProxy, each
deployment is rolled like Kubernetes does with maxSurge 1 / maxUnavailable 0: start a new
instance, wait until it is ready and in rotation, then for one old instance run the preStop
wait, send SIGTERM, wait for the exit, SIGKILL only at the grace period.

Asserted: 0 non-2xx and 0 connection errors seen by the client; every job answered 201 is
delivered exactly once and ends `completed`; every process exits 0 within its budget and
logs its shutdown line; Prometheus saw `up == 1` for each new instance and the completed
counter rose. A summary table is printed either way.

    tests/rollout/rollout.py                       # CI: 3 rounds
    tests/rollout/rollout.py --soak 1800 --every 30   # scripts/soak.sh
Needs DATABASE_URL (a server where it may CREATE DATABASE); binaries from --bin-dir
(default ${CARGO_TARGET_DIR:-target}/debug, built with `cargo build --workspace` if
missing); installs haproxy and prometheus with apt-get when absent.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KIND = "rollout.deliver"
ENQUEUE_TOKEN = "rollout-enqueue-token"
ADMIN_TOKEN = "rollout-admin-token"

# The kubelet sequence, scaled to the test. The API's readiness flips at SIGTERM and
# HAProxy needs up to one check interval (2 s) + check timeout (1 s) to notice, so the API
# keeps serving for DRAIN_DELAY > 3 s after the flip.
CHECK_INTER_S = 2
API_PRESTOP_S = 1.0
API_DRAIN_DELAY_S = 4.0
API_SHUTDOWN_S = 30.0
WORKER_SHUTDOWN_S = 120.0
CUSHION_S = 5.0
API_GRACE_S = API_PRESTOP_S + API_DRAIN_DELAY_S + API_SHUTDOWN_S + CUSHION_S
WORKER_GRACE_S = WORKER_SHUTDOWN_S + CUSHION_S
API_SLOTS = 4  # HAProxy server slots; 2 in use, 1 surging, 1 spare


def log(msg):
    print(f"[rollout {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, pred, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def http_status(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def ensure_apt(binary, package):
    if shutil.which(binary) or os.path.exists(f"/usr/sbin/{binary}"):
        return shutil.which(binary) or f"/usr/sbin/{binary}"
    log(f"installing {package} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return shutil.which(binary) or f"/usr/sbin/{binary}"


# --- the job target ---------------------------------------------------------------------
class Receiver:
    """Records every delivery by Idempotency-Key (the job id)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.deliveries = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                key = self.headers.get("Idempotency-Key")
                with outer.lock:
                    outer.deliveries[key] = outer.deliveries.get(key, 0) + 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return dict(self.deliveries)


# --- processes --------------------------------------------------------------------------
class Proc:
    def __init__(self, name, role, argv, env, logdir, grace, **ports):
        self.name, self.role, self.grace = name, role, grace
        self.ports = ports
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.logf = open(self.log_path, "wb")
        self.p = subprocess.Popen(argv, env=env, stdout=self.logf, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        self.exit_code = None
        self.drain_s = None
        self.killed = False

    def alive(self):
        return self.p.poll() is None

    def terminate_like_kubelet(self, prestop_s):
        """preStop wait, SIGTERM, wait for exit, SIGKILL only at the grace period (which,
        as in Kubernetes, counts from the start of the preStop hook)."""
        t0 = time.monotonic()
        time.sleep(prestop_s)
        t_term = time.monotonic()
        self.p.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.p.wait(timeout=max(0.0, self.grace - (t_term - t0)))
        except subprocess.TimeoutExpired:
            self.killed = True
            self.p.kill()
            self.exit_code = self.p.wait()
        self.drain_s = time.monotonic() - t_term
        self.logf.close()

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def hard_stop(self):
        if self.alive():
            self.p.kill()
            self.p.wait()


class HAProxy:
    def __init__(self, binary, workdir, port, slot_ports):
        self.sock = os.path.join(workdir, "haproxy.sock")
        cfg = os.path.join(workdir, "haproxy.cfg")
        servers = "\n".join(
            f"    server s{i} 127.0.0.1:{p} check disabled" for i, p in enumerate(slot_ports)
        )
        with open(cfg, "w") as f:
            f.write(f"""global
    stats socket {self.sock} mode 600 level admin
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    timeout check 1s
    # The balancer must hide nothing: a failed attempt is the client's error.
    retries 0
    no option redispatch
frontend fe
    bind 127.0.0.1:{port}
    default_backend api
backend api
    balance roundrobin
    option httpchk GET /health/ready
    http-check expect status 200
    default-server inter {CHECK_INTER_S}s fall 1 rise 1
{servers}
""")
        subprocess.run([binary, "-c", "-q", "-f", cfg], check=True)
        self.p = subprocess.Popen([binary, "-f", cfg, "-db"], stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(workdir, "haproxy.log"), "wb"))
        wait_until("haproxy stats socket", lambda: os.path.exists(self.sock), 10)

    def cmd(self, line):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.sock)
            s.sendall(line.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def status(self, slot):
        for row in self.cmd("show stat").splitlines():
            cols = row.split(",")
            if len(cols) > 17 and cols[0] == "api" and cols[1] == f"s{slot}":
                return cols[17]
        return None

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()


class Prometheus:
    def __init__(self, binary, workdir):
        self.port = free_port()
        self.sd = os.path.join(workdir, "targets.json")
        self.write_targets([])
        cfg = os.path.join(workdir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: sluice
    file_sd_configs:
      - files: ["{self.sd}"]
        refresh_interval: 1s
""")
        self.p = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={workdir}/tsdb",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "prometheus.log"), "wb"))
        wait_until("prometheus ready",
                   lambda: http_status(f"http://127.0.0.1:{self.port}/-/ready") == 200, 60, 0.3)

    def write_targets(self, procs):
        groups = [{"targets": [f"127.0.0.1:{p.ports['metrics']}"],
                   "labels": {"proc": p.name, "role": p.role}} for p in procs]
        tmp = self.sd + ".tmp"
        with open(tmp, "w") as f:
            json.dump(groups, f)
        os.replace(tmp, self.sd)

    def query(self, q):
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)["data"]["result"]

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()


# --- load -------------------------------------------------------------------------------
class Load:
    """Paced client threads on keep-alive connections through HAProxy."""

    def __init__(self, port, enqueue_rps, read_rps, long_polls):
        self.port = port
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.requests = {"enqueue": 0, "read": 0, "longpoll": 0}
        self.errors = []  # (time, what, detail)
        self.created = []  # job ids answered 201
        self.threads = []
        per = 20.0  # requests/s per thread: low enough that latency spikes do not starve it
        for _ in range(max(1, round(enqueue_rps / per))):
            self.threads.append(threading.Thread(target=self.run, args=("enqueue", per), daemon=True))
        for _ in range(max(1, round(read_rps / per))):
            self.threads.append(threading.Thread(target=self.run, args=("read", per), daemon=True))
        for _ in range(long_polls):
            self.threads.append(threading.Thread(target=self.run, args=("longpoll", 0), daemon=True))
        self.t_start = self.t_stop = None

    def start(self):
        self.t_start = time.monotonic()
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(20)
        self.t_stop = time.monotonic()

    def request(self, conn, what):
        # Reads with the admin token: SPEC does not say whether `enqueue` may read.
        token = ENQUEUE_TOKEN if what == "enqueue" else ADMIN_TOKEN
        headers = {"Authorization": f"Bearer {token}"}
        if what == "enqueue":
            body = json.dumps({"kind": KIND, "payload": {"r": random.random()}})
            headers["Content-Type"] = "application/json"
            conn.request("POST", "/v1/jobs", body=body, headers=headers)
        else:
            with self.lock:
                # long-polls wait on the newest job (likely still queued), reads on any
                recent = self.created[-1:] if what == "longpoll" else self.created[-500:]
                jid = random.choice(recent) if recent else None
            if jid is None:
                conn.request("GET", "/v1/stats", headers=headers)
            elif what == "longpoll":
                conn.request("GET", f"/v1/jobs/{jid}?wait=5s", headers=headers)
            else:
                conn.request("GET", f"/v1/jobs/{jid}", headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data, resp.getheader("Connection", "")

    def run(self, what, rps):
        conn = None
        next_t = time.monotonic()
        while not self.stop_flag.is_set():
            if rps:
                next_t += 1.0 / rps
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1.0:
                    next_t = time.monotonic()  # fell behind: do not burst
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                status, data, connection = self.request(conn, what)
            except Exception as e:  # refused, reset, EOF before a response
                with self.lock:
                    self.requests[what] += 1
                    self.errors.append((time.time(), what, f"{type(e).__name__}: {e}"))
                conn.close()
                conn = None
                continue
            with self.lock:
                self.requests[what] += 1
                if not 200 <= status < 300:
                    self.errors.append((time.time(), what, f"HTTP {status}: {data[:200]!r}"))
                elif what == "enqueue":
                    if status == 201:
                        self.created.append(json.loads(data)["id"])
            if connection.lower() == "close":
                conn.close()
                conn = None
        if conn:
            conn.close()


# --- the test ---------------------------------------------------------------------------
class Rollout:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="sluice-rollout-")
        self.procs = []
        self.seq = {"api": 0, "worker": 0}
        self.failures = []
        self.db_name = f"sluice_rollout_{os.getpid()}"
        base = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
        self.admin_url = urllib.parse.urlunsplit(base._replace(path="/postgres"))
        self.db_url = urllib.parse.urlunsplit(base._replace(path=f"/{self.db_name}"))
        self.bin = args.bin_dir
        self.receiver = Receiver()
        self.handlers = os.path.join(self.work, "handlers.toml")
        with open(self.handlers, "w") as f:
            f.write(f'[kinds."{KIND}"]\nurl = "http://127.0.0.1:{self.receiver.port}/deliver"\n'
                    f'timeout = "10s"\n')
        self.slot_ports = [free_port() for _ in range(API_SLOTS)]
        self.slot_owner = [None] * API_SLOTS

    # database
    def psql(self, url, sql):
        return subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url,
                               "-c", sql], check=True, capture_output=True, text=True).stdout

    def create_db(self):
        self.psql(self.admin_url, f'CREATE DATABASE "{self.db_name}"')
        r = subprocess.run([os.path.join(self.bin, "sluicectl"), "migrate"],
                           env=dict(os.environ, DATABASE_URL=self.db_url),
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"sluicectl migrate failed: {r.stdout}{r.stderr}")

    def drop_db(self):
        try:
            self.psql(self.admin_url, f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        except Exception as e:
            log(f"could not drop {self.db_name}: {e}")

    # instances
    def base_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(DATABASE_URL=self.db_url, SLUICE_LOG_FORMAT="json", RUST_LOG="info")
        return env

    def start_api(self):
        slot = self.slot_owner.index(None)
        self.seq["api"] += 1
        name = f"api-{self.seq['api']}"
        metrics = free_port()
        env = self.base_env()
        env.update(SLUICE_API_ADDR=f"127.0.0.1:{self.slot_ports[slot]}",
                   SLUICE_METRICS_ADDR=f"127.0.0.1:{metrics}",
                   SLUICE_API_TOKENS=f"enqueue:{ENQUEUE_TOKEN},admin:{ADMIN_TOKEN}",
                   SLUICE_DRAIN_DELAY=f"{API_DRAIN_DELAY_S:g}s",
                   SLUICE_SHUTDOWN_TIMEOUT=f"{API_SHUTDOWN_S:g}s")
        p = Proc(name, "api", [os.path.join(self.bin, "sluice-api")], env, self.work,
                 API_GRACE_S, http=self.slot_ports[slot], metrics=metrics)
        p.slot = slot
        self.slot_owner[slot] = p
        self.procs.append(p)
        ready = f"http://127.0.0.1:{self.slot_ports[slot]}/health/ready"
        wait_until(f"{name} ready", lambda: self.check_alive(p) and http_status(ready) == 200, 60)
        self.prom.write_targets([q for q in self.procs if q.alive()])
        if hasattr(self, "haproxy"):
            # Like an endpoint being added once the pod is Ready.
            self.haproxy.cmd(f"enable server api/s{slot}")
            wait_until(f"haproxy sees {name} UP",
                       lambda: (self.haproxy.status(slot) or "").startswith("UP"), 15)
        log(f"{name} ready on :{self.slot_ports[slot]} (slot s{slot})")
        return p

    def start_worker(self):
        self.seq["worker"] += 1
        name = f"worker-{self.seq['worker']}"
        metrics = free_port()
        env = self.base_env()
        env.update(SLUICE_METRICS_ADDR=f"127.0.0.1:{metrics}",
                   SLUICE_HANDLERS_FILE=self.handlers,
                   SLUICE_SHUTDOWN_TIMEOUT=f"{WORKER_SHUTDOWN_S:g}s")
        p = Proc(name, "worker", [os.path.join(self.bin, "sluice-worker")], env, self.work,
                 WORKER_GRACE_S, metrics=metrics)
        self.procs.append(p)
        ready = f"http://127.0.0.1:{metrics}/health/ready"
        wait_until(f"{name} ready", lambda: self.check_alive(p) and http_status(ready) == 200, 60)
        self.prom.write_targets([q for q in self.procs if q.alive()])
        log(f"{name} ready (metrics :{metrics})")
        return p

    @staticmethod
    def check_alive(p):
        if not p.alive():
            raise RuntimeError(f"{p.name} exited with {p.p.returncode} while starting; "
                               f"log:\n{p.log_text()[-2000:]}")
        return True

    def stop_old(self, p):
        prestop = API_PRESTOP_S if p.role == "api" else 0.0
        log(f"terminating {p.name}: preStop {prestop:g}s, SIGTERM, grace {p.grace:g}s")
        p.terminate_like_kubelet(prestop)
        log(f"{p.name} exited {p.exit_code} after {p.drain_s:.2f}s"
            f"{' (SIGKILLED at grace period)' if p.killed else ''}")
        if p.role == "api":
            self.haproxy.cmd(f"disable server api/s{p.slot}")
            self.slot_owner[p.slot] = None
        self.prom.write_targets([q for q in self.procs if q.alive()])

    def roll(self, role):
        """maxSurge 1 / maxUnavailable 0: one new ready before each old one goes."""
        old = [p for p in self.procs if p.role == role and p.alive()]
        for p in old:
            (self.start_api if role == "api" else self.start_worker)()
            self.stop_old(p)

    def restart_one(self, role):
        old = next(p for p in self.procs if p.role == role and p.alive())
        (self.start_api if role == "api" else self.start_worker)()
        self.stop_old(old)

    # run
    def run(self):
        self.prom = Prometheus(self.args.prometheus, self.work)
        self.create_db()
        log(f"database {self.db_name} migrated; work dir {self.work}")
        apis = [self.start_api(), self.start_api()]
        self.start_worker()
        self.start_worker()
        self.haproxy = HAProxy(self.args.haproxy, self.work, free_port(), self.slot_ports)
        for p in apis:
            self.haproxy.cmd(f"enable server api/s{p.slot}")
        for p in apis:
            wait_until(f"haproxy sees {p.name} UP",
                       lambda: (self.haproxy.status(p.slot) or "").startswith("UP"), 15)
        self.initial = {p.name for p in self.procs}
        load = Load(self.haproxy_port(), self.args.enqueue_rps, self.args.read_rps,
                    self.args.long_polls)
        self.load = load
        load.start()
        time.sleep(3)  # steady state before the first restart
        if self.args.soak:
            deadline = time.monotonic() + self.args.soak
            role = "api"
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                self.restart_one(role)
                role = "worker" if role == "api" else "api"
                time.sleep(max(0.0, self.args.every - (time.monotonic() - t0)))
        else:
            for r in range(1, self.args.rounds + 1):
                log(f"--- round {r}/{self.args.rounds}")
                self.roll("api")
                self.roll("worker")
        time.sleep(2)
        load.stop()
        log("load stopped; waiting for every job to complete")
        self.verify()

    def haproxy_port(self):
        cfg = open(os.path.join(self.work, "haproxy.cfg")).read()
        return int(cfg.split("bind 127.0.0.1:")[1].split()[0])

    def verify(self):
        load = self.load
        created = set(load.created)
        ids = ",".join(str(i) for i in created) or "NULL"

        def done():
            n = int(self.psql(self.db_url, "SELECT count(*) FROM jobs WHERE state NOT IN "
                              "('completed','failed','cancelled')").strip())
            return n == 0
        try:
            wait_until("all jobs terminal", done, 90, 0.5)
        except TimeoutError as e:
            self.failures.append(str(e))
        states = dict(
            line.split("|") for line in self.psql(
                self.db_url, "SELECT state, count(*) FROM jobs GROUP BY state").split()
            if line)
        completed = {int(x) for x in self.psql(
            self.db_url, f"SELECT id FROM jobs WHERE state='completed' AND id IN ({ids})").split()}
        deliveries = self.receiver.snapshot()
        dup = {k: v for k, v in deliveries.items() if v > 1}
        undelivered = [i for i in created if str(i) not in deliveries]
        not_completed = created - completed
        unknown = [k for k in deliveries if not k or not k.isdigit() or int(k) not in created]

        # Prometheus: every instance started during the test was seen up, counters rose.
        rng = f"[{int(time.monotonic() - load.t_start) + 60}s]"
        for p in self.procs:
            if p.name in self.initial:
                continue
            try:
                wait_until(f"prometheus up==1 for {p.name}", lambda: any(
                    float(r["value"][1]) == 1 for r in
                    self.prom.query(f'max_over_time(up{{proc="{p.name}"}}{rng})')), 15, 0.5)
                p.prom_up = True
            except TimeoutError as e:
                p.prom_up = False
                self.failures.append(str(e))
        try:
            res = self.prom.query(f"sum(max_over_time(sluice_jobs_completed_total{rng}))")
            prom_completed = float(res[0]["value"][1]) if res else 0.0
        except Exception as e:
            prom_completed = 0.0
            self.failures.append(f"prometheus query failed: {e}")

        # final shutdown of the survivors, same sequence, so their exits are checked too
        for p in [q for q in self.procs if q.alive() and q.role == "api"]:
            self.stop_old(p)
        for p in [q for q in self.procs if q.alive()]:
            self.stop_old(p)

        elapsed = load.t_stop - load.t_start
        total = sum(load.requests.values())
        rate = total / elapsed  # long-polls are reads too
        if load.errors:
            self.failures.append(f"{len(load.errors)} client errors (non-2xx or connection)")
        if rate < self.args.min_rps:
            self.failures.append(f"load was {rate:.0f} req/s, below {self.args.min_rps}")
        if not created:
            self.failures.append("no job was created")
        if not_completed:
            self.failures.append(f"{len(not_completed)} created jobs did not complete "
                                 f"(e.g. {sorted(not_completed)[:5]})")
        if undelivered:
            self.failures.append(f"{len(undelivered)} created jobs never delivered")
        if dup:
            self.failures.append(f"{len(dup)} jobs delivered more than once "
                                 f"(e.g. {list(dup.items())[:5]})")
        if unknown:
            self.failures.append(f"{len(unknown)} deliveries of unknown keys {unknown[:5]}")
        if prom_completed <= 0:
            self.failures.append("prometheus never saw sluice_jobs_completed_total rise")
        for p in self.procs:
            line = "Shutting down API..." if p.role == "api" else "Shutting down worker..."
            if p.exit_code != 0:
                self.failures.append(f"{p.name} exited {p.exit_code}")
            if p.killed:
                self.failures.append(f"{p.name} needed SIGKILL at {p.grace:g}s")
            if line not in p.log_text():
                self.failures.append(f"{p.name} never logged {line!r}")

        print()
        print("=" * 72)
        print(f"{'requests':<28}{total:>10}   ({rate:.0f} req/s over {elapsed:.0f}s)")
        for k, v in load.requests.items():
            print(f"  {k:<26}{v:>10}")
        print(f"{'client errors':<28}{len(load.errors):>10}")
        print(f"{'jobs created (201)':<28}{len(created):>10}")
        print(f"{'jobs completed':<28}{len(completed):>10}   db states {states}")
        print(f"{'deliveries':<28}{sum(deliveries.values()):>10}")
        print(f"{'duplicate deliveries':<28}{len(dup):>10}")
        print(f"{'prometheus completed max':<28}{prom_completed:>10.0f}")
        print("-" * 72)
        print(f"{'process':<12}{'exit':>6}{'drain s':>10}{'budget s':>10}{'sigkill':>9}{'prom up':>9}")
        for p in self.procs:
            up = "-" if p.name in self.initial else ("yes" if getattr(p, "prom_up", False) else "NO")
            drain = f"{p.drain_s:.2f}" if p.drain_s is not None else "-"
            print(f"{p.name:<12}{str(p.exit_code):>6}{drain:>10}{p.grace:>10.0f}"
                  f"{'yes' if p.killed else 'no':>9}{up:>9}")
        print("=" * 72)
        for t, what, detail in load.errors[:20]:
            print(f"  error {time.strftime('%H:%M:%S', time.localtime(t))}"
                  f".{int(t % 1 * 1000):03d} {what}: {detail}")

    def cleanup(self, keep):
        for p in self.procs:
            p.hard_stop()
        for attr in ("haproxy", "prom"):
            if hasattr(self, attr):
                getattr(self, attr).stop()
        self.receiver.server.shutdown()
        self.drop_db()
        if keep:
            log(f"logs kept in {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    ap.add_argument("--bin-dir", default=os.path.join(target, "debug"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--soak", type=float, default=0, help="seconds; restart every --every")
    ap.add_argument("--every", type=float, default=30)
    ap.add_argument("--enqueue-rps", type=float, default=180)
    ap.add_argument("--read-rps", type=float, default=100)
    ap.add_argument("--long-polls", type=int, default=4)
    ap.add_argument("--min-rps", type=float, default=200)
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = ap.parse_args()
    if "DATABASE_URL" not in os.environ:
        sys.exit("rollout: DATABASE_URL must point at a Postgres where it may CREATE DATABASE")
    bins = ["sluice-api", "sluice-worker", "sluicectl"]
    if not all(os.access(os.path.join(args.bin_dir, b), os.X_OK) for b in bins):
        log(f"building binaries into {target}")
        subprocess.run(["cargo", "build", "--workspace"], cwd=REPO, check=True)
    args.haproxy = ensure_apt("haproxy", "haproxy")
    args.prometheus = ensure_apt("prometheus", "prometheus")

    t = Rollout(args)
    ok = False
    try:
        t.run()
        ok = not t.failures
    except Exception as e:
        t.failures.append(f"{type(e).__name__}: {e}")
    finally:
        t.cleanup(keep=args.keep or not ok)
    for f in t.failures:
        print(f"FAIL {f}")
    print("rollout: PASS" if ok else "rollout: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
