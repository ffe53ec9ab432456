// The TCP backend: a full mesh of sockets between the ranks of a gang that no mpirun started (the
// service's workers on CPU). Messages carry the communicator's channel so that a split's traffic
// and its parent's share one connection per pair; collectives gather at rank 0 and fan out.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>

#include "hyb/worker/communicator.h"

namespace hyb::worker {
namespace {

using Clock = std::chrono::steady_clock;

class MemoryRendezvousStore final : public RendezvousStore {
 public:
  Status Set(const std::string& key, const std::string& value) override {
    std::lock_guard<std::mutex> lock(mu_);
    values_[key] = value;
    cv_.notify_all();
    return Status::Ok();
  }
  StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return values_.count(key) > 0; })) {
      return Unavailable("rendezvous key '" + key + "' was not set within the timeout");
    }
    return values_[key];
  }

 private:
  std::mutex mu_;  // guards values_
  std::condition_variable cv_;
  std::map<std::string, std::string> values_;
};

int RemainingMs(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::max<int64_t>(0, left.count()));
}

// One socket per peer, shared by every communicator split from the same mesh (one thread uses
// them: the rank's).
struct Mesh {
  ~Mesh() {
    for (int fd : fds) {
      if (fd >= 0) ::close(fd);
    }
  }
  std::vector<int> fds;  // by mesh rank; -1 for this rank
  // Messages read while waiting for another channel: (peer, channel) -> payloads.
  std::map<std::pair<int, uint32_t>, std::deque<std::string>> parked;
};

struct Header {
  uint32_t channel;
  uint32_t pad;
  uint64_t bytes;
};

class TcpCommunicator final : public Communicator {
 public:
  TcpCommunicator(std::shared_ptr<Mesh> mesh, std::vector<int> members, int rank,
                  uint32_t channel, std::chrono::milliseconds timeout, std::string label)
      : Communicator(rank, static_cast<int>(members.size()), std::move(label), timeout),
        mesh_(std::move(mesh)),
        members_(std::move(members)),
        channel_(channel) {}

  std::string backend() const override { return "tcp"; }

  Status Send(const at::Tensor& t, int peer) override {
    HYB_RETURN_IF_ERROR(CheckPeer(peer, "send"));
    HYB_RETURN_IF_ERROR(CheckCpu(t, "send"));
    const at::Tensor c = t.contiguous();
    return SendBytes(peer, c.data_ptr(), c.nbytes(), "send to rank " + std::to_string(peer));
  }

  Status Recv(at::Tensor& t, int peer) override {
    HYB_RETURN_IF_ERROR(CheckPeer(peer, "recv"));
    HYB_RETURN_IF_ERROR(CheckCpu(t, "recv"));
    HYB_ASSIGN_OR_RETURN(std::string bytes, RecvBytes(peer, "recv from rank " + std::to_string(peer)));
    if (bytes.size() != t.nbytes()) {
      return InvalidArgument("recv from rank " + std::to_string(peer) + " of '" + label() +
                             "': got " + std::to_string(bytes.size()) + " bytes, expected " +
                             std::to_string(t.nbytes()) + " (" + c10::str(t.sizes()) + " " +
                             c10::toString(t.scalar_type()) + ")");
    }
    at::Tensor target = t.is_contiguous() ? t : at::empty_like(t, at::MemoryFormat::Contiguous);
    std::memcpy(target.data_ptr(), bytes.data(), bytes.size());
    if (!target.is_same(t)) t.copy_(target);
    return Status::Ok();
  }

  Status AllReduce(at::Tensor& t, ReduceOp op) override {
    HYB_RETURN_IF_ERROR(CheckCpu(t, "all-reduce"));
    if (rank() == 0) {
      at::Tensor acc = t.clone();
      for (int r = 1; r < size(); ++r) {
        at::Tensor part = at::empty_like(t);
        HYB_RETURN_IF_ERROR(Recv(part, r).WithContext("all-reduce"));
        if (op == ReduceOp::kSum) acc.add_(part);
        if (op == ReduceOp::kMax) acc = at::maximum(acc, part);
        if (op == ReduceOp::kMin) acc = at::minimum(acc, part);
      }
      for (int r = 1; r < size(); ++r) HYB_RETURN_IF_ERROR(Send(acc, r).WithContext("all-reduce"));
      t.copy_(acc);
      return Status::Ok();
    }
    HYB_RETURN_IF_ERROR(Send(t, 0).WithContext("all-reduce"));
    return Recv(t, 0).WithContext("all-reduce");
  }

  Status Broadcast(at::Tensor& t, int root) override {
    if (root < 0 || root >= size()) return InvalidArgument("broadcast: no rank " + std::to_string(root));
    if (rank() == root) {
      for (int r = 0; r < size(); ++r) {
        if (r != root) HYB_RETURN_IF_ERROR(Send(t, r).WithContext("broadcast"));
      }
      return Status::Ok();
    }
    return Recv(t, root).WithContext("broadcast");
  }

  Status Barrier() override {
    at::Tensor one = at::ones({1});
    return AllReduce(one, ReduceOp::kSum).WithContext("barrier");
  }

  Status Flush() override { return Status::Ok(); }  // sends complete when they return

  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                const std::string& label) override {
    const uint32_t seq = splits_++;
    // Every rank sends (color, key) to rank 0, which answers with the group's members.
    at::Tensor mine = at::tensor(std::vector<int64_t>{color, key});
    std::vector<int> group;
    if (rank() == 0) {
      std::vector<std::array<int64_t, 3>> all = {{color, key, 0}};
      for (int r = 1; r < size(); ++r) {
        at::Tensor in = at::empty({2}, at::kLong);
        HYB_RETURN_IF_ERROR(Recv(in, r).WithContext("split"));
        all.push_back({in[0].item<int64_t>(), in[1].item<int64_t>(), r});
      }
      for (int r = size() - 1; r >= 0; --r) {
        std::vector<std::pair<int64_t, int>> same;  // (key, rank) of r's color
        for (const auto& a : all) {
          if (a[0] == all[static_cast<size_t>(r)][0]) same.push_back({a[1], static_cast<int>(a[2])});
        }
        std::sort(same.begin(), same.end());
        std::vector<int64_t> ranks;
        for (const auto& [k, who] : same) ranks.push_back(who);
        if (r == 0) {
          for (int64_t who : ranks) group.push_back(static_cast<int>(who));
        } else {
          HYB_RETURN_IF_ERROR(SendBytes(r, ranks.data(), ranks.size() * sizeof(int64_t), "split"));
        }
      }
    } else {
      HYB_RETURN_IF_ERROR(Send(mine, 0).WithContext("split"));
      HYB_ASSIGN_OR_RETURN(std::string bytes, RecvBytes(0, "split"));
      std::vector<int64_t> ranks(bytes.size() / sizeof(int64_t));
      std::memcpy(ranks.data(), bytes.data(), bytes.size());
      for (int64_t who : ranks) group.push_back(static_cast<int>(who));
    }
    std::vector<int> members;
    int sub_rank = -1;
    for (int who : group) {
      if (who == rank()) sub_rank = static_cast<int>(members.size());
      members.push_back(members_[static_cast<size_t>(who)]);
    }
    // The same channel on every member: derived from the parent's, the split's number and color.
    const uint32_t channel = channel_ * 1000003u + seq * 131u + static_cast<uint32_t>(color) + 1u;
    return std::unique_ptr<Communicator>(
        new TcpCommunicator(mesh_, std::move(members), sub_rank, channel, timeout(), label));
  }

 private:
  Status CheckCpu(const at::Tensor& t, const char* op) const {
    if (!t.defined() || !t.device().is_cpu()) {
      return InvalidArgument(std::string(op) + " over '" + label() +
                             "': the TCP backend moves CPU tensors only");
    }
    return Status::Ok();
  }

  Status Lost(int peer, const std::string& what, const std::string& why) const {
    return Unavailable("rank " + std::to_string(rank()) + " of '" + label() + "' (tcp): " + what +
                       ": connection to rank " + std::to_string(peer) + " " + why);
  }

  Status WriteAll(int peer, const void* data, size_t n, Clock::time_point deadline,
                  const std::string& what) {
    const int fd = mesh_->fds[static_cast<size_t>(members_[static_cast<size_t>(peer)])];
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      pollfd pfd{fd, POLLOUT, 0};
      const int ready = ::poll(&pfd, 1, RemainingMs(deadline));
      if (ready == 0) return TimedOut(what);
      if (ready < 0 && errno == EINTR) continue;
      const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        return Lost(peer, what, std::string("failed: ") + std::strerror(errno));
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    return Status::Ok();
  }

  Status ReadAll(int peer, void* data, size_t n, Clock::time_point deadline,
                 const std::string& what) {
    const int fd = mesh_->fds[static_cast<size_t>(members_[static_cast<size_t>(peer)])];
    char* p = static_cast<char*>(data);
    while (n > 0) {
      pollfd pfd{fd, POLLIN, 0};
      const int ready = ::poll(&pfd, 1, RemainingMs(deadline));
      if (ready == 0) return TimedOut(what);
      if (ready < 0 && errno == EINTR) continue;
      const ssize_t r = ::recv(fd, p, n, 0);
      if (r == 0) return Lost(peer, what, "was closed (the rank is gone)");
      if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        return Lost(peer, what, std::string("failed: ") + std::strerror(errno));
      }
      p += r;
      n -= static_cast<size_t>(r);
    }
    return Status::Ok();
  }

  Status SendBytes(int peer, const void* data, size_t n, const std::string& what) {
    const auto deadline = Clock::now() + timeout();
    Header h{channel_, 0, n};
    HYB_RETURN_IF_ERROR(WriteAll(peer, &h, sizeof h, deadline, what));
    return WriteAll(peer, data, n, deadline, what);
  }

  StatusOr<std::string> RecvBytes(int peer, const std::string& what) {
    const int mesh_peer = members_[static_cast<size_t>(peer)];
    auto& mine = mesh_->parked[{mesh_peer, channel_}];
    if (!mine.empty()) {
      std::string out = std::move(mine.front());
      mine.pop_front();
      return out;
    }
    const auto deadline = Clock::now() + timeout();
    for (;;) {
      Header h{};
      HYB_RETURN_IF_ERROR(ReadAll(peer, &h, sizeof h, deadline, what));
      if (h.bytes > (uint64_t{1} << 36)) return Lost(peer, what, "sent a corrupt header");
      std::string bytes(h.bytes, '\0');
      HYB_RETURN_IF_ERROR(ReadAll(peer, bytes.data(), bytes.size(), deadline, what));
      if (h.channel == channel_) return bytes;
      mesh_->parked[{mesh_peer, h.channel}].push_back(std::move(bytes));  // another communicator's
    }
  }

  std::shared_ptr<Mesh> mesh_;
  std::vector<int> members_;  // communicator rank -> mesh rank
  uint32_t channel_;
  uint32_t splits_ = 0;
};

Status SocketError(const std::string& what) {
  return IoError("tcp communicator: " + what + ": " + std::strerror(errno));
}

void Tune(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

}  // namespace

std::shared_ptr<RendezvousStore> MakeMemoryRendezvousStore() {
  return std::make_shared<MemoryRendezvousStore>();
}

StatusOr<std::unique_ptr<Communicator>> TcpConnect(RendezvousStore& store,
                                                   const std::string& prefix, int rank, int size,
                                                   const std::string& advertise_host,
                                                   std::chrono::milliseconds timeout,
                                                   const std::string& label) {
  if (size < 1 || rank < 0 || rank >= size) {
    return InvalidArgument("tcp communicator: rank " + std::to_string(rank) + " of " +
                           std::to_string(size));
  }
  const auto deadline = Clock::now() + timeout;
  auto mesh = std::make_shared<Mesh>();
  mesh->fds.assign(static_cast<size_t>(size), -1);
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) return SocketError("socket");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } close_listener{listener};
  int one = 1;
  ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = 0;
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return SocketError("bind");
  }
  if (::listen(listener, size) != 0) return SocketError("listen");
  socklen_t len = sizeof addr;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  HYB_RETURN_IF_ERROR(store.Set(prefix + "/addr/" + std::to_string(rank),
                                advertise_host + ":" + std::to_string(ntohs(addr.sin_port))));
  // Connect to every rank below, saying who we are.
  for (int peer = 0; peer < rank; ++peer) {
    HYB_ASSIGN_OR_RETURN(std::string where,
                         store.Get(prefix + "/addr/" + std::to_string(peer),
                                   std::chrono::milliseconds(RemainingMs(deadline))));
    const size_t colon = where.rfind(':');
    if (colon == std::string::npos) return DataLoss("rendezvous address '" + where + "' has no port");
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (::getaddrinfo(where.substr(0, colon).c_str(), where.substr(colon + 1).c_str(), &hints,
                      &found) != 0 || found == nullptr) {
      return Unavailable("tcp communicator: cannot resolve rank " + std::to_string(peer) +
                         "'s address '" + where + "'");
    }
    int fd = -1;
    for (;;) {
      fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (::connect(fd, found->ai_addr, found->ai_addrlen) == 0) break;
      ::close(fd);
      fd = -1;
      if (Clock::now() > deadline) break;
      ::usleep(20000);
    }
    ::freeaddrinfo(found);
    if (fd < 0) {
      return Unavailable("rank " + std::to_string(rank) + " of '" + label +
                         "' (tcp): connecting to rank " + std::to_string(peer) + " at " + where +
                         " timed out");
    }
    Tune(fd);
    const int32_t hello = rank;
    if (::send(fd, &hello, sizeof hello, MSG_NOSIGNAL) != sizeof hello) {
      ::close(fd);
      return SocketError("hello to rank " + std::to_string(peer));
    }
    mesh->fds[static_cast<size_t>(peer)] = fd;
  }
  // Accept every rank above.
  for (int accepted = rank + 1; accepted < size; ++accepted) {
    pollfd pfd{listener, POLLIN, 0};
    if (::poll(&pfd, 1, RemainingMs(deadline)) <= 0) {
      std::string missing;
      for (int p = rank + 1; p < size; ++p) {
        if (mesh->fds[static_cast<size_t>(p)] < 0) missing += (missing.empty() ? "" : ", ") + std::to_string(p);
      }
      return Unavailable("rank " + std::to_string(rank) + " of '" + label +
                         "' (tcp): rank(s) " + missing + " did not connect within the timeout");
    }
    const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return SocketError("accept");
    Tune(fd);
    int32_t hello = -1;
    pollfd in{fd, POLLIN, 0};
    if (::poll(&in, 1, RemainingMs(deadline)) <= 0 ||
        ::recv(fd, &hello, sizeof hello, MSG_WAITALL) != sizeof hello || hello <= rank ||
        hello >= size || mesh->fds[static_cast<size_t>(hello)] >= 0) {
      ::close(fd);
      return DataLoss("tcp communicator: a connection did not introduce itself as a rank above " +
                      std::to_string(rank));
    }
    mesh->fds[static_cast<size_t>(hello)] = fd;
  }
  std::vector<int> members(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) members[static_cast<size_t>(r)] = r;
  return std::unique_ptr<Communicator>(
      new TcpCommunicator(std::move(mesh), std::move(members), rank, 0, timeout, label));
}

}  // namespace hyb::worker
