#!/usr/bin/env python3
"""Measures the coordinator service on this machine, with real processes on loopback.

1. Candidates scored per minute by one worker and by two: the demo recall job (demo teacher,
   demo data) runs through `hybridize serve` with N workers. Distillation runs once (with one
   worker); the second job reuses its checkpoints, so both measure the search alone. The
   machine's cores are split between the workers (`--threads`): one worker uses them all, two
   use half each.
2. Status-route latency: while the first job distills, `service_load_bench` sends
   GET /v1/jobs/{id} from C concurrent clients, R requests each (bounded: it stops by itself).

Prints one JSON object per measurement and a summary. Needs the demo data
(`scripts/demo` or `python3 tools/build_demo_data.py --out out/demo-data ...` and
`hybridize prepare`, see scripts/demo) and a build with the `hybridize` and
`service_load_bench` targets.

    python3 bench/service_bench.py --build build [--clients 200] [--requests 50]
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def api(url, token, path, body=None):
    req = urllib.request.Request(url + path, data=None if body is None else body.encode(),
                                 method="GET" if body is None else "POST",
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def wait_state(url, token, job_id, states, timeout):
    start = time.time()
    while time.time() - start < timeout:
        job = api(url, token, "/v1/jobs/" + job_id)
        if job["state"] in states:
            return job
        time.sleep(0.5)
    raise SystemExit("timed out waiting for %s to reach %s" % (job_id, states))


def search_rate(url, token, job_id):
    """Candidates per minute from the job's events: fresh candidate evaluations between the
    first and the last candidate event (stored ones excluded)."""
    events = api(url, token, "/v1/jobs/%s/events?stream=false" % job_id)["events"]
    fresh = [e["time_ms"] / 1000 for e in events
             if e.get("event") == "evaluated" and e.get("split") == "validation"]
    start = [e["time_ms"] / 1000 for e in events
             if e.get("event") == "phase" and e.get("phase") == "searching"]
    if len(fresh) < 2 or not start:
        return None
    # From the searching phase's start to the last validation result (the teacher's included).
    minutes = (max(fresh) - start[0]) / 60
    return {"candidates": len(fresh), "minutes": round(minutes, 2),
            "candidates_per_minute": round(len(fresh) / minutes, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default="build")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--job", default=os.path.join(ROOT, "configs/demo-recall.json"))
    a = p.parse_args()
    hyb = os.path.abspath(os.path.join(a.build, "cli/hybridize"))
    load = os.path.abspath(os.path.join(a.build, "bench/service_load_bench"))
    for f in (hyb, load):
        if not os.path.exists(f):
            raise SystemExit("missing %s: build the hybridize and service_load_bench targets" % f)
    work = tempfile.mkdtemp(prefix="hyb-service-bench-")
    store = os.path.join(work, "store")
    os.makedirs(store)
    with open(os.path.join(work, "api.token"), "w") as f:
        f.write("bench-api\n")
    with open(os.path.join(work, "worker.token"), "w") as f:
        f.write("bench-worker\n")
    token = "bench-api"
    # The spec with absolute input paths (the service resolves relative ones against its
    # storage root).
    spec = json.load(open(a.job))
    base = os.path.dirname(os.path.abspath(a.job))
    spec["teacher"] = os.path.normpath(os.path.join(base, spec["teacher"]))
    spec["distill"]["data"] = os.path.normpath(os.path.join(base, spec["distill"]["data"]))
    for split in ("validation", "test"):
        if split in spec["task"]:
            spec["task"][split] = os.path.normpath(os.path.join(base, spec["task"][split]))
    spec.pop("compare_placements", None)

    procs = []
    port_file = os.path.join(work, "port")
    coord = subprocess.Popen([hyb, "serve", "--storage", store, "--listen", "127.0.0.1:0",
                              "--port-file", port_file, "--token-file",
                              os.path.join(work, "api.token"), "--worker-token-file",
                              os.path.join(work, "worker.token"), "--max-connections", "1024"],
                             stderr=open(os.path.join(work, "coordinator.log"), "w"))
    procs.append(coord)
    while not os.path.exists(port_file):
        time.sleep(0.1)
    url = "http://127.0.0.1:" + open(port_file).read().strip()

    def start_worker(name, threads):
        w = subprocess.Popen([hyb, "worker", "--coordinator", url, "--storage", store,
                              "--token-file", os.path.join(work, "worker.token"), "--id", name,
                              "--poll-seconds", "2", "--threads", str(threads)],
                             stderr=open(os.path.join(work, name + ".log"), "w"))
        procs.append(w)
        return w

    results = {"machine": os.uname().nodename, "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d")}
    try:
        cores = os.cpu_count()
        w1 = start_worker("w1", cores)
        one = dict(spec, job_id="bench-1worker")
        api(url, token, "/v1/jobs", json.dumps(one))
        wait_state(url, token, "bench-1worker", ("DISTILLING",), 600)
        lat = subprocess.run([load, "--url", url, "--token-file", os.path.join(work, "api.token"),
                              "--target", "/v1/jobs/bench-1worker", "--clients",
                              str(a.clients), "--requests", str(a.requests)],
                             capture_output=True, text=True)
        results["status_latency"] = json.loads(lat.stdout) if lat.stdout else lat.stderr
        print(json.dumps({"status_latency": results["status_latency"]}), flush=True)
        job = wait_state(url, token, "bench-1worker", ("SUCCEEDED", "FAILED", "CANCELLED"), 7200)
        if job["state"] != "SUCCEEDED":
            raise SystemExit("job failed: %s" % job.get("error"))
        results["one_worker"] = search_rate(url, token, "bench-1worker")
        print(json.dumps({"one_worker": results["one_worker"]}), flush=True)

        # The same job again with two workers of half the cores each; its distillation is
        # copied from the first.
        w1.send_signal(signal.SIGTERM)
        w1.wait(timeout=120)
        shutil.copytree(os.path.join(store, "bench-1worker", "distill"),
                        os.path.join(store, "bench-2workers", "distill"))
        start_worker("w2a", max(1, cores // 2))
        start_worker("w2b", max(1, cores // 2))
        two = dict(spec, job_id="bench-2workers")
        api(url, token, "/v1/jobs", json.dumps(two))
        job = wait_state(url, token, "bench-2workers", ("SUCCEEDED", "FAILED", "CANCELLED"), 7200)
        if job["state"] != "SUCCEEDED":
            raise SystemExit("job failed: %s" % job.get("error"))
        results["two_workers"] = search_rate(url, token, "bench-2workers")
        print(json.dumps({"two_workers": results["two_workers"]}), flush=True)
        r1 = api(url, token, "/v1/jobs/bench-1worker/report")
        r2 = api(url, token, "/v1/jobs/bench-2workers/report")
        results["same_result"] = (r1["search"]["trajectory"] == r2["search"]["trajectory"] and
                                  [m["test"] for m in r1["models"]] ==
                                  [m["test"] for m in r2["models"]])
    finally:
        for pr in reversed(procs):
            pr.send_signal(signal.SIGTERM)
        for pr in procs:
            try:
                pr.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pr.kill()
    print(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
