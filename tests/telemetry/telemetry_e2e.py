#!/usr/bin/env python3
"""What Sluice tells operators, end to end, with the real binaries.

Runs (all local, all real): a fresh Postgres database, one `sluice-api` and one
`sluice-worker` exporting traces over OTLP/HTTP to OTLP receivers in this script (a
`http.server` decoding `ExportTraceServiceRequest` with the official protobuf classes; the
API's over http, the worker's over https with a CA made by openssl here and trusted through
SSL_CERT_FILE), and an HTTP target that fails one kind of job.

Asserted:
- traces: the resource comes from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`; the API's
  span for `POST /v1/jobs` is a SERVER span named after its route, with `http.route`,
  method and status code, child of the caller's `traceparent`; the worker's job span is a
  CONSUMER span in the same trace whose parent is that API span; a failed job's span has
  error status; everything arrives after SIGTERM (the batch exporter flushes on exit);
- metrics: both `/metrics` pass `promtool check metrics`, carry `process_*` and
  `sluice_build_info{revision}`, and count 404/405 responses under their labels;
- logs: readiness probes answered 503 during a drain log no ERROR line; `pretty` logs
  written to a file have no ANSI escape codes.

    DATABASE_URL=postgres://... tests/telemetry/telemetry_e2e.py [--bin-dir target/debug]
Needs opentelemetry-proto + protobuf (scripts/test.d/45-telemetry.sh installs them) and
promtool (Debian `prometheus`, installed when absent).
"""
import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "e2e-admin-token"
FAIL_KIND = "e2e.rejected"


def log(msg):
    print(f"[telemetry {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, pred, timeout=60, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def request(method, url, body=None, headers=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def ensure_promtool():
    if shutil.which("promtool"):
        return shutil.which("promtool")
    log("installing promtool (Debian prometheus) with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    return shutil.which("promtool")


class Receiver:
    """OTLP/HTTP traces (`POST /v1/traces`, protobuf) and the jobs' HTTP target
    (`POST /reject`, always 400 so the job fails at once)."""

    def __init__(self, tls=None):
        self.lock = threading.Lock()
        self.requests = []  # ExportTraceServiceRequest
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v1/traces":
                    msg = trace_service_pb2.ExportTraceServiceRequest()
                    msg.ParseFromString(body)
                    with outer.lock:
                        outer.requests.append(msg)
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-protobuf")
                else:
                    reply = b'{"error":"rejected by the e2e target"}'
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self):
        """(service attributes dict, span) for every span received."""
        out = []
        with self.lock:
            for req in self.requests:
                for rs in req.resource_spans:
                    attrs = {a.key: any_value(a.value) for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            out.append((attrs, span))
        return out


def any_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def span_attrs(span):
    return {a.key: any_value(a.value) for a in span.attributes}


class Proc:
    def __init__(self, name, argv, env, logdir):
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.logf = open(self.log_path, "wb")
        self.p = subprocess.Popen(argv, env=env, stdout=self.logf, stderr=subprocess.STDOUT)

    def alive(self):
        return self.p.poll() is None

    def stop(self, timeout=60):
        self.p.send_signal(signal.SIGTERM)
        code = self.p.wait(timeout=timeout)
        self.logf.close()
        return code

    def text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self):
        if self.alive():
            self.p.kill()
            self.p.wait()


def make_tls(work):
    """A CA and a server certificate for 127.0.0.1 / localhost, made with openssl."""
    ca_key, ca, key, csr, crt = (os.path.join(work, n) for n in
                                 ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = os.path.join(work, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
        "-days", "2", "-subj", "/CN=sluice-e2e-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
        "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", crt, "-days", "2", "-extfile", ext)
    return ca, (crt, key)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    log(f"ok: {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "debug"))
    args = ap.parse_args()
    if not os.environ.get("DATABASE_URL"):
        sys.exit("telemetry: DATABASE_URL must point at a Postgres where it may CREATE DATABASE")
    bins = ["sluice-api", "sluice-worker", "sluicectl"]
    if not all(os.path.exists(os.path.join(args.bin_dir, b)) for b in bins):
        subprocess.run(["cargo", "build", "--workspace"], cwd=REPO, check=True)
    promtool = ensure_promtool()

    base = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
    db_name = f"sluice_telemetry_{os.getpid()}"
    admin_url = urllib.parse.urlunsplit(base._replace(path="/postgres"))
    db_url = urllib.parse.urlunsplit(base._replace(path=f"/{db_name}"))
    psql = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", admin_url, "-c"]
    subprocess.run(psql + [f'CREATE DATABASE "{db_name}"'], check=True, capture_output=True)
    work = tempfile.mkdtemp(prefix="sluice-telemetry-")
    procs = []
    try:
        r = subprocess.run([os.path.join(args.bin_dir, "sluicectl"), "migrate"],
                           env=dict(os.environ, DATABASE_URL=db_url), capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError(f"sluicectl migrate failed: {r.stdout}{r.stderr}")
        run(args.bin_dir, db_url, work, procs, promtool)
        log("all telemetry checks passed")
    finally:
        for p in procs:
            p.kill()
        subprocess.run(psql + [f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def run(bin_dir, db_url, work, procs, promtool):
    rx = Receiver()
    ca, server_tls = make_tls(work)
    rx_tls = Receiver(tls=server_tls)
    handlers = os.path.join(work, "handlers.toml")
    with open(handlers, "w") as f:
        f.write(f'[kinds."{FAIL_KIND}"]\nurl = "http://127.0.0.1:{rx.port}/reject"\n'
                f'timeout = "10s"\n')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLUICE_") and not k.startswith("OTEL_")}
    env.update(DATABASE_URL=db_url, RUST_LOG="info",
               OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{rx.port}",
               OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    api_port, api_metrics, worker_metrics = free_port(), free_port(), free_port()
    api_env = dict(env, SLUICE_LOG_FORMAT="json",
                   SLUICE_API_ADDR=f"127.0.0.1:{api_port}",
                   SLUICE_METRICS_ADDR=f"127.0.0.1:{api_metrics}",
                   SLUICE_API_TOKENS=f"admin:{TOKEN}",
                   SLUICE_DRAIN_DELAY="3s",
                   OTEL_SERVICE_NAME="e2e-api",
                   OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=e2e,"
                                            "k8s.namespace.name=sluice-e2e")
    # The worker exports over https: rustls with the system roots, here our CA.
    worker_env = dict(env, SLUICE_LOG_FORMAT="pretty",
                      OTEL_EXPORTER_OTLP_ENDPOINT=f"https://localhost:{rx_tls.port}",
                      SSL_CERT_FILE=ca,
                      SLUICE_METRICS_ADDR=f"127.0.0.1:{worker_metrics}",
                      SLUICE_HANDLERS_FILE=handlers,
                      OTEL_RESOURCE_ATTRIBUTES="service.name=e2e-worker,"
                                               "deployment.environment.name=e2e")
    api = Proc("api", [os.path.join(bin_dir, "sluice-api")], api_env, work)
    procs.append(api)
    worker = Proc("worker", [os.path.join(bin_dir, "sluice-worker")], worker_env, work)
    procs.append(worker)
    base = f"http://127.0.0.1:{api_port}"

    def ready(url):
        return request("GET", url, timeout=2)[0] == 200

    wait_until("the API ready", lambda: api.alive() and ready(f"{base}/health/ready"))
    wait_until("the worker ready",
               lambda: worker.alive() and ready(f"http://127.0.0.1:{worker_metrics}/health/ready"))

    # The caller's trace context.
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{caller_span}-01"
    status, body = request("POST", f"{base}/v1/jobs", {"kind": "sluice.noop", "payload": {}},
                           {"traceparent": traceparent})
    check(status == 201, f"job enqueued ({status} {body})")
    job_id = json.loads(body)["id"]
    status, body = request("POST", f"{base}/v1/jobs",
                           {"kind": FAIL_KIND, "payload": {}, "max_attempts": 1})
    check(status == 201, f"failing job enqueued ({status} {body})")
    fail_id = json.loads(body)["id"]
    for jid, want in ((job_id, "completed"), (fail_id, "failed")):
        status, body = request("GET", f"{base}/v1/jobs/{jid}?wait=30s", timeout=40)
        check(status == 200 and json.loads(body)["state"] == want, f"job {jid} {want}")
    check(request("GET", f"{base}/no/such/route")[0] == 404, "unknown route answers 404")
    check(request("DELETE", f"{base}/health/live")[0] == 405, "wrong method answers 405")

    # --- metrics -------------------------------------------------------------------------
    for name, port in (("api", api_metrics), ("worker", worker_metrics)):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        pc = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                            capture_output=True)
        check(pc.returncode == 0 and not (pc.stdout + pc.stderr).strip(),
              f"{name} /metrics is promtool-clean {pc.stdout}{pc.stderr}")
        check("\nprocess_resident_memory_bytes " in text, f"{name} exports process_*")
        check(re.search(r'sluice_build_info\{[^}]*revision="[^"]+"', text) is not None,
              f"{name} build info carries a revision")
        if name == "api":
            check('sluice_http_requests_total{method="GET",route="unmatched",status="404"} 1'
                  in text, "the 404 is counted under route=unmatched")
            check('sluice_http_requests_total{method="DELETE",route="/health/live",status="405"} 1'
                  in text, "the 405 is counted under its route")
        else:
            check(f'sluice_queue_depth{{kind="sluice.sleep",state="queued"}} 0' in text,
                  "an empty kind's queue depth reads 0")

    # --- drain: probes see 503, nothing logged as an error -----------------------------
    api.p.send_signal(signal.SIGTERM)
    probes = 0
    deadline = time.monotonic() + 10
    while probes < 5 and time.monotonic() < deadline:
        try:
            if request("GET", f"{base}/health/ready", timeout=2)[0] == 503:
                probes += 1
        except OSError:
            break
    check(probes >= 3, f"readiness answered 503 during the drain ({probes} probes)")
    check(api.p.wait(timeout=60) == 0, "the API exited 0")
    api.logf.close()
    check(worker.stop() == 0, "the worker exited 0")
    errors = [l for l in api.text().splitlines() if '"level":"ERROR"' in l]
    check(not errors, f"no ERROR lines during the API's drain {errors[:3]}")
    wtext = worker.text()
    check("\x1b[" not in wtext and "INFO" in wtext, "pretty logs to a file carry no ANSI codes")
    check("Some(" not in api.text(), "log fields are printed in Display form")

    # --- traces (flushed at exit) ----------------------------------------------------
    spans = rx.spans() + rx_tls.spans()
    log(f"{len(rx.spans())} spans received over http, {len(rx_tls.spans())} over https")
    check(rx_tls.spans() and all(r.get("service.name") == "e2e-worker" for r, _ in rx_tls.spans()),
          "the worker's spans arrived over https")
    server = [(res, s) for res, s in spans
              if s.kind == trace_pb2.Span.SPAN_KIND_SERVER and s.trace_id.hex() == trace_id]
    check(len(server) == 1, f"one API server span in the caller's trace (got {len(server)})")
    res, enqueue_span = server[0]
    a = span_attrs(enqueue_span)
    check(res.get("service.name") == "e2e-api", f"API service.name from OTEL_SERVICE_NAME ({res})")
    check(res.get("deployment.environment.name") == "e2e"
          and res.get("k8s.namespace.name") == "sluice-e2e",
          "API resource attributes from OTEL_RESOURCE_ATTRIBUTES")
    check(enqueue_span.name == "POST /v1/jobs", f"server span named by route ({enqueue_span.name})")
    check(a.get("http.route") == "/v1/jobs" and a.get("http.request.method") == "POST"
          and a.get("http.response.status_code") == 201, f"server span attributes {a}")
    check(enqueue_span.parent_span_id.hex() == caller_span,
          "the API span is a child of the caller's span")
    jobs = [(res, s) for res, s in spans
            if s.kind == trace_pb2.Span.SPAN_KIND_CONSUMER and s.trace_id.hex() == trace_id]
    check(len(jobs) == 1, f"one job span in the caller's trace (got {len(jobs)})")
    wres, job_span = jobs[0]
    check(wres.get("service.name") == "e2e-worker"
          and wres.get("deployment.environment.name") == "e2e",
          f"worker resource from OTEL_RESOURCE_ATTRIBUTES ({wres})")
    check(job_span.name == "process sluice.noop", f"job span named by kind ({job_span.name})")
    check(job_span.parent_span_id == enqueue_span.span_id,
          "the job span's parent is the API request span that enqueued it")
    check(job_span.status.code != trace_pb2.Status.STATUS_CODE_ERROR, "the completed job is no error")
    failed = [s for _, s in spans if s.kind == trace_pb2.Span.SPAN_KIND_CONSUMER
              and span_attrs(s).get("job.id") == fail_id]
    check(len(failed) == 1 and failed[0].status.code == trace_pb2.Status.STATUS_CODE_ERROR,
          "the failed job's span has error status")
    probes = [s for _, s in spans if span_attrs(s).get("http.route") == "/health/ready"
              and span_attrs(s).get("http.response.status_code") == 503]
    check(probes and all(s.status.code != trace_pb2.Status.STATUS_CODE_ERROR for s in probes),
          "draining probe spans are not errors")


if __name__ == "__main__":
    main()
