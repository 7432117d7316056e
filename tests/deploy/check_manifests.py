#!/usr/bin/env python3
"""Consistency checks on rendered Sluice manifests (`kubectl kustomize k8s/overlays/X`).

Schema validation (kubernetes-validate) says the YAML is well-formed Kubernetes; this says
it is *Sluice*: termination budgets add up, probes hit the endpoints SPEC.md names, the
metrics port stays off the public Service, pods run locked down, no credentials are
rendered, autoscaled Deployments leave `replicas` to their autoscaler, NetworkPolicies
isolate the pods (API 8080, metrics only from monitoring, egress DNS/Postgres/targets),
the KEDA query is valid PromQL, scoped by namespace and counts each job once (evaluated
by `promtool test rules` on duplicated series), and with --require-digest every image is
pinned by digest.

    check_manifests.py [--require-digest] RENDERED.yaml [...]
                                             exit 1 listing every problem
    check_manifests.py --self-test [--require-digest] RENDERED.yaml
                                             prove each check fires on a mutated copy
Needs promtool (Debian `prometheus`) when the render has a ScaledObject.
"""
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

# SPEC.md §4/§5/§8 numbers the manifests must honour.
API, WORKER = "sluice-api", "sluice-worker"
API_PORT, METRICS_PORT = 8080, 9090
SPEC_DEFAULT_SHUTDOWN = {API: 30.0, WORKER: 120.0}
SPEC_GRACE = {API: 35, WORKER: 125}
SPEC_API_PRESTOP = 5.0
# Time left after preStop + drain + shutdown budget for closing the pool and exiting
# before the kubelet's SIGKILL.
MIN_CUSHION = 5.0
# The namespace Prometheus runs in: the only one that may scrape port 9090.
MONITORING_NS = "monitoring"


def parse_duration(text, what):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", str(text))
    if not m:
        raise ValueError(f"{what}: cannot parse duration {text!r}")
    n, unit = float(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def load(paths):
    docs = []
    for p in paths:
        with open(p) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def find(docs, kind, name):
    for d in by_kind(docs, kind):
        if d.get("metadata", {}).get("name") == name:
            return d
    return None


class Checker:
    def __init__(self, docs, require_digest=False):
        self.docs = docs
        self.require_digest = require_digest
        self.problems = []

    def fail(self, msg):
        self.problems.append(msg)

    # --- helpers --------------------------------------------------------------------
    def env_of(self, container):
        """Effective environment: envFrom ConfigMaps first, then env (which wins)."""
        env = {}
        for src in container.get("envFrom", []) or []:
            ref = src.get("configMapRef")
            if ref:
                cm = find(self.docs, "ConfigMap", ref.get("name"))
                if cm:
                    env.update({k: str(v) for k, v in (cm.get("data") or {}).items()})
        for e in container.get("env", []) or []:
            if "value" in e:
                env[e["name"]] = str(e["value"])
        return env

    @staticmethod
    def port_number(container, port):
        if isinstance(port, int):
            return port
        for p in container.get("ports", []) or []:
            if p.get("name") == port:
                return p.get("containerPort")
        return None

    @staticmethod
    def prestop_seconds(container, where):
        pre = ((container.get("lifecycle") or {}).get("preStop")) or {}
        if not pre:
            return 0.0
        if "sleep" in pre:
            return float(pre["sleep"].get("seconds", 0))
        cmd = ((pre.get("exec") or {}).get("command")) or []
        joined = " ".join(str(c) for c in cmd)
        m = re.search(r"(?:^|[\s/])sleep\s+(\d+(?:\.\d+)?)", joined)
        if not m:
            raise ValueError(f"{where}: preStop {joined!r} is not a recognisable sleep")
        return float(m.group(1))

    def probe(self, name, container, kind, path, port, period=None, threshold=None):
        pr = container.get(kind)
        if not pr:
            self.fail(f"{name}: no {kind}")
            return
        http = pr.get("httpGet") or {}
        got_port = self.port_number(container, http.get("port"))
        if http.get("path") != path or got_port != port:
            self.fail(
                f"{name}: {kind} is {http.get('path')}:{got_port}, SPEC says {path}:{port}"
            )
        if period is not None and pr.get("periodSeconds", 10) != period:
            self.fail(f"{name}: {kind} periodSeconds {pr.get('periodSeconds', 10)} != {period}")
        if threshold is not None and pr.get("failureThreshold", 3) != threshold:
            self.fail(
                f"{name}: {kind} failureThreshold {pr.get('failureThreshold', 3)} != {threshold}"
            )

    def security(self, name, pod):
        psc = pod.get("securityContext") or {}
        if ((psc.get("seccompProfile") or {}).get("type")) != "RuntimeDefault":
            self.fail(f"{name}: pod securityContext.seccompProfile.type is not RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            sa = find(self.docs, "ServiceAccount", pod.get("serviceAccountName", "default"))
            if not sa or sa.get("automountServiceAccountToken") is not False:
                self.fail(f"{name}: service account token is mounted")
        for c in pod.get("containers", []) + (pod.get("initContainers") or []):
            where = f"{name}/{c.get('name')}"
            sc = c.get("securityContext") or {}
            non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            uid = sc.get("runAsUser", psc.get("runAsUser"))
            if non_root is not True:
                self.fail(f"{where}: runAsNonRoot is not true")
            if uid is not None and int(uid) == 0:
                self.fail(f"{where}: runs as uid 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                self.fail(f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                self.fail(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in (((sc.get("capabilities") or {}).get("drop")) or []):
                self.fail(f"{where}: capabilities do not drop ALL")
            res = c.get("resources") or {}
            if not (res.get("requests") or {}).get("memory") or not (
                res.get("requests") or {}
            ).get("cpu"):
                self.fail(f"{where}: missing cpu/memory requests")
            if not (res.get("limits") or {}).get("memory"):
                self.fail(f"{where}: missing memory limit")

    # --- checks ---------------------------------------------------------------------
    def deployment(self, name, binary):
        dep = find(self.docs, "Deployment", name)
        if not dep:
            self.fail(f"Deployment {name} missing")
            return
        meta_labels = dep.get("metadata", {}).get("labels") or {}
        tmpl = dep["spec"]["template"]
        labels = tmpl.get("metadata", {}).get("labels") or {}
        for lbls, where in ((meta_labels, "metadata"), (labels, "pod template")):
            if lbls.get("app.kubernetes.io/name") != name:
                self.fail(f"{name}: {where} label app.kubernetes.io/name != {name}")
            if lbls.get("app.kubernetes.io/part-of") != "sluice":
                self.fail(f"{name}: {where} label app.kubernetes.io/part-of != sluice")
        ann = tmpl.get("metadata", {}).get("annotations") or {}
        if (
            ann.get("prometheus.io/scrape") != "true"
            or str(ann.get("prometheus.io/port")) != str(METRICS_PORT)
            or ann.get("prometheus.io/path", "/metrics") != "/metrics"
        ):
            self.fail(f"{name}: prometheus.io scrape annotations missing or not port 9090 /metrics")
        pod = tmpl["spec"]
        self.security(name, pod)
        containers = pod.get("containers") or []
        main = next((c for c in containers if binary in (c.get("command") or [])[:1]), None)
        if not main:
            self.fail(f"{name}: no container with command [{binary!r}]")
            return
        roll = (dep["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        if str(roll.get("maxUnavailable")) != "0":
            self.fail(f"{name}: rollingUpdate.maxUnavailable is {roll.get('maxUnavailable')}, want 0")

        env = self.env_of(main)
        try:
            shutdown = parse_duration(
                env.get("SLUICE_SHUTDOWN_TIMEOUT", f"{SPEC_DEFAULT_SHUTDOWN[name]}s"),
                f"{name} SLUICE_SHUTDOWN_TIMEOUT",
            )
            drain = (
                parse_duration(env.get("SLUICE_DRAIN_DELAY", "0s"), f"{name} SLUICE_DRAIN_DELAY")
                if name == API
                else 0.0
            )
            prestop = self.prestop_seconds(main, name)
        except ValueError as e:
            self.fail(str(e))
            return
        grace = pod.get("terminationGracePeriodSeconds", 30)
        need = prestop + drain + shutdown + MIN_CUSHION
        if grace < need:
            self.fail(
                f"{name}: terminationGracePeriodSeconds {grace} < preStop {prestop:g}s + drain "
                f"{drain:g}s + SLUICE_SHUTDOWN_TIMEOUT {shutdown:g}s + cushion {MIN_CUSHION:g}s"
            )
        if grace != SPEC_GRACE[name]:
            self.fail(f"{name}: terminationGracePeriodSeconds {grace}, SPEC.md says {SPEC_GRACE[name]}")

        if name == API:
            if prestop < SPEC_API_PRESTOP:
                self.fail(f"{name}: preStop sleep {prestop:g}s, SPEC.md says {SPEC_API_PRESTOP:g}s")
            self.probe(name, main, "readinessProbe", "/health/ready", API_PORT, 2, 1)
            self.probe(name, main, "livenessProbe", "/health/live", API_PORT)
        else:
            if shutdown != SPEC_DEFAULT_SHUTDOWN[WORKER]:
                self.fail(f"{name}: SLUICE_SHUTDOWN_TIMEOUT {shutdown:g}s, SPEC.md says 120s")
            self.probe(name, main, "readinessProbe", "/health/ready", METRICS_PORT)
            self.probe(name, main, "livenessProbe", "/health/live", METRICS_PORT)

    def services(self):
        api = find(self.docs, "Deployment", API)
        api_labels = (api or {}).get("spec", {}).get("template", {}).get("metadata", {}).get(
            "labels"
        ) or {}
        public = []
        for svc in by_kind(self.docs, "Service"):
            sel = svc["spec"].get("selector") or {}
            if not sel or any(api_labels.get(k) != v for k, v in sel.items()):
                continue
            if svc["spec"].get("clusterIP") == "None":
                continue  # headless: per-pod DNS for scrapers, no load-balanced VIP
            public.append(svc)
            for p in svc["spec"].get("ports") or []:
                if METRICS_PORT in (p.get("port"), p.get("targetPort")) or p.get(
                    "targetPort"
                ) == "metrics":
                    self.fail(
                        f"Service {svc['metadata']['name']} exposes the metrics port "
                        f"{METRICS_PORT} of {API} (SPEC §2: never behind the public Service)"
                    )
        if not any(
            p.get("port") == API_PORT for s in public for p in s["spec"].get("ports") or []
        ):
            self.fail(f"no Service exposes {API} on port {API_PORT}")

    def others(self):
        job = next(
            (
                j
                for j in by_kind(self.docs, "Job")
                if any(
                    (c.get("command") or []) + (c.get("args") or []) == ["sluicectl", "migrate"]
                    for c in j["spec"]["template"]["spec"].get("containers", [])
                )
            ),
            None,
        )
        if not job:
            self.fail("no Job runs `sluicectl migrate`")
        else:
            self.security(f"Job {job['metadata']['name']}", job["spec"]["template"]["spec"])
        for name in (API, WORKER):
            dep = find(self.docs, "Deployment", name)
            if not dep:
                continue
            sel = dep["spec"]["selector"]["matchLabels"]
            if not any(
                (p["spec"].get("selector") or {}).get("matchLabels") == sel
                for p in by_kind(self.docs, "PodDisruptionBudget")
            ):
                self.fail(f"no PodDisruptionBudget selects {name}")
        if not any(
            h.get("apiVersion") == "autoscaling/v2"
            and h["spec"]["scaleTargetRef"].get("name") == API
            for h in by_kind(self.docs, "HorizontalPodAutoscaler")
        ):
            self.fail(f"no autoscaling/v2 HorizontalPodAutoscaler for {API}")
        for cm in by_kind(self.docs, "ConfigMap"):
            for key in cm.get("data") or {}:
                if key in ("DATABASE_URL", "SLUICE_API_TOKENS"):
                    self.fail(f"ConfigMap {cm['metadata']['name']} holds secret {key}")


    # --- credentials, replicas, images --------------------------------------------------
    def credentials(self):
        for sec in by_kind(self.docs, "Secret"):
            self.fail(
                f"Secret {sec['metadata'].get('name')} is rendered: credentials must come from "
                "a Secret the operator creates or an ExternalSecret, or an apply overwrites them"
            )
        text = yaml.safe_dump_all(self.docs)
        if "REPLACE_ME" in text:
            self.fail("a REPLACE_ME placeholder is rendered")

    def autoscaled(self):
        """(kind, name) of every Deployment an HPA or a KEDA ScaledObject scales."""
        owners = {}
        for h in by_kind(self.docs, "HorizontalPodAutoscaler"):
            ref = h["spec"]["scaleTargetRef"]
            owners[ref.get("name")] = f"HorizontalPodAutoscaler {h['metadata']['name']}"
        for so in by_kind(self.docs, "ScaledObject"):
            ref = so["spec"]["scaleTargetRef"]
            if ref.get("kind", "Deployment") == "Deployment":
                owners[ref.get("name")] = f"ScaledObject {so['metadata']['name']}"
        return owners

    def replicas(self):
        for name, owner in self.autoscaled().items():
            dep = find(self.docs, "Deployment", name)
            if dep and "replicas" in dep["spec"]:
                self.fail(
                    f"Deployment {name} sets replicas while {owner} owns the count "
                    "(every apply would reset it)"
                )

    def images(self):
        if not self.require_digest:
            return
        for kind in ("Deployment", "Job"):
            for obj in by_kind(self.docs, kind):
                pod = obj["spec"]["template"]["spec"]
                for c in pod.get("containers", []) + (pod.get("initContainers") or []):
                    if not re.search(r"@sha256:[0-9a-f]{64}$", c.get("image", "")):
                        self.fail(
                            f"{kind} {obj['metadata']['name']}/{c.get('name')}: image "
                            f"{c.get('image')!r} is not pinned by digest"
                        )

    # --- NetworkPolicies ------------------------------------------------------------------
    def policies_for(self, labels):
        out = []
        for np in by_kind(self.docs, "NetworkPolicy"):
            sel = np["spec"].get("podSelector") or {}
            if sel.get("matchExpressions"):
                self.fail(f"NetworkPolicy {np['metadata']['name']}: matchExpressions not supported here")
                continue
            if all(labels.get(k) == v for k, v in (sel.get("matchLabels") or {}).items()):
                out.append(np)
        return out

    @staticmethod
    def types(np):
        t = np["spec"].get("policyTypes")
        if t:
            return set(t)
        return {"Ingress"} | ({"Egress"} if "egress" in np["spec"] else set())

    @staticmethod
    def rule_ports(rule, container=None):
        """[(protocol, port)] a rule allows; None means every port."""
        ports = rule.get("ports")
        if not ports:
            return None
        out = []
        for p in ports:
            port = p.get("port")
            if isinstance(port, str) and container is not None:
                port = Checker.port_number(container, port)
            out.append((p.get("protocol", "TCP"), port))
        return out

    @staticmethod
    def only_monitoring(peers):
        """Every peer is exactly the monitoring namespace (no ipBlock, no pod-wide match)."""
        if not peers:
            return False
        for peer in peers:
            ns = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
            if set(peer) - {"namespaceSelector", "podSelector"} or ns.get(
                "kubernetes.io/metadata.name"
            ) != MONITORING_NS:
                return False
        return True

    def network(self):
        pods = []
        for kind in ("Deployment", "Job"):
            for obj in by_kind(self.docs, kind):
                tmpl = obj["spec"]["template"]
                pods.append((f"{kind} {obj['metadata']['name']}", obj["metadata"]["name"],
                             tmpl.get("metadata", {}).get("labels") or {},
                             (tmpl["spec"].get("containers") or [{}])[0]))
        for where, name, labels, container in pods:
            pols = self.policies_for(labels)
            for direction in ("Ingress", "Egress"):
                if not any(direction in self.types(p) for p in pols):
                    self.fail(f"{where}: not isolated for {direction} (no NetworkPolicy selects it)")
            allowed_in = {}  # port -> list of peer lists
            for p in pols:
                for rule in p["spec"].get("ingress") or []:
                    ports = self.rule_ports(rule, container)
                    if ports is None:
                        self.fail(f"{where}: NetworkPolicy {p['metadata']['name']} allows ingress on every port")
                        continue
                    for _, port in ports:
                        allowed_in.setdefault(port, []).append(rule.get("from") or [])
            for port, peer_lists in allowed_in.items():
                if port == METRICS_PORT:
                    if not all(self.only_monitoring(peers) for peers in peer_lists):
                        self.fail(
                            f"{where}: metrics port {METRICS_PORT} reachable from outside the "
                            f"{MONITORING_NS} namespace"
                        )
                elif not (name == API and port == API_PORT):
                    self.fail(f"{where}: ingress allowed on port {port}")
            if name == API and API_PORT not in allowed_in:
                self.fail(f"{where}: no ingress to the API port {API_PORT}")
            if name in (API, WORKER) and METRICS_PORT not in allowed_in:
                self.fail(f"{where}: Prometheus in {MONITORING_NS} cannot reach {METRICS_PORT}")
            egress = set()
            for p in pols:
                for rule in p["spec"].get("egress") or []:
                    ports = self.rule_ports(rule, container)
                    if ports is None:
                        self.fail(f"{where}: NetworkPolicy {p['metadata']['name']} allows egress on every port")
                        continue
                    egress.update(ports)
            if ("UDP", 53) not in egress:
                self.fail(f"{where}: no egress to DNS (UDP 53)")
            if ("TCP", 5432) not in egress:
                self.fail(f"{where}: no egress to Postgres 5432")
            if name == WORKER and not {("TCP", 80), ("TCP", 443)} <= egress:
                self.fail(f"{where}: no egress to HTTP targets (80/443)")

    # --- KEDA -----------------------------------------------------------------------------
    def keda(self):
        for so in by_kind(self.docs, "ScaledObject"):
            name = so["metadata"]["name"]
            for trig in so["spec"].get("triggers") or []:
                if trig.get("type") != "prometheus":
                    continue
                q = (trig.get("metadata") or {}).get("query", "")
                self.keda_query(name, so["metadata"].get("namespace"), q)

    def keda_query(self, name, namespace, query):
        m = re.search(r'namespace\s*=\s*"([^"]*)"', query)
        if not m:
            self.fail(f"ScaledObject {name}: KEDA query is not scoped by namespace: {query}")
            return
        if namespace and m.group(1) != namespace:
            self.fail(
                f"ScaledObject {name}: KEDA query reads namespace {m.group(1)!r} but the "
                f"object is deployed to {namespace!r}"
            )
        ns = m.group(1)
        promtool = shutil.which("promtool")
        if not promtool:
            self.fail("promtool not found (Debian package prometheus): cannot check the KEDA query")
            return
        with tempfile.TemporaryDirectory() as d:
            rules = os.path.join(d, "keda.rules.yaml")
            with open(rules, "w") as f:
                yaml.safe_dump({"groups": [{"name": "keda", "rules": [
                    {"record": "sluice:keda_query", "expr": query}]}]}, f)
            r = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True)
            if r.returncode != 0:
                self.fail(f"ScaledObject {name}: KEDA query is not valid PromQL: "
                          f"{(r.stdout + r.stderr).strip()}")
                return
            # Two worker pods, each scraped twice (annotations and PodMonitor), all
            # exporting the same database-wide numbers; another installation's queue and
            # finished jobs must not count. Right answer: 5 queued + 3 processing of `a`,
            # 2 queued of `b` = 10.
            series = []
            for pod in ("w1", "w2"):
                for job in ("kubernetes-pods", f"{ns}/sluice"):
                    for kind, state, n in (("a", "queued", 5), ("a", "processing", 3),
                                           ("b", "queued", 2), ("a", "completed", 1000)):
                        series.append({
                            "series": f'sluice_queue_depth{{namespace="{ns}",pod="{pod}",'
                                      f'job="{job}",kind="{kind}",state="{state}"}}',
                            "values": f"{n}x5"})
            series.append({"series": f'sluice_queue_depth{{namespace="{ns}-other",pod="x",'
                                     'job="j",kind="a",state="queued"}',
                           "values": "100x5"})
            test = os.path.join(d, "keda.test.yaml")
            with open(test, "w") as f:
                yaml.safe_dump({"rule_files": ["keda.rules.yaml"], "evaluation_interval": "1m",
                                "tests": [{"interval": "1m", "input_series": series,
                                           "promql_expr_test": [{
                                               "expr": "sluice:keda_query", "eval_time": "2m",
                                               "exp_samples": [{"labels": "sluice:keda_query",
                                                                "value": 10}]}]}]}, f)
            r = subprocess.run([promtool, "test", "rules", test], capture_output=True,
                               text=True, cwd=d)
            if r.returncode != 0:
                self.fail(
                    f"ScaledObject {name}: KEDA query does not count queued + processing once "
                    f"per job in its namespace (want 10 from duplicated series): "
                    f"{' '.join((r.stdout + r.stderr).split())[:400]}"
                )

    def run(self):
        self.deployment(API, "sluice-api")
        self.deployment(WORKER, "sluice-worker")
        self.services()
        self.others()
        self.credentials()
        self.replicas()
        self.images()
        self.network()
        self.keda()
        return self.problems


# --- self-test: each mutation must be caught, with a message naming the problem --------
def _dep(docs, name):
    return find(docs, "Deployment", name)


def _container(docs, name):
    return _dep(docs, name)["spec"]["template"]["spec"]["containers"][0]


def _set_env(docs, name, key, value):
    c = _container(docs, name)
    c["env"] = [e for e in c.get("env") or [] if e["name"] != key] + [
        {"name": key, "value": value}
    ]


def _mut_grace(d):
    _dep(d, API)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30


def _mut_worker_budget(d):
    _set_env(d, WORKER, "SLUICE_SHUTDOWN_TIMEOUT", "3m")


def _mut_drain(d):
    _set_env(d, API, "SLUICE_DRAIN_DELAY", "10s")


def _mut_ready_path(d):
    _container(d, API)["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _mut_ready_period(d):
    _container(d, API)["readinessProbe"]["periodSeconds"] = 10


def _mut_worker_probe_port(d):
    _container(d, WORKER)["livenessProbe"]["httpGet"]["port"] = 8080


def _mut_metrics_in_service(d):
    find(d, "Service", API)["spec"]["ports"].append(
        {"name": "metrics", "port": 9090, "targetPort": 9090}
    )


def _mut_root(d):
    _container(d, API)["securityContext"]["readOnlyRootFilesystem"] = False


def _mut_caps(d):
    del _container(d, WORKER)["securityContext"]["capabilities"]


def _mut_no_prestop(d):
    del _container(d, API)["lifecycle"]


def _mut_surge_down(d):
    _dep(d, API)["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = 1


def _mut_secret(d):
    d.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sluice-secrets"},
              "stringData": {"DATABASE_URL": "postgres://u:REPLACE_ME@db/sluice"}})


def _mut_replicas(d):
    _dep(d, API)["spec"]["replicas"] = 3


def _scaled(d):
    return by_kind(d, "ScaledObject")[0]["spec"]["triggers"][0]["metadata"]


def _mut_query_no_ns(d):
    q = _scaled(d)
    q["query"] = re.sub(r'namespace\s*=\s*"[^"]*",?', "", q["query"])


def _mut_query_wrong_ns(d):
    q = _scaled(d)
    q["query"] = re.sub(r'namespace\s*=\s*"[^"]*"', 'namespace="elsewhere"', q["query"])


def _mut_query_sum_pods(d):
    _scaled(d)["query"] = re.sub(r"max by \(kind, state\)", "sum by (kind, state)",
                                 _scaled(d)["query"])


def _mut_query_queued_only(d):
    _scaled(d)["query"] = _scaled(d)["query"].replace('state=~"queued|processing"', 'state="queued"')


def _mut_query_syntax(d):
    _scaled(d)["query"] = _scaled(d)["query"].replace("max by", "max by by")


def _netpol(d, name):
    return find(d, "NetworkPolicy", name)


def _mut_metrics_open(d):
    _netpol(d, "sluice-api")["spec"]["ingress"][1]["from"] = []


def _mut_no_postgres(d):
    eg = _netpol(d, "sluice-egress")["spec"]["egress"]
    _netpol(d, "sluice-egress")["spec"]["egress"] = [
        r for r in eg if {"protocol": "TCP", "port": 5432} not in (r.get("ports") or [])]


def _mut_no_default_deny(d):
    d.remove(_netpol(d, "sluice-default-deny"))
    d.remove(_netpol(d, "sluice-egress"))


def _mut_image_tag(d):
    c = _container(d, WORKER)
    c["image"] = c["image"].split("@")[0]


MUTATIONS = [
    (_mut_grace, "terminationGracePeriodSeconds 30 <"),
    (_mut_worker_budget, "sluice-worker: terminationGracePeriodSeconds 125 <"),
    (_mut_drain, "drain 10s"),
    (_mut_ready_path, "readinessProbe is /healthz"),
    (_mut_ready_period, "periodSeconds 10 != 2"),
    (_mut_worker_probe_port, "livenessProbe is /health/live:8080"),
    (_mut_metrics_in_service, "exposes the metrics port"),
    (_mut_root, "readOnlyRootFilesystem"),
    (_mut_caps, "drop ALL"),
    (_mut_no_prestop, "preStop sleep 0s"),
    (_mut_surge_down, "maxUnavailable is 1"),
    (_mut_secret, "Secret sluice-secrets is rendered"),
    (_mut_secret, "REPLACE_ME placeholder"),
    (_mut_replicas, "sets replicas while HorizontalPodAutoscaler"),
    (_mut_metrics_open, "metrics port 9090 reachable from outside"),
    (_mut_no_postgres, "no egress to Postgres 5432"),
    (_mut_no_default_deny, "not isolated for Egress"),
]
# Only on a render with KEDA (the prod overlay).
KEDA_MUTATIONS = [
    (_mut_query_no_ns, "not scoped by namespace"),
    (_mut_query_wrong_ns, "reads namespace 'elsewhere'"),
    (_mut_query_sum_pods, "does not count queued + processing once"),
    (_mut_query_queued_only, "does not count queued + processing once"),
    (_mut_query_syntax, "not valid PromQL"),
]
# Only with --require-digest.
DIGEST_MUTATIONS = [
    (_mut_image_tag, "is not pinned by digest"),
]


def self_test(docs, require_digest):
    ok = True
    base = Checker(copy.deepcopy(docs), require_digest).run()
    if base:
        print("self-test: the unmutated manifests already fail:", *base, sep="\n  ")
        return False
    mutations = list(MUTATIONS)
    if by_kind(docs, "ScaledObject"):
        mutations += KEDA_MUTATIONS
    if require_digest:
        mutations += DIGEST_MUTATIONS
    for mutate, expect in mutations:
        d = copy.deepcopy(docs)
        mutate(d)
        problems = Checker(d, require_digest).run()
        if not any(expect in p for p in problems):
            ok = False
            print(f"self-test: {mutate.__name__} not caught (want {expect!r}), got {problems}")
    print(f"self-test: {len(mutations)} mutations, {'all caught' if ok else 'SOME MISSED'}")
    return ok


def main(argv):
    require_digest = "--require-digest" in argv
    argv = [a for a in argv if a != "--require-digest"]
    if len(argv) >= 2 and argv[0] == "--self-test":
        return 0 if self_test(load(argv[1:]), require_digest) else 1
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    problems = Checker(load(argv), require_digest).run()
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        return 1
    print(f"check_manifests: {', '.join(argv)}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
