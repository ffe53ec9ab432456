#!/usr/bin/env python3
"""Runs the mpijob overlay's launch path on this machine as its pods would: sshd with the
overlay's sshd_config as the worker image's non-root user, mpirun with the MPIJob's options and
the environment and hostfile the MPI Operator gives the launcher, its ssh client with the
overlay's settings and a key pair laid out as the operator's Secret volume, one rank per slot on
every worker (the workers' names resolve to 127.0.0.2, 127.0.0.3, ...; one sshd serves them all).

  python3 tests/k8s/mpijob_ssh_smoke.py [--sshd PATH] [--tiny-job TOOL --hybridize BIN]

Without --tiny-job the ranks run a small MPI program (an allreduce that prints what each rank
received: uid, NCCL_NVLS_ENABLE, ...); with it, the MPIJob's own rank command (`hybridize run
JOB.json --mpi --storage DIR`, paths on the shared volume mapped to a directory here) on the tiny
job that TOOL (the write_tiny_job test tool) writes.

Needs root, for a private mount namespace in which /etc/passwd, /etc/group and /etc/hosts gain
the image's user and the workers' names, /home a home for it and /etc/ssh/ssh_config.d the
overlay's ssh client settings (nothing outside the namespace changes); and sshd, mpicc, mpirun,
ssh, setpriv, openssl. Without openssh-server installed: `apt-get download openssh-server
libwrap0` and `dpkg -x` each into DIR, then --sshd DIR/usr/sbin/sshd with
LD_LIBRARY_PATH=DIR/usr/lib/x86_64-linux-gnu. Not part of ctest (root, sshd); ctest's
k8s_manifests checks the same manifests without running them.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_manifests as cm  # noqa: E402

PROBE = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static const char* Env(const char* name) { const char* v = getenv(name); return v ? v : "-"; }
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, size, one = 1, sum = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("rank %d of %d: uid %d, allreduce %d, NCCL_NVLS_ENABLE=%s HYB_LOG_LEVEL=%s "
         "K_MPI_JOB_ROLE=%s\n", rank, size, (int)getuid(), sum, Env("NCCL_NVLS_ENABLE"),
         Env("HYB_LOG_LEVEL"), Env("K_MPI_JOB_ROLE"));
  MPI_Finalize();
  return sum == size ? 0 : 1;
}
"""


def run(argv, **kw):
    r = subprocess.run(argv, **kw)
    if r.returncode != 0:
        raise cm.Failure(f"{' '.join(argv)}: exit {r.returncode}")
    return r


def bind_copy(path, extra, sandbox):
    """Bind-mounts a copy of `path` with `extra` appended over `path`."""
    copy = os.path.join(sandbox, "etc-" + os.path.basename(path))
    with open(path) as f, open(copy, "w") as out:
        out.write(f.read() + extra)
    os.chmod(copy, 0o644)
    run(["mount", "--bind", copy, path])


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sshd", default="/usr/sbin/sshd")
    ap.add_argument("--tiny-job", help="write_tiny_job: run the MPIJob's own rank command")
    ap.add_argument("--hybridize", help="the hybridize binary (with --tiny-job)")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    if args.tiny_job and not args.hybridize:
        ap.error("--tiny-job needs --hybridize")
    if os.geteuid() != 0:
        print("error: needs root (a private mount namespace)")
        return 1
    if os.environ.get("HYB_MPIJOB_SMOKE_NAMESPACE") != "1":
        env = dict(os.environ, HYB_MPIJOB_SMOKE_NAMESPACE="1")
        os.execvpe("unshare", ["unshare", "--mount", "--propagation", "private", sys.executable,
                               os.path.abspath(__file__)] + sys.argv[1:], env)

    sandbox = tempfile.mkdtemp(prefix="hyb-mpijob-smoke-")
    os.chmod(sandbox, 0o755)
    sshd = None
    try:
        objs = cm.render(os.path.join(cm.K8S, "overlays", "mpijob"), sandbox)
        job = next(o for o in objs if o["kind"] == "MPIJob")
        name = job["metadata"]["name"]
        created, templates, hosts = cm.mpi_operator_pods(job)
        user = cm.worker_image_user()
        uid = user["uid"]
        claims = {c: {} for c in cm.OUT_OF_BAND_CLAIMS.get("mpijob", {})}

        def pod(role, pod_name):
            return cm.Pod(objs + created, {"kind": "Pod", "metadata": job["metadata"],
                                           "spec": {"template": templates[role]}}, 0, sandbox, {},
                          name=pod_name, claims_elsewhere=claims)

        launcher = pod("Launcher", f"{name}-launcher")
        worker = pod("Worker", f"{name}-worker-0")
        ssh_path = job["spec"].get("sshAuthMountPath", "/root/.ssh")

        # The operator's key pair (EC P-521, PEM, in a file called id_rsa), as its Secret volume
        # holds it: files of root, group fsGroup, mode 0644.
        key = os.path.join(sandbox, "id_rsa")
        run(["openssl", "ecparam", "-name", "secp521r1", "-genkey", "-noout", "-out", key])
        public = run(["ssh-keygen", "-y", "-f", key], capture_output=True, text=True).stdout
        for p in (launcher, worker):
            d = p.map_text(ssh_path)
            for f, text in (("id_rsa", open(key).read()), ("id_rsa.pub", public),
                            ("authorized_keys", public)):
                with open(os.path.join(d, f), "w") as out:
                    out.write(text)
                os.chown(os.path.join(d, f), 0, uid)
                os.chmod(os.path.join(d, f), 0o644)
        # What the pods may write: their emptyDirs and the shared volume.
        for p in (launcher, worker):
            for v, d in p.volume_dirs.values():
                if "emptyDir" in v or "persistentVolumeClaim" in v:
                    os.chown(d, uid, uid)

        # The image's user, its home, the workers' names, the ssh client settings.
        bind_copy("/etc/passwd", f"{user['name']}:x:{uid}:{uid}::{user['home']}:"
                                 f"{user['shell']}\n", sandbox)
        bind_copy("/etc/group", f"{user['name']}:x:{uid}:\n", sandbox)
        bind_copy("/etc/hosts", "".join(f"127.0.0.{2 + i} {h}\n" for i, h in enumerate(hosts)),
                  sandbox)
        run(["mount", "-t", "tmpfs", "tmpfs", os.path.dirname(user["home"])])
        os.makedirs(user["home"])
        os.chown(user["home"], uid, uid)
        conf_mount = next(m["mountPath"] for m in launcher.container["volumeMounts"]
                          if m["mountPath"].startswith("/etc/ssh/ssh_config.d/"))
        conf_dir = os.path.join(sandbox, "ssh_config.d")
        os.makedirs(conf_dir)
        shutil.copy(launcher.map_text(conf_mount), os.path.join(conf_dir,
                                                                os.path.basename(conf_mount)))
        run(["mount", "--bind", conf_dir, "/etc/ssh/ssh_config.d"])
        as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]

        # sshd as the worker container runs it.
        c = worker.container
        argv = [worker.map_text(a) for a in c.get("command", []) + c.get("args", [])]
        sshd_log = os.path.join(sandbox, "sshd.log")
        sshd_env = dict(worker.env, PATH="/usr/sbin:/usr/bin:/bin")
        if os.environ.get("LD_LIBRARY_PATH"):
            sshd_env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
        sshd = subprocess.Popen(as_user + [os.path.abspath(args.sshd)] + argv[1:],
                                env=sshd_env, stdout=open(sshd_log, "w"),
                                stderr=subprocess.STDOUT)
        port = next(p["containerPort"] for p in c["ports"])
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.2", port), timeout=1).close()
                break
            except OSError:
                if sshd.poll() is not None or time.time() > deadline:
                    raise cm.Failure(f"sshd did not listen on {port}:\n{open(sshd_log).read()}")
                time.sleep(0.2)
        print(f"sshd: {args.sshd} {' '.join(argv[1:])} as uid {uid}, listening on {port}")

        # mpirun as the launcher container runs it, with the program of the ranks.
        c = launcher.container
        mpirun = c.get("command", []) + c.get("args", [])
        options, program = cm.split_mpirun(mpirun, "launcher")
        head = mpirun[:len(mpirun) - len(program)]
        if args.tiny_job:
            program_job = program[2]
            storage = cm.parse_run_args(program[2:], cm.command_flags(args.hybridize, "run"),
                                        "launcher")[1]["storage"]
            job_dir = worker.map_text(os.path.dirname(program_job))
            os.makedirs(job_dir, exist_ok=True)
            run([args.tiny_job, job_dir])
            run(["chown", "-R", f"{uid}:{uid}", worker.map_text("/data/hybridize")])
            program = [os.path.abspath(args.hybridize)] + [worker.map_text(a)
                                                           for a in program[1:]]
        else:
            probe = os.path.join(sandbox, "probe")
            with open(probe + ".c", "w") as f:
                f.write(PROBE)
            run(["mpicc", "-O1", "-o", probe, probe + ".c"])
            os.chmod(probe, 0o755)
            program = [probe]
        env = {k: launcher.map_text(v) for k, v in {**cm.IMAGE_ENV, **launcher.env}.items()}
        env.update(PATH=os.environ["PATH"], HOME=user["home"])
        print(f"mpirun: {' '.join(head[1:])} {' '.join(program)}")
        r = subprocess.run(as_user + head + program, env=env, capture_output=True, text=True,
                           timeout=args.timeout)
        print(r.stdout[-6000:] + r.stderr[-3000:])
        ranks = int(next(v[0] for o in cm.MPIRUN_RANKS for v in options.get(o, [])))
        if r.returncode != 0:
            raise cm.Failure(f"mpirun exited {r.returncode}; sshd:\n{open(sshd_log).read()}")
        if args.tiny_job:
            job_id = json.load(open(worker.map_text(program_job)))["job_id"]
            report = os.path.join(worker.map_text(storage), job_id, "report.json")
            if not os.path.exists(report):
                raise cm.Failure(f"no {report}")
            print(f"the job's report: {report}")
        else:
            lines = [x for x in r.stdout.splitlines() if x.startswith("rank ")]
            if len(lines) != ranks or not all(f"uid {uid}," in x and "NCCL_NVLS_ENABLE=0" in x
                                              for x in lines):
                raise cm.Failure(f"expected {ranks} ranks as uid {uid} with NCCL_NVLS_ENABLE=0")
        logins = open(sshd_log).read().count("Accepted publickey")
        print(f"{ranks} ranks on {len(hosts)} workers over ssh ({logins} logins) as uid {uid}: ok")
    except cm.Failure as e:
        print(f"FAILED: {e}")
        return 1
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        shutil.rmtree(sandbox, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
