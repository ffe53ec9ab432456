// The communicator's shared parts and the in-process backend (threads of one process).
#include "hyb/worker/communicator.h"

#include <torch/torch.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>

namespace hyb::worker {

namespace {
std::string SecondsText(std::chrono::milliseconds t) {
  const double s = static_cast<double>(t.count()) / 1000.0;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", s);
  return buf;
}
}  // namespace

Status Communicator::TimedOut(const std::string& what) const {
  return Unavailable("rank " + std::to_string(rank_) + " of '" + label_ + "' (" + backend() +
                     "): " + what + " timed out after " + SecondsText(timeout_));
}

Status Communicator::CheckPeer(int peer, const char* op) const {
  if (peer < 0 || peer >= size_ || peer == rank_) {
    return InvalidArgument(std::string(op) + ": peer " + std::to_string(peer) +
                           " is not another rank of '" + label_ + "' (size " +
                           std::to_string(size_) + ", this is rank " + std::to_string(rank_) +
                           ")");
  }
  return Status::Ok();
}

Status Communicator::SendString(const std::string& s, int peer) {
  at::Tensor n = at::tensor({static_cast<int64_t>(s.size())}, at::kLong);
  HYB_RETURN_IF_ERROR(Send(n, peer));
  if (s.empty()) return Status::Ok();
  at::Tensor bytes = at::empty({static_cast<int64_t>(s.size())}, at::kByte);
  std::memcpy(bytes.data_ptr(), s.data(), s.size());
  return Send(bytes, peer);
}

StatusOr<std::string> Communicator::RecvString(int peer) {
  at::Tensor n = at::zeros({1}, at::kLong);
  HYB_RETURN_IF_ERROR(Recv(n, peer));
  const int64_t len = n.item<int64_t>();
  if (len < 0 || len > (int64_t{1} << 34)) {
    return DataLoss("message from rank " + std::to_string(peer) + " of '" + label() +
                    "' announces " + std::to_string(len) + " bytes");
  }
  if (len == 0) return std::string();
  at::Tensor bytes = at::empty({len}, at::kByte);
  HYB_RETURN_IF_ERROR(Recv(bytes, peer));
  return std::string(static_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(len));
}

Status Communicator::BroadcastString(std::string* s, int root) {
  at::Tensor n = at::tensor({static_cast<int64_t>(rank() == root ? s->size() : 0)}, at::kLong);
  HYB_RETURN_IF_ERROR(Broadcast(n, root));
  const int64_t len = n.item<int64_t>();
  if (len == 0) {
    s->clear();
    return Status::Ok();
  }
  at::Tensor bytes = at::empty({len}, at::kByte);
  if (rank() == root) std::memcpy(bytes.data_ptr(), s->data(), s->size());
  HYB_RETURN_IF_ERROR(Broadcast(bytes, root));
  if (rank() != root) {
    s->assign(static_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(len));
  }
  return Status::Ok();
}

// --- In-process backend -----------------------------------------------------------------------
namespace {

constexpr size_t kMaxQueuedPerPeer = 8;  // messages a sender may run ahead of its receiver

std::string ShapeText(const at::Tensor& t) {
  return c10::str(t.sizes()) + " " + c10::toString(t.scalar_type());
}

// One world of ranks living in threads. Everything below `mu` is guarded by it.
struct InProcessWorld {
  explicit InProcessWorld(int n) : size(n) {}
  const int size;
  std::mutex mu;
  std::condition_variable cv;
  // Messages from (src, dst), oldest first.
  std::map<std::pair<int, int>, std::deque<at::Tensor>> mail;
  // Collective number k (each rank counts its own calls): what every rank deposited, and the
  // result the last one to arrive computed.
  struct Round {
    std::vector<at::Tensor> inputs;  // per rank; undefined until it arrives
    int arrived = 0, taken = 0;
    bool done = false;
    at::Tensor result;
    std::vector<std::pair<std::shared_ptr<InProcessWorld>, int>> split;  // per rank
    std::string error;  // the combine step failed
  };
  std::map<int64_t, Round> rounds;
};

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<InProcessWorld> world, int rank,
                        std::chrono::milliseconds timeout, std::string label)
      : Communicator(rank, world->size, std::move(label), timeout), world_(std::move(world)) {}

  std::string backend() const override { return "in-process"; }

  Status Send(const at::Tensor& t, int peer) override {
    HYB_RETURN_IF_ERROR(CheckPeer(peer, "send"));
    at::Tensor copy = t.detach().clone();
    std::unique_lock<std::mutex> lock(world_->mu);
    auto& q = world_->mail[{rank(), peer}];
    if (!world_->cv.wait_for(lock, timeout(), [&] { return q.size() < kMaxQueuedPerPeer; })) {
      return TimedOut("send to rank " + std::to_string(peer) + " (receiver " +
                      std::to_string(q.size()) + " messages behind)");
    }
    q.push_back(std::move(copy));
    world_->cv.notify_all();
    return Status::Ok();
  }

  Status Recv(at::Tensor& t, int peer) override {
    HYB_RETURN_IF_ERROR(CheckPeer(peer, "recv"));
    at::Tensor msg;
    {
      std::unique_lock<std::mutex> lock(world_->mu);
      auto& q = world_->mail[{peer, rank()}];
      if (!world_->cv.wait_for(lock, timeout(), [&] { return !q.empty(); })) {
        return TimedOut("recv from rank " + std::to_string(peer));
      }
      msg = std::move(q.front());
      q.pop_front();
      world_->cv.notify_all();
    }
    if (!msg.sizes().equals(t.sizes()) || msg.scalar_type() != t.scalar_type()) {
      return InvalidArgument("recv from rank " + std::to_string(peer) + " of '" + label() +
                             "': got " + ShapeText(msg) + ", expected " + ShapeText(t));
    }
    t.copy_(msg);
    return Status::Ok();
  }

  Status AllReduce(at::Tensor& t, ReduceOp op) override {
    at::Tensor result;
    HYB_RETURN_IF_ERROR(Collective(
        "all-reduce", t.detach().clone(),
        [op](const std::vector<at::Tensor>& in) {
          at::Tensor acc = in[0].clone();
          for (size_t r = 1; r < in.size(); ++r) {
            const at::Tensor x = in[r].to(acc.device());
            if (op == ReduceOp::kSum) acc.add_(x);
            if (op == ReduceOp::kMax) acc = at::maximum(acc, x);
            if (op == ReduceOp::kMin) acc = at::minimum(acc, x);
          }
          return acc;
        },
        &result));
    t.copy_(result);
    return Status::Ok();
  }

  Status Broadcast(at::Tensor& t, int root) override {
    if (root < 0 || root >= size()) return InvalidArgument("broadcast: no rank " + std::to_string(root));
    at::Tensor result;
    HYB_RETURN_IF_ERROR(Collective(
        "broadcast from rank " + std::to_string(root),
        rank() == root ? t.detach().clone() : at::Tensor(),
        [root](const std::vector<at::Tensor>& in) { return in[static_cast<size_t>(root)]; },
        &result));
    if (rank() != root) {
      if (!result.sizes().equals(t.sizes()) || result.scalar_type() != t.scalar_type()) {
        return InvalidArgument("broadcast from rank " + std::to_string(root) + ": got " +
                               ShapeText(result) + ", expected " + ShapeText(t));
      }
      t.copy_(result);
    }
    return Status::Ok();
  }

  Status Barrier() override {
    at::Tensor unused;
    return Collective(
        "barrier", at::zeros({1}), [](const std::vector<at::Tensor>&) { return at::Tensor(); },
        &unused);
  }

  Status Flush() override {
    std::unique_lock<std::mutex> lock(world_->mu);
    int behind = -1;
    const bool drained = world_->cv.wait_for(lock, timeout(), [&] {
      for (int p = 0; p < size(); ++p) {
        auto it = world_->mail.find({rank(), p});
        if (it != world_->mail.end() && !it->second.empty()) {
          behind = p;
          return false;
        }
      }
      return true;
    });
    if (!drained) return TimedOut("flush (rank " + std::to_string(behind) + " did not receive)");
    return Status::Ok();
  }

  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                const std::string& label) override {
    const int64_t k = next_round_++;
    std::unique_lock<std::mutex> lock(world_->mu);
    auto& round = world_->rounds[k];
    if (round.inputs.empty()) round.inputs.resize(static_cast<size_t>(size()));
    round.inputs[static_cast<size_t>(rank())] = at::tensor({int64_t{color}, int64_t{key}});
    if (++round.arrived == size()) {
      // The last to arrive forms the groups: same color, ordered by (key, rank).
      std::map<int, std::vector<std::pair<int, int>>> groups;  // color -> (key, rank)
      for (int r = 0; r < size(); ++r) {
        auto in = round.inputs[static_cast<size_t>(r)];
        groups[static_cast<int>(in[0].item<int64_t>())].push_back(
            {static_cast<int>(in[1].item<int64_t>()), r});
      }
      round.split.resize(static_cast<size_t>(size()));
      for (auto& [c, members] : groups) {
        std::sort(members.begin(), members.end());
        auto sub = std::make_shared<InProcessWorld>(static_cast<int>(members.size()));
        for (size_t i = 0; i < members.size(); ++i) {
          round.split[static_cast<size_t>(members[i].second)] = {sub, static_cast<int>(i)};
        }
      }
      round.done = true;
      world_->cv.notify_all();
    }
    if (!world_->cv.wait_for(lock, timeout(), [&] { return round.done; })) {
      return TimedOut("split" + Missing(round));
    }
    auto [sub, sub_rank] = round.split[static_cast<size_t>(rank())];
    if (++round.taken == size()) world_->rounds.erase(k);
    return std::unique_ptr<Communicator>(
        new InProcessCommunicator(std::move(sub), sub_rank, timeout(), label));
  }

 private:
  // " waiting for ranks 1, 3" for a round some ranks have not joined.
  std::string Missing(const InProcessWorld::Round& round) const {
    std::string s;
    for (int r = 0; r < size(); ++r) {
      if (!round.inputs[static_cast<size_t>(r)].defined() && r != rank()) {
        s += (s.empty() ? " waiting for rank " : ", ") + std::to_string(r);
      }
    }
    return s;
  }

  // Deposits `input`; the last rank to arrive computes `combine(inputs)`; every rank gets it.
  Status Collective(const std::string& what, at::Tensor input,
                    const std::function<at::Tensor(const std::vector<at::Tensor>&)>& combine,
                    at::Tensor* result) {
    const int64_t k = next_round_++;
    std::unique_lock<std::mutex> lock(world_->mu);
    auto& round = world_->rounds[k];
    if (round.inputs.empty()) round.inputs.resize(static_cast<size_t>(size()));
    // A rank that contributes nothing (a broadcast's receivers) still marks its arrival.
    round.inputs[static_cast<size_t>(rank())] = input.defined() ? input : at::zeros({0});
    if (++round.arrived == size()) {
      try {
        round.result = combine(round.inputs);
      } catch (const c10::Error& e) {
        round.error = e.what_without_backtrace();
      }
      round.done = true;
      world_->cv.notify_all();
    }
    if (!world_->cv.wait_for(lock, timeout(), [&] { return round.done; })) {
      return TimedOut(what + Missing(round));
    }
    *result = round.result;
    const std::string error = round.error;
    if (++round.taken == size()) world_->rounds.erase(k);
    if (!error.empty()) return Internal(what + " over '" + label() + "' failed: " + error);
    return Status::Ok();
  }

  std::shared_ptr<InProcessWorld> world_;
  int64_t next_round_ = 0;  // this rank's collective count (only its own thread calls)
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> MakeInProcessWorld(int size,
                                                              std::chrono::milliseconds timeout,
                                                              const std::string& label) {
  auto world = std::make_shared<InProcessWorld>(size);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < size; ++r) {
    out.push_back(std::make_unique<InProcessCommunicator>(world, r, timeout, label));
  }
  return out;
}

}  // namespace hyb::worker
