# The GPU worker image: `hybridize worker` linked against the LibTorch of the PyTorch wheel (CUDA
# 13), with our CUDA kernels, NCCL and OpenMPI; also the MPI batch mode's launcher and workers
# (mpirun, sshd). Multi-stage: the build stage has the CUDA toolkit, the compilers and the wheel;
# the runtime stage keeps the CUDA runtime, the wheel's shared libraries and one binary.
#
#   docker build -f docker/worker.Dockerfile -t hybridize-worker:0.1.0 .
#   --build-arg CUDA_ARCHS="90a;100a" for more GPU generations (default: H100/H200)
ARG CUDA_DEVEL=nvidia/cuda:13.0.0-devel-ubuntu24.04
ARG CUDA_RUNTIME=nvidia/cuda:13.0.0-runtime-ubuntu24.04
ARG TORCH_SPEC="torch==2.11.*"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130

FROM ${CUDA_DEVEL} AS build
ARG TORCH_SPEC
ARG TORCH_INDEX
ARG CUDA_ARCHS=90a
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      build-essential cmake ninja-build pkg-config git python3 python3-venv \
      nlohmann-json3-dev libboost-dev libssl-dev libgtest-dev libgmock-dev \
      libopenmpi-dev openmpi-bin libnccl-dev \
 && rm -rf /var/lib/apt/lists/*
# LibTorch from the PyTorch wheel, in a venv at the path the runtime stage keeps.
RUN python3 -m venv /opt/torch \
 && /opt/torch/bin/pip install --no-cache-dir "${TORCH_SPEC}" --index-url "${TORCH_INDEX}"
COPY . /src
WORKDIR /src
# The project's own build script (the GPU machine's build, GPU.md), installed with the wheel's
# library directory as the binary's run path.
RUN PYTHON=/opt/torch/bin/python3 CUDA_ARCHS="${CUDA_ARCHS}" \
      scripts/build-worker /tmp/build --install /opt/hybridize

FROM ${CUDA_RUNTIME}
# openssh: the MPI batch mode (k8s/overlays/mpijob) starts the ranks with mpirun over ssh, sshd
# on the workers; the host keys the package generates go, the MPI Operator mounts the job's own.
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      libnccl2 openmpi-bin libopenmpi3t64 libgomp1 libssl3t64 ca-certificates \
      openssh-client openssh-server \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/ssh/ssh_host_*
# The wheel's shared libraries (LibTorch and the CUDA libraries it loads), at the same path.
COPY --from=build /opt/torch/lib /opt/torch/lib
COPY --from=build /opt/hybridize/bin/hybridize /usr/local/bin/hybridize
# Non-root, with the uid/gid of the manifests' securityContext. A home and a login shell for the
# MPI batch mode: the MPI Operator mounts the job's ssh key pair at ~/.ssh (the MPIJob's
# sshAuthMountPath), and sshd, run by this user on the workers, starts OpenMPI's daemons through
# the login shell. The service's pods never start sshd.
RUN groupadd --gid 10001 hybridize \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/hybridize \
      --shell /bin/bash hybridize \
 && mkdir -p /data/hybridize && chown 10001:10001 /data/hybridize
USER 10001:10001
# NVLink multicast stays off unless an operator turns it on deliberately.
ENV NCCL_NVLS_ENABLE=0
ENTRYPOINT ["hybridize"]
CMD ["worker", "--help"]
