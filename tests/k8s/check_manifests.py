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
      An MPIJob (overlays/mpijob, the MPI batch mode) is checked as the Kubeflow MPI Operator
      would run it: the operator's own validation rules; the pods it creates (its ssh key Secret,
      hostfile and environment added) mount what they name; the workers' sshd (run as the worker
      image's non-root user) uses the operator's key and the port the ssh clients, the container
      port and the readiness probe use (`ssh -G` parses the client configuration); mpirun's -np
      is Worker.replicas * slotsPerWorker, one GPU per slot, --bind-to none, its --mca settings
      exist (ompi_info), the variables it passes to the ranks (-x) are set and read by the
      binary, NCCL_NVLS_ENABLE=0 among them; the rank command is `hybridize run JOB --mpi
      --storage DIR` with flags `hybridize run --help` lists and the binary parses, the job file
      and DIR on the shared ReadWriteMany volume, mounted where the service's pods mount it; and
      a dry run of the local mpirun (--do-not-launch) with the operator's hostfile and
      environment accepts the command line and places one rank per slot on every worker.

  check_manifests.py selftest --hybridize BIN [--coordinator-cli BIN]
      Proves that `check` fails: copies k8s/, breaks it in one way at a time (a misspelt flag in
      the ConfigMap, an unknown field, a probe on a route the binary does not serve, a port it
      does not listen on, an environment variable it does not read, NVLink multicast on, a worker
      pointed at no Service; in the MPIJob an unknown field, -np not matching the workers, an
      unknown `run` flag, ...: BREAKAGES) and requires `check` to fail naming the problem.

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
import functools
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
# Claims that an overlay mounts without rendering them, and the overlay that creates them: the
# mpijob overlay runs in the service's namespace on the service's shared volume, which must
# outlive every MPIJob (docs/deploy-kubernetes.md).
OUT_OF_BAND_CLAIMS = {"mpijob": {"hybridize-storage": "prod"}}
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

    def __init__(self, objs, workload, index, sandbox, network, name=None, claims_elsewhere=()):
        self.objs = objs
        self.workload = workload
        self.spec = workload["spec"]["template"]["spec"]
        self.labels = workload["spec"]["template"]["metadata"].get("labels", {})
        self.namespace = workload["metadata"].get("namespace", "default")
        base = workload["metadata"]["name"]
        self.name = name or (f"{base}-{index}" if workload["kind"] == "StatefulSet"
                             else f"{base}-abcde")
        self.sandbox = sandbox
        self.network = network  # {"host:port" or "0.0.0.0:port": "127.0.0.1:port"}
        if len(self.spec["containers"]) != 1:
            raise Failure(f"{self.name}: expected one container per pod")
        self.container = self.spec["containers"][0]
        self.volume_dirs = {}
        for v in self.spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                if find(objs, "PersistentVolumeClaim", claim) is None and \
                        claim not in claims_elsewhere:
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
            local = self.volume_dirs[m["name"]][1]
            self.mounts.append((m["mountPath"], os.path.join(local, m["subPath"])
                                if m.get("subPath") else local))
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
                values = {"metadata.name": self.name, "metadata.namespace": self.namespace,
                          "status.podIP": "127.0.0.1"}  # local processes: loopback
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


@functools.lru_cache(maxsize=None)
def help_text(binary, *command):
    """`hybridize [COMMAND] --help`, asked once per binary (the selftest checks many copies of
    k8s/ with the same binary)."""
    return subprocess.run([binary, *command, "--help"], capture_output=True, text=True).stdout


def binary_for(pod, args):
    return args.coordinator_cli if pod.container["command"][1] == "serve" else args.hybridize


def check_overlay(objs, overlay, args, workdir, rendered):
    name = os.path.basename(overlay)
    services = [o for o in objs if o["kind"] == "Service"]
    workloads = [o for o in objs if o["kind"] in WORKLOAD_KINDS]
    mpijobs = [o for o in objs if o["kind"] == "MPIJob"]
    if not workloads and not mpijobs:
        raise Failure(f"overlay {name}: no workloads")
    for job in mpijobs:
        check_mpijob(objs, job, name, args, workdir, rendered)
    commands = help_text(args.hybridize)
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


# --- The MPI batch mode: an MPIJob of the Kubeflow MPI Operator (kubeflow.org/v2beta1) ----------
#
# The operator turns an MPIJob into pods: one per Worker replica (sshd) and a launcher Job
# (mpirun), which starts the ranks on the workers over ssh. What it adds to the pod templates and
# which specs it refuses are modelled here from its source, kubeflow/mpi-operator at caa3c47f (the
# commit of schemas/kubeflow.org_mpijobs.yaml): pkg/controller/mpi_job_controller.go (newWorker,
# newLauncherPodTemplate, setupSSHOnPod, newConfigMap) and pkg/apis/kubeflow/validation/
# validation.go. The checks then look at the pods it would create.

# The operator's Secret keys of the job's ssh key pair, and the files it mounts them as.
MPI_SSH_ITEMS = [("ssh-privatekey", "id_rsa"), ("ssh-publickey", "id_rsa.pub"),
                 ("ssh-publickey", "authorized_keys")]
# The environment of the ranks that is not the job's business: variables of the process itself.
# The worker image's CUDA base (nvidia/cuda) sets both; LD_LIBRARY_PATH finds the driver's
# libraries where some clusters mount them (GKE: /usr/local/nvidia).
IMAGE_ENV = {"PATH": "/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:"
                     "/usr/sbin:/usr/bin:/sbin:/bin",
             "LD_LIBRARY_PATH": "/usr/local/nvidia/lib:/usr/local/nvidia/lib64"}
# mpirun (OpenMPI 4.1) options the check knows, with the number of values each takes; anything
# else fails until it is added here (after reading `mpirun --help`). The dry run of mpirun below
# then asks mpirun itself.
MPIRUN_OPTIONS = {
    "-np": 1, "-n": 1, "--np": 1, "-c": 1, "--bind-to": 1, "-bind-to": 1, "--map-by": 1,
    "-map-by": 1, "--rank-by": 1, "-rank-by": 1, "--mca": 2, "-mca": 2, "-x": 1, "--wdir": 1,
    "-wdir": 1, "--display-map": 0, "--report-bindings": 0, "--tag-output": 0,
    "--timestamp-output": 0, "--output-filename": 1, "--oversubscribe": 0, "--verbose": 0,
    "-v": 0,
}
MPIRUN_RANKS = ("-np", "-n", "--np", "-c")


def worker_image_user():
    """uid, name, home and shell of the user that docker/worker.Dockerfile creates."""
    path = os.path.join(ROOT, "docker", "worker.Dockerfile")
    text = open(path).read().replace("\\\n", " ")
    m = re.search(r"\buseradd\s+([^&;\n]*)", text)
    if not m:
        raise Failure(f"{path}: no useradd")
    words = m.group(1).split()
    user = {"name": words[-1]}
    for flag, key in (("--uid", "uid"), ("--home-dir", "home"), ("--shell", "shell")):
        if flag in words:
            user[key] = words[words.index(flag) + 1]
    if "uid" not in user:
        raise Failure(f"{path}: useradd without --uid")
    user["uid"] = int(user["uid"])
    user.setdefault("home", f"/home/{user['name']}")
    user.setdefault("shell", "/bin/sh")
    return user


def mpi_operator_refusals(job):
    """Why the operator's validation (validation.go) refuses `job` after its defaults
    (default.go); empty when it accepts it."""
    spec = job.get("spec", {})
    name = job["metadata"]["name"]
    specs = spec.get("mpiReplicaSpecs") or {}
    refusals = []
    worker = specs.get("Worker")
    host = f"{name}-worker-{max((worker or {}).get('replicas', 0), 1) - 1}"
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", host):
        refusals.append(f"metadata.name: its pods' host name {host} is not a DNS-1035 label")
    if "Launcher" not in specs:
        refusals.append("mpiReplicaSpecs.Launcher: required")
    for role, rs in specs.items():
        if role not in ("Launcher", "Worker"):
            continue  # ignored by the operator; check_mpijob refuses it
        restart = rs.get("restartPolicy", "OnFailure" if role == "Launcher" else "Never")
        if restart not in ("Never", "OnFailure"):
            refusals.append(f"mpiReplicaSpecs.{role}.restartPolicy: {restart} is not supported "
                            f"(Never, OnFailure)")
        if not rs.get("template", {}).get("spec", {}).get("containers"):
            refusals.append(f"mpiReplicaSpecs.{role}.template.spec.containers: required")
        replicas = rs.get("replicas", 1 if role == "Launcher" else 0)
        if role == "Launcher" and replicas != 1:
            refusals.append(f"mpiReplicaSpecs.Launcher.replicas: {replicas}, must be 1")
        if role == "Worker" and replicas <= 0:
            refusals.append(f"mpiReplicaSpecs.Worker.replicas: {replicas}, must be at least 1")
    if spec.get("slotsPerWorker", 1) < 0:
        refusals.append("slotsPerWorker: must be non-negative")
    if spec.get("sshAuthMountPath", "/root/.ssh") == "":
        refusals.append("sshAuthMountPath: required")
    policy = spec.get("runPolicy", {})
    if policy.get("cleanPodPolicy", "None") not in ("None", "Running", "All"):
        refusals.append(f"runPolicy.cleanPodPolicy: {policy['cleanPodPolicy']} is not supported "
                        f"(None, Running, All)")
    for field in ("ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit"):
        if policy.get(field, 0) < 0:
            refusals.append(f"runPolicy.{field}: must be non-negative")
    if policy.get("managedBy", "kubeflow.org/mpi-operator") not in (
            "kubeflow.org/mpi-operator", "kueue.x-k8s.io/multikueue"):
        refusals.append(f"runPolicy.managedBy: {policy['managedBy']} is not supported")
    # Not validated by the operator, but any other value makes the launcher wait for ready
    # workers as WaitForWorkersReady does (the controller compares with AtStartup only).
    if spec.get("launcherCreationPolicy", "AtStartup") not in ("AtStartup", "WaitForWorkersReady"):
        refusals.append(f"launcherCreationPolicy: {spec['launcherCreationPolicy']} is neither "
                        f"AtStartup nor WaitForWorkersReady")
    return refusals


def mpi_operator_pods(job):
    """What the operator creates for a run of `job`: (the Secret and ConfigMap its pods mount,
    {role: the pod template as the operator completes it}, [the hostfile's host names])."""
    spec = job["spec"]
    name = job["metadata"]["name"]
    namespace = job["metadata"].get("namespace", "default")
    slots = spec.get("slotsPerWorker", 1)
    launcher_ranks = spec.get("runLauncherAsWorker", False)
    ssh_path = spec.get("sshAuthMountPath", "/root/.ssh")
    replicas = spec["mpiReplicaSpecs"].get("Worker", {}).get("replicas", 0)
    hosts = ([f"{name}-launcher"] if launcher_ranks else []) + \
        [f"{name}-worker-{i}" for i in range(replicas)]
    hosts = [f"{h}.{name}.{namespace}.svc" for h in hosts]
    created = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-ssh"},
         "stringData": {"ssh-privatekey": "(the job's private key)",
                        "ssh-publickey": "(the job's public key)"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-config"},
         "data": {"hostfile": "".join(f"{h} slots={slots}\n" for h in hosts)}},
    ]
    pods = {}
    for role, rs in spec["mpiReplicaSpecs"].items():
        t = json.loads(json.dumps(rs["template"]))
        t.setdefault("metadata", {}).setdefault("labels", {}).update({
            "training.kubeflow.org/operator-name": "mpi-operator",
            "training.kubeflow.org/job-name": name,
            "training.kubeflow.org/job-role": role.lower()})
        ps = t["spec"]
        c = ps["containers"][0]
        env = c.setdefault("env", [])
        volumes = ps.setdefault("volumes", [])
        mounts = c.setdefault("volumeMounts", [])
        if role == "Worker":
            if not c.get("command") and not c.get("args"):
                c["command"] = ["/usr/sbin/sshd", "-De"]
            env.append({"name": "K_MPI_JOB_ROLE", "value": "worker"})
        else:
            env += [{"name": "K_MPI_JOB_ROLE", "value": "launcher"},
                    {"name": "OMPI_MCA_orte_keep_fqdn_hostnames", "value": "true"},
                    {"name": "OMPI_MCA_orte_default_hostfile", "value": "/etc/mpi/hostfile"},
                    {"name": "OMPI_MCA_plm_rsh_args", "value": "-o ConnectionAttempts=10"},
                    {"name": "OMPI_MCA_orte_set_default_slots", "value": str(slots)}]
            if not launcher_ranks:
                env += [{"name": "NVIDIA_VISIBLE_DEVICES", "value": ""},
                        {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": ""}]
            volumes.append({"name": "mpi-job-config", "configMap": {
                "name": f"{name}-config", "items": [{"key": "hostfile", "path": "hostfile"}]}})
            mounts.append({"name": "mpi-job-config", "mountPath": "/etc/mpi"})
        volumes.append({"name": "ssh-auth", "secret": {
            "secretName": f"{name}-ssh",
            "items": [{"key": k, "path": p} for k, p in MPI_SSH_ITEMS]}})
        mounts.append({"name": "ssh-auth", "mountPath": ssh_path})
        pods[role] = t
    return created, pods, hosts


def split_mpirun(argv, where):
    """mpirun's argv -> ({option: [values, ...] per use}, the program's argv)."""
    options = {}
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        if opt not in MPIRUN_OPTIONS:
            raise Failure(f"{where}: mpirun option {opt} is not one this check knows "
                          f"(MPIRUN_OPTIONS in tests/k8s/check_manifests.py; see mpirun --help)")
        n = MPIRUN_OPTIONS[opt]
        if i + n >= len(argv):
            raise Failure(f"{where}: mpirun option {opt} needs {n} value(s)")
        options.setdefault(opt, []).append(argv[i + 1:i + 1 + n])
        i += 1 + n
    return options, argv[i:]


def command_flags(binary, command):
    """{flag: takes a value} from `hybridize COMMAND --help`'s flags section."""
    flags = {}
    for m in re.finditer(r"^\s+--([\w-]+)( [A-Z][\w.<>/|-]*)?\s", help_text(binary, command),
                         re.M):
        flags[m.group(1)] = bool(m.group(2))
    if not flags:
        raise Failure(f"`{binary} {command} --help` lists no flags")
    return flags


def parse_run_args(args, flags, where):
    """`hybridize run` arguments -> (job file, {flag: value or True})."""
    job = None
    given = {}
    rest = list(args)
    if rest and not rest[0].startswith("-"):
        job = rest.pop(0)  # the job file may come first, as a positional argument
    while rest:
        a = rest.pop(0)
        if not a.startswith("--"):
            raise Failure(f"{where}: `hybridize run` takes one positional argument (the job "
                          f"file, first); '{a}' is another")
        name, eq, value = a[2:].partition("=")
        if name not in flags:
            raise Failure(f"{where}: `hybridize run` has no flag --{name} (its flags: "
                          f"{', '.join('--' + f for f in sorted(flags))})")
        if flags[name] and not eq:
            if not rest or rest[0].startswith("--"):
                raise Failure(f"{where}: --{name} needs a value")
            value = rest.pop(0)
        elif not flags[name] and eq:
            raise Failure(f"{where}: --{name} takes no value")
        given[name] = value if flags[name] else True
    if "job" in given:
        job = given.pop("job")
    if not job:
        raise Failure(f"{where}: `hybridize run` is given no job file")
    return job, given


def sshd_settings(text):
    """sshd_config keywords (lower case) -> values; the first one of a keyword wins, as in sshd,
    except HostKey, which may repeat."""
    settings = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        key = words[0].lower()
        if key == "match":
            break
        if key == "hostkey":
            settings.setdefault(key, []).append(words[1])
        else:
            settings.setdefault(key, words[1:])
    return settings


def mount_of(container, path):
    """The volumeMount that holds `path` in `container` (the longest mountPath), or None."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (best is None or
                                                          len(mp) > len(best["mountPath"])):
            best = m
    return best


def volume_of(template, mount):
    return next(v for v in template["spec"].get("volumes", []) if v["name"] == mount["name"])


def configmap_file(objs, template, container, path):
    """The text of the file at `path` in `container` when a ConfigMap volume holds it (as
    rendered, container paths unmapped), or None."""
    m = mount_of(container, path)
    if m is None or "configMap" not in volume_of(template, m):
        return None
    volume = volume_of(template, m)["configMap"]
    cm = find(objs, "ConfigMap", volume["name"])
    rel = os.path.relpath(path, m["mountPath"])
    rel = m["subPath"] if m.get("subPath") and rel == "." else os.path.join(m.get("subPath", ""),
                                                                           rel)
    items = volume.get("items") or [{"key": k, "path": k} for k in (cm or {}).get("data", {})]
    key = next((it["key"] for it in items if os.path.normpath(it["path"]) == rel), None)
    return None if cm is None or key is None else cm["data"].get(key)


def writable_dir(template, container, path):
    m = mount_of(container, path)
    if m is None:
        return not container.get("securityContext", {}).get("readOnlyRootFilesystem", False)
    v = volume_of(template, m)
    return not m.get("readOnly") and ("emptyDir" in v or "persistentVolumeClaim" in v)


@functools.lru_cache(maxsize=None)
def ompi_mca():
    """(every MCA parameter name, {framework: its components}) of the local OpenMPI."""
    r = subprocess.run(["ompi_info", "--parsable", "--all", "--level", "9"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise Failure(f"ompi_info failed: {r.stderr}")
    params, components = set(), {}
    for line in r.stdout.splitlines():
        f = line.split(":")
        if len(f) > 5 and f[0] == "mca" and f[3] == "param":
            params.add(f[4])
        elif len(f) > 3 and f[0] == "mca" and f[3] == "version":
            components.setdefault(f[1], set()).add(f[2])
    return params, components


def check_mpijob(objs, job, overlay, args, workdir, rendered):
    name = job["metadata"]["name"]
    where = f"overlay {overlay}: MPIJob/{name}"
    refusals = mpi_operator_refusals(job)
    if refusals:
        raise Failure(f"{where}: the MPI Operator refuses it: {'; '.join(refusals)}")
    spec = job["spec"]
    if spec.get("mpiImplementation", "OpenMPI") != "OpenMPI":
        raise Failure(f"{where}: mpiImplementation must be OpenMPI, the MPI of the worker image")
    if spec.get("runPolicy", {}).get("cleanPodPolicy", "None") == "None":
        raise Failure(f"{where}: runPolicy.cleanPodPolicy None keeps the workers (sshd never "
                      f"exits) and their GPUs after the job; use Running or All")
    for role in spec["mpiReplicaSpecs"]:
        if role not in ("Launcher", "Worker"):
            raise Failure(f"{where}: mpiReplicaSpecs.{role}: the operator ignores it (it knows "
                          f"Launcher and Worker)")
    if "Worker" not in spec["mpiReplicaSpecs"]:
        raise Failure(f"{where}: no Worker replicas")
    slots = spec.get("slotsPerWorker", 1)
    ssh_path = spec.get("sshAuthMountPath", "/root/.ssh")
    created, templates, hosts = mpi_operator_pods(job)
    roles = {"Launcher": "launcher", "Worker": "worker"}
    for role, t in templates.items():
        c = t["spec"]["containers"][0]
        for what, items in (("volume", [v["name"] for v in t["spec"]["volumes"]]),
                            ("mountPath", [m["mountPath"] for m in c["volumeMounts"]])):
            dup = sorted({x for x in items if items.count(x) > 1})
            if dup:
                raise Failure(f"{where}: {role}: {what} {dup[0]} twice in the pod the operator "
                              f"creates (it adds ssh-auth at sshAuthMountPath, and "
                              f"mpi-job-config at /etc/mpi to the launcher)")
    # The shared volume: from this overlay, or from the one that creates it.
    claims = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PersistentVolumeClaim"}
    for claim, other in OUT_OF_BAND_CLAIMS.get(overlay, {}).items():
        pvc = find(rendered.get(other, []), "PersistentVolumeClaim", claim)
        if pvc is None or pvc["metadata"].get("namespace") != job["metadata"].get("namespace"):
            raise Failure(f"{where}: claim {claim} should come from overlay {other}, which does "
                          f"not render it in namespace {job['metadata'].get('namespace')}")
        claims[claim] = pvc
    sandbox = os.path.join(workdir, overlay)
    pods = {role: Pod(objs + created, {"kind": "Pod", "metadata": job["metadata"],
                                       "spec": {"template": t}}, 0, sandbox, {},
                      name=f"{name}-{roles[role]}{'-0' if role == 'Worker' else ''}",
                      claims_elsewhere=claims)
            for role, t in templates.items()}
    launcher, worker = pods["Launcher"], pods["Worker"]
    launcher_ranks = spec.get("runLauncherAsWorker", False)
    rank_roles = (["Launcher"] if launcher_ranks else []) + ["Worker"]

    # The image's user: sshd lets only its own user in, the key sits in that user's home.
    user = worker_image_user()
    if ssh_path != user["home"] + "/.ssh":
        raise Failure(f"{where}: sshAuthMountPath {ssh_path} is not ~/.ssh of the worker "
                      f"image's user {user['name']} ({user['home']}, docker/worker.Dockerfile)")
    if os.path.basename(user["shell"]) in ("nologin", "false"):
        raise Failure(f"{where}: the worker image's user has the shell {user['shell']}: sshd "
                      f"runs OpenMPI's daemons through the login shell")
    for role, t in templates.items():
        c = t["spec"]["containers"][0]
        sc = {**t["spec"].get("securityContext", {}), **c.get("securityContext", {})}
        if sc.get("runAsUser") != user["uid"] or not sc.get("runAsNonRoot"):
            raise Failure(f"{where}: {role} must run as non-root uid {user['uid']}, the worker "
                          f"image's user, which sshd lets in (runAsUser {sc.get('runAsUser')})")
        if not writable_dir(t, c, "/tmp"):
            raise Failure(f"{where}: {role}: /tmp is not writable (OpenMPI's session directory)")

    # sshd on the workers.
    wc = worker.container
    sshd = wc.get("command", []) + wc.get("args", [])
    if not sshd or sshd[0] != "/usr/sbin/sshd":
        raise Failure(f"{where}: Worker runs {sshd[:1]}, not /usr/sbin/sshd (by its absolute "
                      f"path, which sshd needs to re-execute itself)")
    if not any(re.fullmatch(r"-[a-zA-Z]*D[a-zA-Z]*", a) for a in sshd[1:]):
        raise Failure(f"{where}: Worker's sshd needs -D (stay in the foreground as the "
                      f"container's process)")
    if "-f" not in sshd:
        raise Failure(f"{where}: Worker's sshd needs -f CONFIG (the image's default "
                      f"configuration is for a root sshd)")
    config_path = sshd[sshd.index("-f") + 1]
    text = configmap_file(objs, templates["Worker"], wc, config_path)
    if text is None:
        raise Failure(f"{where}: Worker's sshd config {config_path} is in no mounted ConfigMap")
    sshd_conf = sshd_settings(text)
    port = int(sshd_conf.get("port", ["22"])[0])
    if port < 1024:
        raise Failure(f"{where}: sshd_config Port {port}: a non-root sshd cannot bind it")
    for key in sshd_conf.get("hostkey", []):
        if key != f"{ssh_path}/id_rsa":
            raise Failure(f"{where}: sshd_config HostKey {key}: the key the operator mounts "
                          f"is {ssh_path}/id_rsa")
    if not sshd_conf.get("hostkey"):
        raise Failure(f"{where}: sshd_config has no HostKey (the image's host keys are root's)")
    auth = sshd_conf.get("authorizedkeysfile", [".ssh/authorized_keys"])
    auth = [a if a.startswith("/") else f"{user['home']}/{a}" for a in auth]
    if f"{ssh_path}/authorized_keys" not in auth:
        raise Failure(f"{where}: sshd_config AuthorizedKeysFile {auth} misses "
                      f"{ssh_path}/authorized_keys, which the operator mounts")
    pid = sshd_conf.get("pidfile", ["/run/sshd.pid"])[0]
    if pid != "none" and not writable_dir(templates["Worker"], wc, os.path.dirname(pid)):
        raise Failure(f"{where}: sshd_config PidFile {pid} is not on a writable volume")
    allow = sshd_conf.get("allowusers")
    if allow is not None and user["name"] not in allow:
        raise Failure(f"{where}: sshd_config AllowUsers {allow} shuts out {user['name']}")
    ports = {p["containerPort"]: p.get("name") for p in wc.get("ports", [])}
    if port not in ports:
        raise Failure(f"{where}: sshd listens on {port} but the Worker's containerPorts are "
                      f"{sorted(ports)}")
    probe = wc.get("readinessProbe", {}).get("tcpSocket", {}).get("port")
    probe = {n: p for p, n in ports.items() if n}.get(probe, probe)
    if spec.get("launcherCreationPolicy") == "WaitForWorkersReady" and probe != port:
        raise Failure(f"{where}: launcherCreationPolicy WaitForWorkersReady needs a Worker "
                      f"readinessProbe on sshd's port {port} (tcpSocket), not {probe}")

    # The ssh client of mpirun and of OpenMPI's daemons (which start further daemons in a tree).
    for role, pod in pods.items():
        confs = [m for m in pod.container.get("volumeMounts", [])
                 if re.fullmatch(r"/etc/ssh/ssh_config\.d/[^/]+\.conf", m["mountPath"])]
        if not confs:
            raise Failure(f"{where}: {role} mounts no ssh client configuration at "
                          f"/etc/ssh/ssh_config.d/*.conf")
        for m in confs:
            text = configmap_file(objs, templates[role], pod.container, m["mountPath"])
            if text is None:
                raise Failure(f"{where}: {role}: {m['mountPath']} is in no ConfigMap")
            conf = os.path.join(sandbox, f"{role}-ssh_config")
            with open(conf, "w") as f:
                f.write(text)
            r = subprocess.run(["ssh", "-G", "-F", conf, hosts[-1]], capture_output=True,
                               text=True)
            if r.returncode != 0:
                raise Failure(f"{where}: {role}: ssh rejects {m['mountPath']}: {r.stderr}")
            got = {}
            for line in r.stdout.splitlines():
                k, _, v = line.partition(" ")
                got.setdefault(k, []).append(v)
            if got.get("port") != [str(port)]:
                raise Failure(f"{where}: {role}: ssh connects to port {got.get('port')}, sshd "
                              f"listens on {port}")
            if f"{ssh_path}/id_rsa" not in got.get("identityfile", []):
                raise Failure(f"{where}: {role}: ssh's IdentityFile {got.get('identityfile')} "
                              f"is not the operator's key {ssh_path}/id_rsa")
            if got.get("stricthostkeychecking") not in (["false"], ["accept-new"]):
                raise Failure(f"{where}: {role}: StrictHostKeyChecking must be no (the host key "
                              f"is new for every job; nothing can confirm it)")

    # The ranks' pods: one GPU per slot, NCCL's /dev/shm, NVLS off.
    for role in rank_roles:
        pod = pods[role]
        gpus = pod.container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if gpus != slots:
            raise Failure(f"{where}: {role} has nvidia.com/gpu {gpus} but slotsPerWorker "
                          f"{slots}: one rank per GPU")
        shm = mount_of(pod.container, "/dev/shm")
        if shm is None or shm["mountPath"] != "/dev/shm" or \
                volume_of(templates[role], shm).get("emptyDir", {}).get("medium") != "Memory":
            raise Failure(f"{where}: {role}: /dev/shm must be a memory emptyDir (NCCL)")
        if pod.env.get("NCCL_NVLS_ENABLE") != "0":
            raise Failure(f"{where}: {role}: NCCL_NVLS_ENABLE must be \"0\"")
    if not launcher_ranks and launcher.container.get("resources", {}).get("limits", {}).get(
            "nvidia.com/gpu"):
        raise Failure(f"{where}: the launcher runs no rank but asks for a GPU")

    # mpirun.
    argv = launcher.container.get("command", []) + launcher.container.get("args", [])
    if not argv or os.path.basename(argv[0]) not in ("mpirun", "mpiexec", "orterun"):
        raise Failure(f"{where}: the launcher runs {argv[:1]}, not mpirun")
    options, program = split_mpirun(argv, where)
    ranks = [int(v[0]) for o in MPIRUN_RANKS for v in options.get(o, [])]
    expected = slots * (spec["mpiReplicaSpecs"]["Worker"]["replicas"] + int(launcher_ranks))
    if ranks != [expected]:
        raise Failure(f"{where}: mpirun -np {ranks[0] if ranks else '(none)'} but "
                      f"Worker.replicas * slotsPerWorker{' + launcher' if launcher_ranks else ''}"
                      f" is {expected}: one rank per GPU")
    if [v[0] for v in options.get("--bind-to", []) + options.get("-bind-to", [])] != ["none"]:
        raise Failure(f"{where}: mpirun needs --bind-to none (OpenMPI binds a rank to one core "
                      f"by default; a rank's LibTorch threads need the pod's CPUs)")
    params, components = ompi_mca()
    for name_, value in options.get("--mca", []) + options.get("-mca", []):
        if name_ not in params:
            raise Failure(f"{where}: --mca {name_}: no such OpenMPI parameter (ompi_info)")
        if name_ in components:
            for comp in value.lstrip("^").split(","):
                if comp not in components[name_]:
                    raise Failure(f"{where}: --mca {name_} {value}: {comp} is not a {name_} "
                                  f"component ({', '.join(sorted(components[name_]))})")
    for e in launcher.env:
        if e.startswith("OMPI_MCA_") and e[len("OMPI_MCA_"):] not in params:
            raise Failure(f"{where}: launcher env {e}: no such OpenMPI parameter")
    # The ranks' environment: what mpirun passes from the launcher's (-x); ranks started over
    # ssh do not see the workers' container environment.
    launcher_env = {**IMAGE_ENV, **launcher.env}
    rank_env = {}
    for (x,) in options.get("-x", []):
        var, eq, value = x.partition("=")
        if not eq and var not in launcher_env:
            raise Failure(f"{where}: mpirun -x {var}: the launcher has no {var}")
        rank_env[var] = value if eq else launcher_env[var]
    for var in launcher.env:
        if var not in rank_env and not var.startswith("OMPI_") and var not in (
                "K_MPI_JOB_ROLE", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"):
            raise Failure(f"{where}: launcher env {var} reaches no rank (mpirun -x {var}) and "
                          f"mpirun does not read it")
    if rank_env.get("NCCL_NVLS_ENABLE") != "0":
        raise Failure(f"{where}: the ranks' NCCL_NVLS_ENABLE is {rank_env.get('NCCL_NVLS_ENABLE')}"
                      f" (mpirun -x NCCL_NVLS_ENABLE with \"0\" on the launcher)")
    top = help_text(args.hybridize)
    env_section = top.split("Environment:", 1)[1] if "Environment:" in top else ""
    reads = set(re.findall(r"\bHYB_[A-Z_]+\b", env_section))
    libraries = linked_library_variables(args.hybridize)
    for var in rank_env:
        if var in reads or var in IMAGE_ENV or any(
                var == p or (p.endswith("*") and var.startswith(p[:-1])) for p in libraries):
            continue
        raise Failure(f"{where}: mpirun -x {var}: not read by `hybridize run` (it reads "
                      f"{sorted(reads)}; its libraries {libraries})")

    # The rank command: `hybridize run JOB.json --mpi --storage DIR`, on the shared volume.
    if len(program) < 2 or os.path.basename(program[0]) != "hybridize" or program[1] != "run":
        raise Failure(f"{where}: mpirun starts {program[:2]}, not `hybridize run`")
    job_file, given = parse_run_args(program[2:], command_flags(args.hybridize, "run"), where)
    if "mpi" not in given:
        raise Failure(f"{where}: `hybridize run` without --mpi: every rank would run the whole "
                      f"job by itself")
    if "storage" not in given:
        raise Failure(f"{where}: `hybridize run` without --storage writes into the working "
                      f"directory, not the shared volume")
    for role in rank_roles:
        t = templates[role]
        for what, path in (("the job file", job_file), ("--storage", given["storage"])):
            m = mount_of(pods[role].container, path) if path.startswith("/") else None
            v = volume_of(t, m) if m else {}
            claim = claims.get(v.get("persistentVolumeClaim", {}).get("claimName"))
            if claim is None or "ReadWriteMany" not in claim["spec"].get("accessModes", []):
                raise Failure(f"{where}: {role}: {what} {path} is not on a ReadWriteMany "
                              f"volume that every rank mounts")
            if what == "--storage" and path.rstrip("/") == m["mountPath"].rstrip("/"):
                raise Failure(f"{where}: --storage {path} is the service's storage root, where "
                              f"the coordinator keeps its jobs' directories; use a directory "
                              f"under it")
            # Mounted where every other pod of the deployment mounts the same claim.
            for other, objects in rendered.items():
                for w in (o for o in objects if o["kind"] in WORKLOAD_KINDS):
                    ts = w["spec"]["template"]["spec"]
                    vols = {x["name"] for x in ts.get("volumes", []) if x.get(
                        "persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]}
                    for oc in ts["containers"]:
                        for om in oc.get("volumeMounts", []):
                            if om["name"] in vols and om["mountPath"] != m["mountPath"]:
                                raise Failure(f"{where}: {role} mounts {claim['metadata']['name']}"
                                              f" at {m['mountPath']}, {other}'s "
                                              f"{w['metadata']['name']} at {om['mountPath']}")
    probe_argv = [args.hybridize] + program[1:] + ["--help"]
    r = subprocess.run(probe_argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise Failure(f"{where}: {' '.join(probe_argv)}\nexit {r.returncode}: {r.stderr}")

    # mpirun's own dry run, with the hostfile and environment the operator gives the launcher:
    # it parses its options, maps the ranks onto the workers and stops before starting anything.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "HYB_", "NCCL_"))}
    env.update({k: launcher.map_text(v) for k, v in launcher_env.items() if k != "PATH"})
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    dry = ["mpirun", "--do-not-launch", "--display-map"] + argv[1:]
    r = subprocess.run(dry, capture_output=True, text=True, env=env, timeout=60)
    output = r.stdout + r.stderr
    if r.returncode != 0 or "could not find environment variable" in output:
        raise Failure(f"{where}: {' '.join(dry)}\nexit {r.returncode}:\n{output[-3000:]}")
    placed = {}
    node = None
    for line in r.stdout.splitlines():
        m = re.search(r"Data for node: (\S+)", line)
        if m:
            node = m.group(1)
        m = re.search(r"Process rank: (\d+)", line)
        if m:
            placed.setdefault(node, []).append(int(m.group(1)))
    if sorted(placed) != sorted(hosts) or any(len(v) != slots for v in placed.values()) or \
            sorted(sum(placed.values(), [])) != list(range(expected)):
        raise Failure(f"{where}: mpirun places the ranks as {placed}, not {slots} on each of "
                      f"{hosts}")

    # The pods of the job reach each other on every port (ssh, MPI, NCCL). NetworkPolicies of
    # the namespace add up: a pod that some policy selects takes what any of them admits. The
    # namespace's policies are this overlay's and those of the overlay that owns the volume.
    labels = [templates[role]["metadata"]["labels"] for role in templates]
    namespace = job["metadata"].get("namespace")
    policies = [o for o in objs + sum((rendered.get(other, []) for other in OUT_OF_BAND_CLAIMS.get(
        overlay, {}).values()), []) if o["kind"] == "NetworkPolicy" and
        o["metadata"].get("namespace") == namespace and
        "Ingress" in o["spec"].get("policyTypes", ["Ingress"])]

    def admits_job(policy):
        return any(not rule.get("ports") and any(
            "namespaceSelector" not in f and "podSelector" in f and
            all(selects(f["podSelector"].get("matchLabels"), lb) for lb in labels)
            for f in rule.get("from", [])) for rule in policy["spec"].get("ingress", []))

    for role, lb in zip(templates, labels):
        selecting = [p for p in policies
                     if selects(p["spec"].get("podSelector", {}).get("matchLabels"), lb)]
        if selecting and not any(admits_job(p) for p in selecting):
            raise Failure(f"{where}: NetworkPolicies {[p['metadata']['name'] for p in selecting]}"
                          f" isolate the {role} without letting the job's pods reach it on "
                          f"every port")
    print(f"{where}: the MPI Operator accepts it; mpirun -np {expected} starts `hybridize "
          f"{' '.join(program[1:])}` on {len(placed)} pods (dry run); sshd on port {port} as "
          f"uid {user['uid']}")


@functools.lru_cache(maxsize=None)
def linked_library_variables(binary):
    """The environment variables of the libraries `binary` links (NCCL_*, ...), as its
    `worker --check-config` lists them, asked with a throwaway configuration."""
    d = tempfile.mkdtemp(prefix="hyb-k8s-libraries-")
    try:
        with open(os.path.join(d, "token"), "w") as f:
            f.write("x")
        r = subprocess.run([binary, "worker", "--coordinator", "http://127.0.0.1:9", "--storage",
                            d, "--token-file", os.path.join(d, "token"), "--id", "x",
                            "--check-config"], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if not k.startswith("HYB_")})
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if r.returncode != 0:
        raise Failure(f"hybridize worker --check-config: exit {r.returncode}: {r.stderr}")
    return tuple(json.loads(r.stdout)["environment"].get("libraries", []))


def check(args, k8s=K8S):
    workdir = tempfile.mkdtemp(prefix="hyb-k8s-check-")
    try:
        overlays = sorted(os.path.join(k8s, "overlays", d)
                          for d in os.listdir(os.path.join(k8s, "overlays")))
        rendered = {os.path.basename(o): render(o, workdir) for o in overlays}
        for overlay in overlays:
            check_overlay(rendered[os.path.basename(overlay)], overlay, args, workdir, rendered)
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
    # The MPIJob: its CRD schema, strictly; its pod templates as Kubernetes pod templates; the
    # operator's own rules; mpirun's ranks, options and environment; the rank command; sshd.
    ("overlays/mpijob/mpijob.yaml", "slotsPerWorker: 1", "slotPerWorker: 1",
     "MPIJob/hybridize-batch: /spec/slotPerWorker: field not in the schema"),
    ("overlays/mpijob/mpijob.yaml", "tcpSocket:", "tcpSockets:",
     "tcpSockets: field not in the schema (IoK8sApiCoreV1PodTemplateSpec)"),
    ("overlays/mpijob/mpijob.yaml", "restartPolicy: Never", "restartPolicy: Always",
     "the MPI Operator refuses it: mpiReplicaSpecs.Launcher.restartPolicy: Always"),
    ("overlays/mpijob/mpijob.yaml", '- -np\n                - "4"', '- -np\n                - "3"',
     "mpirun -np 3 but Worker.replicas * slotsPerWorker is 4"),
    ("overlays/mpijob/mpijob.yaml", "- --mpi\n", "- --mpi-mode\n",
     "`hybridize run` has no flag --mpi-mode"),
    ("overlays/mpijob/mpijob.yaml", "- --mpi\n", "- --validate-only\n",
     "`hybridize run` without --mpi"),
    ("overlays/mpijob/mpijob.yaml", "- /data/hybridize/batch\n", "- /tmp/batch\n",
     "--storage /tmp/batch is not on a ReadWriteMany volume"),
    ("overlays/mpijob/mpijob.yaml", "- self,tcp", "- self,tpc",
     "--mca btl self,tpc: tpc is not a btl component"),
    ("overlays/mpijob/mpijob.yaml", "- slot\n", "- slots\n",
     "The specified mapping policy is not recognized"),
    ("overlays/mpijob/mpijob.yaml", 'value: "0"', 'value: "1"',
     "the ranks' NCCL_NVLS_ENABLE is 1"),
    ("overlays/mpijob/mpijob.yaml", "sshAuthMountPath: /home/hybridize/.ssh",
     "sshAuthMountPath: /root/.ssh", "sshAuthMountPath /root/.ssh is not ~/.ssh"),
    ("overlays/mpijob/sshd_config", "Port 2222", "Port 2223",
     "sshd listens on 2223 but the Worker's containerPorts are [2222]"),
    ("overlays/mpijob/ssh_config", "Port 2222", "Port 22",
     "ssh connects to port ['22'], sshd listens on 2222"),
    ("overlays/mpijob/network-policy.yaml", "        - podSelector:\n            matchLabels:\n"
     "              training.kubeflow.org/job-name: hybridize-batch",
     "        - podSelector:\n            matchLabels:\n"
     "              training.kubeflow.org/job-name: hybridize-other",
     "isolate the Launcher without letting the job's pods reach it"),
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
    for tool in ("kubectl", "node", "mpirun", "ompi_info", "ssh"):
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
