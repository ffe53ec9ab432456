// The MPI backend (OpenMPI): CPU tensors, non-blocking operations polled against a deadline so
// that a rank whose peer hangs or died reports it instead of waiting forever.
#include <mpi.h>
#include <torch/torch.h>

#include <cstdlib>
#include <deque>
#include <thread>

#include "hyb/worker/communicator.h"

namespace hyb::worker {
namespace {

bool g_initialised = false;

std::string MpiErrorText(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return std::string(text, static_cast<size_t>(len));
}

#define HYB_MPI_CHECK(call)                                                                  \
  do {                                                                                       \
    const int hyb_mpi_rc = (call);                                                           \
    if (hyb_mpi_rc != MPI_SUCCESS) {                                                         \
      return Internal(std::string(#call) + " failed at " + __FILE__ + ":" +                  \
                      std::to_string(__LINE__) + ": " + MpiErrorText(hyb_mpi_rc));           \
    }                                                                                        \
  } while (0)

StatusOr<MPI_Datatype> ReduceType(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    default:
      return InvalidArgument(std::string("MPI all-reduce does not support ") +
                             c10::toString(t.scalar_type()) + " tensors");
  }
}

MPI_Op ToMpiOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
    default: return MPI_SUM;
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, int rank, int size, std::chrono::milliseconds timeout,
                  std::string label, bool owned)
      : Communicator(rank, size, std::move(label), timeout), comm_(comm), owned_(owned) {}

  ~MpiCommunicator() override {
    // Outstanding sends must not outlive their buffers; after an error they are abandoned.
    for (auto& s : sends_) MPI_Request_free(&s.request);
    if (owned_ && g_initialised) MPI_Comm_free(&comm_);
  }

  std::string backend() const override { return "mpi"; }

  Status Send(const at::Tensor& t, int peer) override {
    HYB_RETURN_IF_ERROR(CheckPeer(peer, "send"));
    HYB_RETURN_IF_ERROR(CheckCpu(t, "send"));
    // At most kMaxInFlight unreceived sends: the oldest must finish before another starts.
    while (sends_.size() >= kMaxInFlight) {
      HYB_RETURN_IF_ERROR(Wait(&sends_.front().request,
                               "send to rank " + std::to_string(sends_.front().peer)));
      sends_.pop_front();
    }
    PendingSend s;
    s.buffer = t.detach().contiguous().clone();
    s.peer = peer;
    HYB_MPI_CHECK(MPI_Isend(s.buffer.data_ptr(), static_cast<int>(s.buffer.nbytes()), MPI_BYTE,
                            peer, kTag, comm_, &s.request));
    sends_.push_back(std::move(s));
    return Status::Ok();
  }

  Status Recv(at::Tensor& t, int peer) override {
    HYB_RETURN_IF_ERROR(CheckPeer(peer, "recv"));
    HYB_RETURN_IF_ERROR(CheckCpu(t, "recv"));
    // Probe first: the wait is bounded and the size checked before the bytes land.
    MPI_Status status;
    const auto deadline = std::chrono::steady_clock::now() + timeout();
    for (int spin = 0;; ++spin) {
      int flag = 0;
      HYB_MPI_CHECK(MPI_Iprobe(peer, kTag, comm_, &flag, &status));
      if (flag) break;
      HYB_RETURN_IF_ERROR(ProgressSends());
      if (std::chrono::steady_clock::now() > deadline) {
        return TimedOut("recv from rank " + std::to_string(peer));
      }
      Backoff(spin);
    }
    int count = 0;
    HYB_MPI_CHECK(MPI_Get_count(&status, MPI_BYTE, &count));
    if (static_cast<size_t>(count) != t.nbytes()) {
      return InvalidArgument("recv from rank " + std::to_string(peer) + " of '" + label() +
                             "': got " + std::to_string(count) + " bytes, expected " +
                             std::to_string(t.nbytes()) + " (" + c10::str(t.sizes()) + " " +
                             c10::toString(t.scalar_type()) + ")");
    }
    at::Tensor target = t.is_contiguous() ? t : at::empty_like(t, at::MemoryFormat::Contiguous);
    HYB_MPI_CHECK(MPI_Recv(target.data_ptr(), count, MPI_BYTE, peer, kTag, comm_,
                           MPI_STATUS_IGNORE));
    if (!target.is_same(t)) t.copy_(target);
    return Status::Ok();
  }

  Status AllReduce(at::Tensor& t, ReduceOp op) override {
    HYB_RETURN_IF_ERROR(CheckCpu(t, "all-reduce"));
    HYB_ASSIGN_OR_RETURN(MPI_Datatype type, ReduceType(t));
    at::Tensor buf = t.is_contiguous() ? t : t.contiguous();
    MPI_Request req;
    HYB_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf.data_ptr(), static_cast<int>(buf.numel()),
                                 type, ToMpiOp(op), comm_, &req));
    HYB_RETURN_IF_ERROR(Wait(&req, "all-reduce over " + std::to_string(size()) + " ranks"));
    if (!buf.is_same(t)) t.copy_(buf);
    return Status::Ok();
  }

  Status Broadcast(at::Tensor& t, int root) override {
    HYB_RETURN_IF_ERROR(CheckCpu(t, "broadcast"));
    if (root < 0 || root >= size()) return InvalidArgument("broadcast: no rank " + std::to_string(root));
    at::Tensor buf = t.is_contiguous() ? t : t.contiguous();
    MPI_Request req;
    HYB_MPI_CHECK(MPI_Ibcast(buf.data_ptr(), static_cast<int>(buf.nbytes()), MPI_BYTE, root,
                             comm_, &req));
    HYB_RETURN_IF_ERROR(Wait(&req, "broadcast from rank " + std::to_string(root)));
    if (!buf.is_same(t)) t.copy_(buf);
    return Status::Ok();
  }

  Status Barrier() override {
    MPI_Request req;
    HYB_MPI_CHECK(MPI_Ibarrier(comm_, &req));
    return Wait(&req, "barrier over " + std::to_string(size()) + " ranks");
  }

  Status Flush() override {
    while (!sends_.empty()) {
      HYB_RETURN_IF_ERROR(Wait(&sends_.front().request,
                               "send to rank " + std::to_string(sends_.front().peer)));
      sends_.pop_front();
    }
    return Status::Ok();
  }

  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                const std::string& label) override {
    // MPI_Comm_split blocks; the barrier before it bounds the wait for absent ranks.
    HYB_RETURN_IF_ERROR(Barrier());
    MPI_Comm sub;
    HYB_MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
    MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
    int r = 0, n = 0;
    MPI_Comm_rank(sub, &r);
    MPI_Comm_size(sub, &n);
    return std::unique_ptr<Communicator>(new MpiCommunicator(sub, r, n, timeout(), label, true));
  }

 private:
  static constexpr int kTag = 17;
  static constexpr size_t kMaxInFlight = 4;
  struct PendingSend {
    MPI_Request request = MPI_REQUEST_NULL;
    at::Tensor buffer;  // kept alive until the request completes
    int peer = -1;
  };

  Status CheckCpu(const at::Tensor& t, const char* op) const {
    if (!t.defined() || !t.device().is_cpu()) {
      return InvalidArgument(std::string(op) + " over '" + label() +
                             "': the MPI backend moves CPU tensors only (use NCCL for GPU ones)");
    }
    return Status::Ok();
  }

  // Sleeps a little longer the longer a wait lasts: ranks oversubscribed on few cores must
  // leave the CPU to the rank they wait for.
  static void Backoff(int spin) {
    if (spin < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(spin < 1024 ? 50 : 1000));
    }
  }

  // Completes finished sends so their buffers are released.
  Status ProgressSends() {
    while (!sends_.empty()) {
      int done = 0;
      HYB_MPI_CHECK(MPI_Test(&sends_.front().request, &done, MPI_STATUS_IGNORE));
      if (!done) break;
      sends_.pop_front();
    }
    return Status::Ok();
  }

  Status Wait(MPI_Request* req, const std::string& what) {
    const auto deadline = std::chrono::steady_clock::now() + timeout();
    for (int spin = 0;; ++spin) {
      int done = 0;
      HYB_MPI_CHECK(MPI_Test(req, &done, MPI_STATUS_IGNORE));
      if (done) return Status::Ok();
      if (std::chrono::steady_clock::now() > deadline) return TimedOut(what);
      Backoff(spin);
    }
  }

  MPI_Comm comm_;
  bool owned_;
  std::deque<PendingSend> sends_;
};

}  // namespace

bool MpiAvailable() { return true; }

Status MpiInit() {
  if (g_initialised) return Status::Ok();
  int provided = 0;
  HYB_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  g_initialised = true;
  return Status::Ok();
}

void MpiFinalize() {
  if (!g_initialised) return;
  g_initialised = false;
  MPI_Finalize();
}

void MpiAbort(int code) {
  if (g_initialised) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

bool LaunchedByMpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr ||
         std::getenv("PMIX_RANK") != nullptr;
}

int MpiLocalRank() {
  const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  return v != nullptr ? std::atoi(v) : 0;
}

StatusOr<std::unique_ptr<Communicator>> MpiWorld(std::chrono::milliseconds timeout) {
  if (!g_initialised) return FailedPrecondition("MpiWorld before MpiInit");
  int r = 0, n = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return std::unique_ptr<Communicator>(
      new MpiCommunicator(MPI_COMM_WORLD, r, n, timeout, "world", false));
}

}  // namespace hyb::worker
