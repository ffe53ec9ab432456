#!/usr/bin/env python3
"""Checks k8s/ against the binary it deploys.

  check_manifests.py check --hybridize BIN [--coordinator-cli BIN]
      Renders every overlay (kubectl kustomize), validates every object against the Kubernetes
      schemas (validate.mjs, strict), then for every container: its command is a `hybridize`
      command, `hybridize ... --check-config` accepts its arguments, flags file, mounted files
      and environment, every environment variable is one the binary reads (or passes to NCCL, or
      is expanded into the arguments by Kubernetes), the container ports are the ones it listens
      on, probes hit routes it serves, Services point at those ports, and the workers' coordinator
      URL names the coordinator's Service.

  check_manifests.py selftest --hybridize BIN [--coordinator-cli BIN]
      Proves that `check` fails: copies k8s/, breaks it in one way at a time (a misspelt flag in
      the ConfigMap, an unknown field, a probe on a route the binary does not serve, a port it
      does not listen on, an environment variable it does not read, NVLink multicast on, a worker
      pointed at no Service) and requires `check` to fail naming the problem.

  check_manifests.py smoke --hybridize BIN --tiny-job BIN [--coordinator-cli BIN]
      Runs the rendered dev overlay's coordinator and worker containers as local processes:
      volumes become directories (a claim is one directory shared by every pod that mounts it,
      ConfigMaps and Secrets are written from the rendered objects), Service names and container
      ports map to 127.0.0.1 and a free port. Waits for the probes, submits a tiny job with the
      CLI and waits for it to succeed, then stops every process with SIGTERM and checks that each
      exits 0 within its termination grace period.

--coordinator-cli is the binary the coordinator image holds (the coordinator-only build,
scripts/build-coordinator); without it the full binary runs the coordinator too.
"""
import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
K8S = os.path.join(ROOT, "k8s")

# Secrets that an overlay expects to exist in the cluster instead of rendering them (prod: the
# tokens are never committed; docs/deploy-kubernetes.md says how to create them), with their keys.
OUT_OF_BAND_SECRETS = {"hybridize-tokens": ["api-token", "worker-token"]}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


class Failure(Exception):
    pass


def render(overlay, workdir):
    """Objects of one overlay, validated by validate.mjs."""
    name = os.path.basename(overlay)
    out = subprocess.run(["kubectl", "kustomize", overlay], capture_output=True, text=True)
    if out.returncode != 0:
        raise Failure(f"kubectl kustomize {overlay} failed:\n{out.stderr}")
    rendered = os.path.join(workdir, f"{name}.yaml")
    with open(rendered, "w") as f:
        f.write(out.stdout)
    as_json = os.path.join(workdir, f"{name}.json")
    v = subprocess.run(["node", os.path.join(HERE, "validate.mjs"), rendered, "--json", as_json],
                       capture_output=True, text=True)
    print(v.stdout.strip())
    if v.returncode != 0:
        raise Failure(f"overlay {name}: schema validation failed:\n{v.stdout}{v.stderr}")
    with open(as_json) as f:
        return json.load(f)


def find(objs, kind, name):
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    return None


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pod:
    """One replica of a workload's pod template, mapped onto local directories."""

    def __init__(self, objs, workload, index, sandbox, network):
        self.objs = objs
        self.workload = workload
        self.spec = workload["spec"]["template"]["spec"]
        self.labels = workload["spec"]["template"]["metadata"].get("labels", {})
        self.namespace = workload["metadata"].get("namespace", "default")
        base = workload["metadata"]["name"]
        self.name = f"{base}-{index}" if workload["kind"] == "StatefulSet" else f"{base}-abcde"
        self.sandbox = sandbox
        self.network = network  # {"host:port" or "0.0.0.0:port": "127.0.0.1:port"}
        if len(self.spec["containers"]) != 1:
            raise Failure(f"{self.name}: expected one container per pod")
        self.container = self.spec["containers"][0]
        self.volume_dirs = {}
        for v in self.spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                if find(objs, "PersistentVolumeClaim", claim) is None:
                    raise Failure(f"{self.name}: volume {v['name']}: no PersistentVolumeClaim "
                                  f"'{claim}' in the overlay")
                d = os.path.join(sandbox, "claims", claim)  # shared by every pod
            else:
                d = os.path.join(sandbox, "pods", self.name, v["name"])
            os.makedirs(d, exist_ok=True)
            self.volume_dirs[v["name"]] = (v, d)
        self.mounts = []  # (mountPath, local dir), longest first
        for m in self.container.get("volumeMounts", []):
            if m["name"] not in self.volume_dirs:
                raise Failure(f"{self.name}: volumeMount {m['name']} names no volume")
            self.mounts.append((m["mountPath"], self.volume_dirs[m["name"]][1]))
        self.mounts.sort(key=lambda m: -len(m[0]))
        for v, d in self.volume_dirs.values():
            self._fill(v, d)
        self.env = self._environment()

    def map_text(self, text):
        """Container paths and cluster addresses in `text`, as this machine sees them."""
        if self.mounts:  # one pass, so a mapped path is never mapped again (/tmp)
            local = dict(self.mounts)
            pattern = "|".join(re.escape(m) for m, _ in self.mounts)
            text = re.sub(rf"(?<![\w/.-])({pattern})(?=/|$|[^\w.-])",
                          lambda m: local[m.group(1)], text)
        for cluster, local in self.network.items():
            text = text.replace(cluster, local)
        return text

    def _fill(self, volume, d):
        if "configMap" in volume:
            cm = find(self.objs, "ConfigMap", volume["configMap"]["name"])
            if cm is None:
                raise Failure(f"{self.name}: no ConfigMap '{volume['configMap']['name']}'")
            data = cm.get("data", {})
            items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for it in items:
                if it["key"] not in data:
                    raise Failure(f"{self.name}: ConfigMap {cm['metadata']['name']} has no key "
                                  f"{it['key']}")
                with open(os.path.join(d, it["path"]), "w") as f:
                    f.write(self.map_text(data[it["key"]]))
        elif "secret" in volume:
            name = volume["secret"]["secretName"]
            secret = find(self.objs, "Secret", name)
            if secret is not None:
                data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
                data.update(secret.get("stringData", {}))
            elif name in OUT_OF_BAND_SECRETS:
                data = {k: f"out-of-band-{k}" for k in OUT_OF_BAND_SECRETS[name]}
            else:
                raise Failure(f"{self.name}: Secret '{name}' is neither rendered nor documented")
            items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
            for it in items:
                if it["key"] not in data:
                    raise Failure(f"{self.name}: Secret {name} has no key {it['key']}")
                with open(os.path.join(d, it["path"]), "w") as f:
                    f.write(data[it["key"]])

    def _environment(self):
        env = {}
        for e in self.container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "fieldRef" in e.get("valueFrom", {}):
                field = e["valueFrom"]["fieldRef"]["fieldPath"]
                values = {"metadata.name": self.name, "metadata.namespace": self.namespace}
                if field not in values:
                    raise Failure(f"{self.name}: env {e['name']}: fieldRef {field} not mapped")
                env[e["name"]] = values[field]
            else:
                raise Failure(f"{self.name}: env {e['name']}: only value and fieldRef are mapped")
        return env

    def argv(self, binary):
        """The container's command line, $(VAR) expanded as the kubelet does, paths mapped."""
        command = self.container.get("command", [])
        if len(command) < 2 or command[0] != "hybridize":
            raise Failure(f"{self.name}: command {command} is not `hybridize <command>`")
        args = command[1:] + self.container.get("args", [])
        expanded = [re.sub(r"\$\((\w+)\)", lambda m: self.env.get(m.group(1), m.group(0)), a)
                    for a in args]
        return [binary] + [self.map_text(a) for a in expanded]

    def expanded_variables(self):
        refs = set()
        for a in self.container.get("command", []) + self.container.get("args", []):
            refs.update(re.findall(r"\$\((\w+)\)", a))
        return refs

    def process_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYB_")}
        env.update(self.env)
        return env


def binary_for(pod, args):
    return args.coordinator_cli if pod.container["command"][1] == "serve" else args.hybridize


def check_overlay(objs, overlay, args, workdir):
    name = os.path.basename(overlay)
    services = [o for o in objs if o["kind"] == "Service"]
    workloads = [o for o in objs if o["kind"] in WORKLOAD_KINDS]
    if not workloads:
        raise Failure(f"overlay {name}: no workloads")
    commands = subprocess.run([args.hybridize, "--help"], capture_output=True, text=True).stdout
    for w in workloads:
        pod = Pod(objs, w, 0, os.path.join(workdir, name), {})
        where = f"overlay {name}: {w['kind']}/{w['metadata']['name']}"
        sub = pod.container.get("command", ["?", "?"])[1]
        if not re.search(rf"^\s+{re.escape(sub)}\s", commands, re.M):
            raise Failure(f"{where}: `hybridize {sub}` is not a command of the binary")
        argv = pod.argv(binary_for(pod, args)) + ["--check-config"]
        r = subprocess.run(argv, capture_output=True, text=True, env=pod.process_env())
        if r.returncode != 0:
            raise Failure(f"{where}: {' '.join(argv)}\nexit {r.returncode}: {r.stderr}")
        config = json.loads(r.stdout)
        # Environment: read by the binary, read by a library it links, or expanded into args.
        reads = set(config["environment"]["reads"])
        libraries = config["environment"].get("libraries", [])

        def for_library(var):
            return any(var == p or (p.endswith("*") and var.startswith(p[:-1])) for p in libraries)

        for var in pod.env:
            if var in reads or var in pod.expanded_variables() or for_library(var):
                continue
            raise Failure(f"{where}: env {var} is not read by `hybridize {sub}` "
                          f"(it reads {sorted(reads)}; its libraries {libraries})")
        # Ports: exactly the ones the command listens on.
        ports = {p["containerPort"]: p.get("name") for p in pod.container.get("ports", [])}
        if set(ports) != set(config["ports"]):
            raise Failure(f"{where}: containerPorts {sorted(ports)} but `hybridize {sub}` "
                          f"listens on {config['ports']}")
        by_name = {n: p for p, n in ports.items() if n}

        def resolve(port):
            return by_name.get(port) if isinstance(port, str) else port

        routes = set(config.get("routes", {}).values())
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            p = pod.container.get(probe)
            if p is None:
                if sub == "serve":
                    raise Failure(f"{where}: the coordinator needs a {probe}")
                continue
            get = p.get("httpGet")
            if get is None or get["path"] not in routes or resolve(get["port"]) not in ports:
                raise Failure(f"{where}: {probe} {get} does not hit a route of `hybridize "
                              f"{sub}` ({sorted(routes)}) on a container port")
        if config.get("routes", {}).get("readiness") and pod.container.get(
                "readinessProbe", {}).get("httpGet", {}).get("path") != config["routes"]["readiness"]:
            raise Failure(f"{where}: readinessProbe must use {config['routes']['readiness']}")
        # Services that select this pod point at its ports.
        for s in services:
            if not selects(s["spec"].get("selector"), pod.labels):
                continue
            for sp in s["spec"].get("ports", []):
                if resolve(sp.get("targetPort", sp["port"])) not in ports:
                    raise Failure(f"{where}: Service {s['metadata']['name']} targets port "
                                  f"{sp.get('targetPort')} which the container does not expose")
        # A worker's coordinator URL names a Service that selects the coordinator, on its port.
        if sub == "worker":
            m = re.match(r"https?://([^:/]+):(\d+)", config["coordinator"])
            if not m:
                raise Failure(f"{where}: coordinator URL {config['coordinator']} has no port")
            svc = find(objs, "Service", m.group(1))
            if svc is None or int(m.group(2)) not in [p["port"] for p in svc["spec"]["ports"]]:
                raise Failure(f"{where}: coordinator URL {config['coordinator']} names no "
                              f"Service port of the overlay")
            coordinators = [o for o in workloads if selects(svc["spec"]["selector"],
                                                            o["spec"]["template"]["metadata"]
                                                            .get("labels", {}))]
            if not coordinators or coordinators[0]["spec"]["template"]["spec"]["containers"][0][
                    "command"][1] != "serve":
                raise Failure(f"{where}: Service {svc['metadata']['name']} does not select "
                              f"the coordinator")
        # NCCL never uses NVLink multicast unless an operator turns it on deliberately.
        if sub == "worker" and pod.env.get("NCCL_NVLS_ENABLE") != "0":
            raise Failure(f"{where}: NCCL_NVLS_ENABLE must be \"0\"")
        print(f"{where}: `hybridize {sub}` accepts its command line, files and environment; "
              f"ports {sorted(ports)}")


def check(args, k8s=K8S):
    workdir = tempfile.mkdtemp(prefix="hyb-k8s-check-")
    try:
        overlays = sorted(os.path.join(k8s, "overlays", d)
                          for d in os.listdir(os.path.join(k8s, "overlays")))
        for overlay in overlays:
            objs = render(overlay, workdir)
            check_overlay(objs, overlay, args, workdir)
        print(f"{len(overlays)} overlays checked")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# (file under k8s/, text, replacement, what the failure must say)
BREAKAGES = [
    ("base/serve.flags", "--lease-seconds=60", "--lease-second=60", "unknown flag --lease-second"),
    ("base/coordinator.yaml", "livenessProbe:", "livenesProbe:", "livenesProbe: field not in"),
    ("base/coordinator.yaml", "path: /readyz", "path: /ready", "does not hit a route"),
    ("base/coordinator.yaml", "containerPort: 8080", "containerPort: 8081",
     "containerPorts [8081] but `hybridize serve` listens on [8080]"),
    ("base/worker.yaml", "- name: HYB_LOG_LEVEL\n              value: info",
     "- name: HYB_TOKEN\n              value: x", "HYB_TOKEN"),
    ("base/worker.yaml", "- name: POD_NAME", "- name: WORKER_NAME",
     "env WORKER_NAME is not read"),
    ("base/worker.yaml", 'value: "0"', 'value: "1"', "NCCL_NVLS_ENABLE must be"),
    ("base/worker.flags", "http://hybridize-coordinator:8080", "http://coordinator:8080",
     "names no Service port"),
    ("base/worker.yaml", "claimName: hybridize-storage", "claimName: storage",
     "no PersistentVolumeClaim 'storage'"),
]


def selftest(args):
    for rel, old, new, expected in BREAKAGES:
        tmp = tempfile.mkdtemp(prefix="hyb-k8s-selftest-")
        try:
            k8s = os.path.join(tmp, "k8s")
            shutil.copytree(K8S, k8s)
            path = os.path.join(k8s, rel)
            text = open(path).read()
            if old not in text:
                raise Failure(f"selftest: '{old}' is not in k8s/{rel} any more; update BREAKAGES")
            with open(path, "w") as f:
                f.write(text.replace(old, new, 1))
            try:
                check(args, k8s)
            except Failure as e:
                if expected not in str(e):
                    raise Failure(f"k8s/{rel} with '{new}': check failed, but not with "
                                  f"'{expected}':\n{e}")
                print(f"caught: k8s/{rel} with '{new.splitlines()[0]}': {expected}")
                continue
            raise Failure(f"k8s/{rel} with '{new}': check passed")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(BREAKAGES)} breakages caught")


def wait_http(url, deadline, procs):
    while time.time() < deadline:
        for name, p in procs:
            if p.poll() is not None:
                raise Failure(f"{name} exited with {p.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise Failure(f"{url} did not answer 200 in time")


def smoke(args):
    sandbox = tempfile.mkdtemp(prefix="hyb-k8s-smoke-")
    procs = []
    try:
        objs = render(os.path.join(K8S, "overlays", "dev"), sandbox)
        coord_w = next(o for o in objs if o["kind"] == "Deployment" and
                       o["spec"]["template"]["spec"]["containers"][0]["command"][1] == "serve")
        worker_w = next(o for o in objs if o["kind"] == "StatefulSet")
        svc = next(o for o in objs if o["kind"] == "Service" and selects(
            o["spec"]["selector"], coord_w["spec"]["template"]["metadata"]["labels"]))
        container_port = coord_w["spec"]["template"]["spec"]["containers"][0]["ports"][0][
            "containerPort"]
        port = free_port()
        network = {f"0.0.0.0:{container_port}": f"127.0.0.1:{port}"}
        for sp in svc["spec"]["ports"]:
            network[f"{svc['metadata']['name']}:{sp['port']}"] = f"127.0.0.1:{port}"
        coordinator = Pod(objs, coord_w, 0, sandbox, network)
        workers = [Pod(objs, worker_w, i, sandbox, network)
                   for i in range(worker_w["spec"].get("replicas", 1))]
        # The job's inputs on the shared storage, at the storage root, as a user would copy them.
        storage = coordinator.map_text("/data/hybridize")
        subprocess.run([args.tiny_job, storage], check=True)
        logs = os.path.join(sandbox, "logs")
        os.makedirs(logs)

        def start(pod, binary):
            log = open(os.path.join(logs, pod.name + ".log"), "w")
            p = subprocess.Popen(pod.argv(binary), env=pod.process_env(), stdout=log,
                                 stderr=subprocess.STDOUT)
            procs.append((pod.name, p))
            return p

        start(coordinator, args.coordinator_cli)
        c = coordinator.container
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            wait_http(base + c[probe]["httpGet"]["path"], deadline, procs)
        print(f"coordinator {coordinator.name}: probes answer 200 on {base}")
        for w in workers:
            start(w, args.hybridize)
        token_file = coordinator.map_text("/var/run/secrets/hybridize/api-token")
        submit = [args.hybridize, "submit", os.path.join(storage, "job.json"), "--wait",
                  "--server", base, "--token-file", token_file]
        r = subprocess.run(submit, capture_output=True, text=True, timeout=args.timeout)
        print(r.stdout[-2000:])
        if r.returncode != 0 or "SUCCEEDED" not in r.stdout:
            raise Failure(f"submit --wait: exit {r.returncode}\n{r.stderr}")
        st = subprocess.run([args.hybridize, "workers", "--json", "--server", base,
                             "--token-file", token_file], capture_output=True, text=True)
        ids = sorted(w["worker_id"] for w in json.loads(st.stdout)["workers"])
        if ids != sorted(w.name for w in workers):
            raise Failure(f"workers registered as {ids}, expected the pod names")
        print(f"job succeeded; workers {ids}")
        # Termination: SIGTERM, then each process exits 0 within its grace period.
        for name, p in procs:
            p.send_signal(signal.SIGTERM)
        for (name, p), grace in zip(procs, [coord_w["spec"]["template"]["spec"].get(
                "terminationGracePeriodSeconds", 30)] + [worker_w["spec"]["template"]["spec"].get(
                    "terminationGracePeriodSeconds", 30)] * len(workers)):
            rc = p.wait(timeout=grace)
            if rc != 0:
                raise Failure(f"{name} exited {rc} after SIGTERM")
        print("every process drained and exited 0 after SIGTERM")
    except Failure:
        for name, _ in procs:
            path = os.path.join(sandbox, "logs", name + ".log")
            if os.path.exists(path):
                print(f"--- {name} log (last 3000 chars)\n" + open(path).read()[-3000:])
        raise
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(sandbox, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["check", "selftest", "smoke"])
    ap.add_argument("--hybridize", required=True, help="the full hybridize binary")
    ap.add_argument("--coordinator-cli", help="the coordinator-only binary (default: --hybridize)")
    ap.add_argument("--tiny-job", help="smoke: the write_tiny_job test tool")
    ap.add_argument("--timeout", type=float, default=600, help="smoke: seconds for the job")
    args = ap.parse_args()
    if not args.coordinator_cli:
        args.coordinator_cli = args.hybridize
    print(f"coordinator binary: {args.coordinator_cli}; worker binary: {args.hybridize}")
    for tool in ("kubectl", "node"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not on PATH (scripts/setup installs what it can)")
            return 1
    if not os.path.isdir(os.path.join(HERE, "node_modules", "kubernetes-models")):
        print("error: tests/k8s/node_modules is missing: run `npm ci --prefix tests/k8s` "
              "(scripts/setup does)")
        return 1
    try:
        if args.mode == "check":
            check(args)
        elif args.mode == "selftest":
            selftest(args)
        else:
            if not args.tiny_job:
                ap.error("smoke needs --tiny-job")
            smoke(args)
    except Failure as e:
        print(f"FAILED: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
