// Communicators: how the ranks of a distillation gang or an MPI batch job move tensors between
// each other. One interface, three backends:
//   in-process  threads of one process sharing a world (unit tests, two pipeline stages on one
//               GPU); tensors of any device, copied.
//   MPI         OpenMPI ranks (`mpirun`), CPU tensors; also carries the NCCL unique id.
//   NCCL        GPU tensors on the rank's device; non-blocking communicator, asynchronous error
//               polling, aborted on a timeout.
// Every wait is bounded: an operation that does not complete within the communicator's timeout
// returns DeadlineExceeded-style Unavailable naming the operation, the communicator and the peer
// (or the group) it waited for, e.g. "recv from rank 1 of 'pipeline' timed out after 5 s". After
// a timeout or any other error the communicator is unusable: the caller reports and exits.
//
// Ordering: point-to-point messages between two ranks arrive in the order they were sent.
// Collectives must be called by every rank of the communicator in the same order.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hyb/common/status.h"

namespace hyb::worker {

enum class ReduceOp { kSum, kMax, kMin };

class Communicator {
 public:
  virtual ~Communicator() = default;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // The communicator's name in errors ("world", "pipeline", "stage 1 replicas").
  const std::string& label() const { return label_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  // Later operations wait at most `t` (a control channel waits long for the next command, and
  // briefly for replies that must come soon).
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }
  virtual std::string backend() const = 0;

  // Hands `t` to `peer`. Returns once `t` may be reused (its bytes are copied or on their way):
  // the receiver's Recv completes it; a sender that runs more than a few messages ahead of its
  // receiver waits (bounded by the timeout).
  virtual Status Send(const at::Tensor& t, int peer) = 0;
  // Receives the next message from `peer` into `t`, which must have the sender's shape and
  // dtype (InvalidArgument naming both otherwise, where the backend can tell).
  virtual Status Recv(at::Tensor& t, int peer) = 0;
  // In place over every rank. kSum/kMax/kMin on float, double, int64 (and bf16 for NCCL).
  virtual Status AllReduce(at::Tensor& t, ReduceOp op = ReduceOp::kSum) = 0;
  virtual Status Broadcast(at::Tensor& t, int root) = 0;
  virtual Status Barrier() = 0;
  // Waits until every message this rank sent has been received (before exiting or reusing
  // peers' buffers).
  virtual Status Flush() = 0;
  // A communicator over the ranks that pass the same `color`, ordered by `key` (then by rank),
  // named `label`. Collective over this communicator.
  virtual StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                        const std::string& label) = 0;

  // Strings and byte blobs (JSON messages) over the tensor operations: a length, then the bytes.
  Status SendString(const std::string& s, int peer);
  StatusOr<std::string> RecvString(int peer);
  // Root's string to every rank.
  Status BroadcastString(std::string* s, int root);

 protected:
  Communicator(int rank, int size, std::string label, std::chrono::milliseconds timeout)
      : rank_(rank), size_(size), label_(std::move(label)), timeout_(timeout) {}
  // "<op> <what> of '<label>' timed out after N s" as an Unavailable status.
  Status TimedOut(const std::string& what) const;
  Status CheckPeer(int peer, const char* op) const;

 private:
  int rank_, size_;
  std::string label_;
  std::chrono::milliseconds timeout_;
};

// --- In-process backend -----------------------------------------------------------------------

// `size` communicators sharing one world, one per thread: Make(n)[r] is rank r's. The world
// lives as long as any of them.
std::vector<std::unique_ptr<Communicator>> MakeInProcessWorld(int size,
                                                              std::chrono::milliseconds timeout,
                                                              const std::string& label = "world");

// --- TCP backend (CPU tensors between processes that no mpirun started) -----------------------

// Where the ranks of a gang find each other: a small key-value store (the coordinator's
// /v1/worker/kv routes; an in-memory one in tests). Keys are scoped by the caller (job, attempt).
class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  virtual Status Set(const std::string& key, const std::string& value) = 0;
  // Waits up to `timeout` for the key to be set. Unavailable naming the key when it was not.
  virtual StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) = 0;
};

// An in-memory RendezvousStore shared by threads.
std::shared_ptr<RendezvousStore> MakeMemoryRendezvousStore();

// Joins a full mesh of TCP connections as `rank` of `size`: listens on an ephemeral port,
// publishes "<advertise_host>:<port>" under "<prefix>/addr/<rank>", connects to the ranks
// below and accepts the ranks above. Collectives run through rank 0. A closed connection fails
// the operation at once, naming the peer; a silent one after the timeout.
StatusOr<std::unique_ptr<Communicator>> TcpConnect(RendezvousStore& store,
                                                   const std::string& prefix, int rank, int size,
                                                   const std::string& advertise_host,
                                                   std::chrono::milliseconds timeout,
                                                   const std::string& label = "world");

// --- MPI backend (built when HYB_MPI; MpiAvailable() false otherwise) ------------------------

bool MpiAvailable();
// MPI_Init_thread once per process (funneled); idempotent. Unimplemented in builds without MPI.
Status MpiInit();
// MPI_Finalize if MpiInit ran. After an error, MpiAbort instead.
void MpiFinalize();
[[noreturn]] void MpiAbort(int code);
// True when this process was started by mpirun (OMPI_COMM_WORLD_SIZE / PMI_SIZE set).
bool LaunchedByMpirun();
// MPI_COMM_WORLD as a communicator (after MpiInit).
StatusOr<std::unique_ptr<Communicator>> MpiWorld(std::chrono::milliseconds timeout);
// The node-local rank mpirun gave this process (OMPI_COMM_WORLD_LOCAL_RANK), 0 if unknown.
int MpiLocalRank();

// --- NCCL backend (built with HYB_CUDA; NcclAvailable() false otherwise) ---------------------

bool NcclAvailable();
// The 128-byte ncclUniqueId, created by rank 0 and handed to the others by the caller (MPI
// broadcast, or the coordinator's key-value routes).
StatusOr<std::string> NcclNewUniqueId();
// Joins the NCCL communicator `id` as `rank` of `size` on `device` (a CUDA device index).
// Non-blocking initialisation, bounded by `timeout`.
StatusOr<std::unique_ptr<Communicator>> NcclConnect(const std::string& id, int rank, int size,
                                                    int device, std::chrono::milliseconds timeout,
                                                    const std::string& label = "world");

}  // namespace hyb::worker
