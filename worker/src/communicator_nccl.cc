// The NCCL backend: GPU tensors, one communicator per rank and device, initialised and driven
// in non-blocking mode so that every wait polls ncclCommGetAsyncError against a deadline and a
// timeout aborts the communicator instead of hanging the process.
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <torch/torch.h>

#include <deque>
#include <thread>

#include "hyb/worker/communicator.h"

namespace hyb::worker {
namespace {

#define HYB_NCCL_TRY(call)                                                                  \
  do {                                                                                      \
    const ncclResult_t hyb_nccl_rc = (call);                                                \
    if (hyb_nccl_rc != ncclSuccess && hyb_nccl_rc != ncclInProgress) {                      \
      return Internal(std::string(#call) + " failed at " + __FILE__ + ":" +                 \
                      std::to_string(__LINE__) + ": " + ncclGetErrorString(hyb_nccl_rc) +   \
                      " (" + ncclGetLastError(nullptr) + ")");                              \
    }                                                                                       \
  } while (0)

StatusOr<ncclDataType_t> NcclType(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kBFloat16: return ncclBfloat16;
    case at::kHalf: return ncclFloat16;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    default:
      return InvalidArgument(std::string("NCCL does not support ") +
                             c10::toString(t.scalar_type()) + " tensors");
  }
}

ncclRedOp_t NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
    default: return ncclSum;
  }
}

// Polls a non-blocking communicator until its last call finished (not ncclInProgress).
Status Settle(ncclComm_t comm, std::chrono::steady_clock::time_point deadline, bool* timed_out) {
  *timed_out = false;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(comm, &state);
    if (rc != ncclSuccess) return Internal(std::string("ncclCommGetAsyncError: ") + ncclGetErrorString(rc));
    if (state == ncclSuccess) return Status::Ok();
    if (state != ncclInProgress) {
      return Internal(std::string("NCCL asynchronous error: ") + ncclGetErrorString(state) +
                      " (" + ncclGetLastError(comm) + ")");
    }
    if (std::chrono::steady_clock::now() > deadline) {
      *timed_out = true;
      return Status::Ok();
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size, int device,
                   std::chrono::milliseconds timeout, std::string label)
      : Communicator(rank, size, std::move(label), timeout),
        comm_(comm),
        device_(device),
        stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false,
                                             static_cast<c10::DeviceIndex>(device))) {}

  ~NcclCommunicator() override {
    if (comm_ == nullptr) return;
    if (aborted_) return;
    sends_.clear();
    ncclCommDestroy(comm_);
  }

  std::string backend() const override { return "nccl"; }

  Status Send(const at::Tensor& t, int peer) override {
    HYB_RETURN_IF_ERROR(CheckPeer(peer, "send"));
    HYB_RETURN_IF_ERROR(CheckDevice(t, "send"));
    while (sends_.size() >= kMaxInFlight) {
      HYB_RETURN_IF_ERROR(WaitEvent(*sends_.front().done,
                                    "send to rank " + std::to_string(sends_.front().peer)));
      sends_.pop_front();
    }
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    PendingSend s;
    // A copy: the caller may overwrite `t` while the send is still queued on our stream.
    s.buffer = t.detach().clone(at::MemoryFormat::Contiguous);
    s.peer = peer;
    Enter();
    HYB_NCCL_TRY(ncclSend(s.buffer.data_ptr(), s.buffer.nbytes(), ncclUint8, peer, comm_, stream_));
    HYB_RETURN_IF_ERROR(AfterCall("send to rank " + std::to_string(peer)));
    s.done = std::make_unique<at::cuda::CUDAEvent>();
    s.done->record(stream_);
    sends_.push_back(std::move(s));
    return Status::Ok();
  }

  Status Recv(at::Tensor& t, int peer) override {
    HYB_RETURN_IF_ERROR(CheckPeer(peer, "recv"));
    HYB_RETURN_IF_ERROR(CheckDevice(t, "recv"));
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    at::Tensor target = t.is_contiguous() ? t : at::empty_like(t, at::MemoryFormat::Contiguous);
    Enter();
    HYB_NCCL_TRY(ncclRecv(target.data_ptr(), target.nbytes(), ncclUint8, peer, comm_, stream_));
    HYB_RETURN_IF_ERROR(Finish("recv from rank " + std::to_string(peer)));
    if (!target.is_same(t)) t.copy_(target);
    return Status::Ok();
  }

  Status AllReduce(at::Tensor& t, ReduceOp op) override {
    HYB_RETURN_IF_ERROR(CheckDevice(t, "all-reduce"));
    HYB_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(t));
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    at::Tensor buf = t.is_contiguous() ? t : t.contiguous();
    Enter();
    HYB_NCCL_TRY(ncclAllReduce(buf.data_ptr(), buf.data_ptr(), static_cast<size_t>(buf.numel()),
                               type, NcclOp(op), comm_, stream_));
    HYB_RETURN_IF_ERROR(Finish("all-reduce over " + std::to_string(size()) + " ranks"));
    if (!buf.is_same(t)) t.copy_(buf);
    return Status::Ok();
  }

  Status Broadcast(at::Tensor& t, int root) override {
    HYB_RETURN_IF_ERROR(CheckDevice(t, "broadcast"));
    if (root < 0 || root >= size()) return InvalidArgument("broadcast: no rank " + std::to_string(root));
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    at::Tensor buf = t.is_contiguous() ? t : t.contiguous();
    Enter();
    HYB_NCCL_TRY(ncclBroadcast(buf.data_ptr(), buf.data_ptr(), buf.nbytes(), ncclUint8, root,
                               comm_, stream_));
    HYB_RETURN_IF_ERROR(Finish("broadcast from rank " + std::to_string(root)));
    if (!buf.is_same(t)) t.copy_(buf);
    return Status::Ok();
  }

  Status Barrier() override {
    at::Tensor one = at::ones({1}, at::TensorOptions().device(at::kCUDA, device_));
    return AllReduce(one, ReduceOp::kSum);
  }

  Status Flush() override {
    while (!sends_.empty()) {
      HYB_RETURN_IF_ERROR(WaitEvent(*sends_.front().done,
                                    "send to rank " + std::to_string(sends_.front().peer)));
      sends_.pop_front();
    }
    return Status::Ok();
  }

  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                const std::string& label) override {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t sub = nullptr;
    HYB_NCCL_TRY(ncclCommSplit(comm_, color, key, &sub, &config));
    bool timed_out = false;
    HYB_RETURN_IF_ERROR(Settle(comm_, Deadline(), &timed_out));
    if (timed_out) return Abort("split");
    if (sub == nullptr) return Internal("ncclCommSplit returned no communicator");
    HYB_RETURN_IF_ERROR(Settle(sub, Deadline(), &timed_out));
    if (timed_out) {
      ncclCommAbort(sub);
      return Abort("split (new communicator)");
    }
    int r = 0, n = 0;
    ncclCommUserRank(sub, &r);
    ncclCommCount(sub, &n);
    return std::unique_ptr<Communicator>(
        new NcclCommunicator(sub, r, n, device_, timeout(), label));
  }

 private:
  static constexpr size_t kMaxInFlight = 4;
  struct PendingSend {
    at::Tensor buffer;  // kept alive until `done`
    std::unique_ptr<at::cuda::CUDAEvent> done;
    int peer = -1;
  };

  std::chrono::steady_clock::time_point Deadline() const {
    return std::chrono::steady_clock::now() + timeout();
  }

  Status CheckDevice(const at::Tensor& t, const char* op) const {
    if (!t.defined() || !t.is_cuda() || t.device().index() != device_) {
      return InvalidArgument(std::string(op) + " over '" + label() +
                             "': the NCCL backend moves tensors on cuda:" +
                             std::to_string(device_) + " only");
    }
    return Status::Ok();
  }

  // The communicator's stream waits for the work queued so far on the caller's stream.
  void Enter() {
    at::cuda::CUDAEvent ready;
    ready.record(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)));
    ready.block(stream_);
  }

  // After a non-blocking call: wait until NCCL accepted it.
  Status AfterCall(const std::string& what) {
    bool timed_out = false;
    HYB_RETURN_IF_ERROR(Settle(comm_, Deadline(), &timed_out));
    if (timed_out) return Abort(what);
    return Status::Ok();
  }

  // Waits for the operation just queued to complete on the device.
  Status Finish(const std::string& what) {
    HYB_RETURN_IF_ERROR(AfterCall(what));
    at::cuda::CUDAEvent done;
    done.record(stream_);
    return WaitEvent(done, what);
  }

  Status WaitEvent(at::cuda::CUDAEvent& event, const std::string& what) {
    const auto deadline = Deadline();
    while (!event.query()) {
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm_, &state);
      if (state != ncclSuccess && state != ncclInProgress) {
        return Internal("rank " + std::to_string(rank()) + " of '" + label() + "': " + what +
                        ": NCCL error " + ncclGetErrorString(state));
      }
      if (std::chrono::steady_clock::now() > deadline) return Abort(what);
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    return Status::Ok();
  }

  Status Abort(const std::string& what) {
    if (!aborted_) {
      ncclCommAbort(comm_);
      aborted_ = true;
    }
    return TimedOut(what + " (communicator aborted)");
  }

  ncclComm_t comm_;
  int device_;
  c10::cuda::CUDAStream stream_;
  bool aborted_ = false;
  std::deque<PendingSend> sends_;
};

}  // namespace

bool NcclAvailable() { return true; }

StatusOr<std::string> NcclNewUniqueId() {
  ncclUniqueId id;
  HYB_NCCL_TRY(ncclGetUniqueId(&id));
  return std::string(id.internal, sizeof id.internal);
}

StatusOr<std::unique_ptr<Communicator>> NcclConnect(const std::string& id, int rank, int size,
                                                    int device, std::chrono::milliseconds timeout,
                                                    const std::string& label) {
  ncclUniqueId uid;
  if (id.size() != sizeof uid.internal) {
    return InvalidArgument("NCCL unique id has " + std::to_string(id.size()) + " bytes, expected " +
                           std::to_string(sizeof uid.internal));
  }
  std::memcpy(uid.internal, id.data(), id.size());
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  HYB_NCCL_TRY(ncclCommInitRankConfig(&comm, size, uid, rank, &config));
  bool timed_out = false;
  HYB_RETURN_IF_ERROR(Settle(comm, std::chrono::steady_clock::now() + timeout, &timed_out));
  if (timed_out) {
    ncclCommAbort(comm);
    return Unavailable("rank " + std::to_string(rank) + " of '" + label +
                       "' (nccl): joining the communicator of " + std::to_string(size) +
                       " ranks timed out (the other ranks did not join)");
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(comm, rank, size, device, timeout, label));
}

}  // namespace hyb::worker
