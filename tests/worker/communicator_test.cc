// The communicator's contract on the in-process backend: every collective, point-to-point order,
// strings, splits, and every wait's timeout naming what it waited for.
#include "hyb/worker/communicator.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <thread>

namespace hyb::worker {
namespace {

using std::chrono::milliseconds;

// Runs body(rank, comm) on one thread per rank and joins them.
void OnRanks(std::vector<std::unique_ptr<Communicator>>& comms,
             const std::function<void(int, Communicator&)>& body) {
  std::vector<std::thread> threads;
  for (size_t r = 0; r < comms.size(); ++r) {
    threads.emplace_back([&, r] { body(static_cast<int>(r), *comms[r]); });
  }
  for (auto& t : threads) t.join();
}

TEST(CommunicatorTest, PointToPointKeepsOrderAndChecksShapes) {
  auto comms = MakeInProcessWorld(2, milliseconds(5000));
  std::vector<float> got;
  Status mismatch;
  OnRanks(comms, [&](int rank, Communicator& c) {
    if (rank == 0) {
      for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.Send(at::full({3}, float(i)), 1).ok());
      ASSERT_TRUE(c.Send(at::zeros({2, 2}), 1).ok());
      ASSERT_TRUE(c.Flush().ok());
    } else {
      for (int i = 0; i < 5; ++i) {
        at::Tensor t = at::empty({3});
        ASSERT_TRUE(c.Recv(t, 0).ok());
        got.push_back(t[2].item<float>());
      }
      at::Tensor wrong = at::empty({4});
      mismatch = c.Recv(wrong, 0);
    }
  });
  EXPECT_EQ(got, (std::vector<float>{0, 1, 2, 3, 4}));
  EXPECT_EQ(mismatch.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(mismatch.message().find("got [2, 2] Float, expected [4] Float"), std::string::npos)
      << mismatch.ToString();
  EXPECT_EQ(comms[0]->Send(at::zeros({1}), 0).code(), StatusCode::kInvalidArgument);  // itself
  EXPECT_EQ(comms[0]->Send(at::zeros({1}), 2).code(), StatusCode::kInvalidArgument);
}

TEST(CommunicatorTest, AllReduceBroadcastBarrierOverThreeRanks) {
  auto comms = MakeInProcessWorld(3, milliseconds(5000));
  std::vector<at::Tensor> sum(3), max(3), min(3), bcast(3);
  OnRanks(comms, [&](int rank, Communicator& c) {
    sum[rank] = at::tensor({1.0 * rank, 10.0});
    max[rank] = at::tensor({int64_t{rank}, int64_t{-rank}});
    min[rank] = max[rank].clone();
    bcast[rank] = rank == 2 ? at::tensor({7.5f, 8.5f}) : at::zeros({2});
    ASSERT_TRUE(c.AllReduce(sum[rank]).ok());
    ASSERT_TRUE(c.AllReduce(max[rank], ReduceOp::kMax).ok());
    ASSERT_TRUE(c.AllReduce(min[rank], ReduceOp::kMin).ok());
    ASSERT_TRUE(c.Broadcast(bcast[rank], 2).ok());
    ASSERT_TRUE(c.Barrier().ok());
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(sum[r].equal(at::tensor({3.0, 30.0}))) << sum[r];
    EXPECT_TRUE(max[r].equal(at::tensor({int64_t{2}, int64_t{0}}))) << max[r];
    EXPECT_TRUE(min[r].equal(at::tensor({int64_t{0}, int64_t{-2}}))) << min[r];
    EXPECT_TRUE(bcast[r].equal(at::tensor({7.5f, 8.5f}))) << bcast[r];
  }
}

TEST(CommunicatorTest, StringsTravelWhole) {
  auto comms = MakeInProcessWorld(2, milliseconds(5000));
  std::string received, broadcast_seen;
  OnRanks(comms, [&](int rank, Communicator& c) {
    std::string b = rank == 1 ? "{\"op\":\"stop\"}" : "";
    ASSERT_TRUE(c.BroadcastString(&b, 1).ok());
    if (rank == 0) {
      broadcast_seen = b;
      ASSERT_TRUE(c.SendString(std::string(1000, 'x') + "end", 1).ok());
      ASSERT_TRUE(c.SendString("", 1).ok());
    } else {
      auto s = c.RecvString(0);
      ASSERT_TRUE(s.ok());
      received = *s;
      auto empty = c.RecvString(0);
      ASSERT_TRUE(empty.ok());
      EXPECT_TRUE(empty->empty());
    }
  });
  EXPECT_EQ(broadcast_seen, "{\"op\":\"stop\"}");
  EXPECT_EQ(received.size(), 1003u);
  EXPECT_EQ(received.substr(1000), "end");
}

TEST(CommunicatorTest, SplitFormsGroupsOrderedByKey) {
  auto comms = MakeInProcessWorld(4, milliseconds(5000));
  std::vector<int> sub_rank(4), sub_size(4);
  std::vector<at::Tensor> sums(4);
  OnRanks(comms, [&](int rank, Communicator& c) {
    // Colors: even and odd ranks; keys reverse the order.
    auto sub = c.Split(rank % 2, -rank, "parity");
    ASSERT_TRUE(sub.ok()) << sub.status().ToString();
    sub_rank[rank] = (*sub)->rank();
    sub_size[rank] = (*sub)->size();
    sums[rank] = at::tensor({double(rank)});
    ASSERT_TRUE((*sub)->AllReduce(sums[rank]).ok());
    EXPECT_EQ((*sub)->label(), "parity");
  });
  EXPECT_EQ(sub_rank, (std::vector<int>{1, 1, 0, 0}));
  EXPECT_EQ(sub_size, (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(sums[0].item<double>(), 2.0);  // ranks 0 + 2
  EXPECT_EQ(sums[3].item<double>(), 4.0);  // ranks 1 + 3
}

// Every wait gives up after the timeout with a message naming the operation and the peers.
TEST(CommunicatorTest, EveryWaitTimesOutNamingThePeer) {
  auto comms = MakeInProcessWorld(3, milliseconds(200), "pipeline");
  Communicator& c = *comms[0];
  auto expect_timeout = [](const Status& s, const std::string& what) {
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
    EXPECT_NE(s.message().find(what), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("of 'pipeline' (in-process)"), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("timed out after 0.2 s"), std::string::npos) << s.ToString();
  };
  at::Tensor t = at::zeros({2});
  const auto start = std::chrono::steady_clock::now();
  expect_timeout(c.Recv(t, 1), "recv from rank 1");
  expect_timeout(c.AllReduce(t), "all-reduce waiting for rank 1, 2");
  expect_timeout(c.Broadcast(t, 2), "broadcast from rank 2 waiting for rank 1, 2");
  expect_timeout(c.Barrier(), "barrier waiting for rank 1, 2");
  expect_timeout(c.Split(0, 0, "x").status(), "split waiting for rank 1, 2");
  // A receiver that never drains: the sender may run 8 messages ahead, then waits.
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(c.Send(t, 2).ok());
  expect_timeout(c.Send(t, 2), "send to rank 2 (receiver 8 messages behind)");
  expect_timeout(c.Flush(), "flush (rank 2 did not receive)");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(seconds, 7 * 0.2);
  EXPECT_LT(seconds, 7 * 0.2 + 5);  // bounded: no wait lasts much longer than its timeout
}

TEST(CommunicatorTest, BackendsThisBuildLacksSaySo) {
  if (!NcclAvailable()) {
    auto id = NcclNewUniqueId();
    EXPECT_EQ(id.status().code(), StatusCode::kUnimplemented);
    EXPECT_NE(id.status().message().find("HYB_CUDA=ON"), std::string::npos);
  }
  if (!MpiAvailable()) {
    EXPECT_EQ(MpiInit().code(), StatusCode::kUnimplemented);
  }
}

// The TCP mesh over loopback, rendezvous in memory: the same contract, and a rank that goes
// away fails its peers at once, naming it.
TEST(CommunicatorTest, TcpMeshCarriesEveryOperation) {
  auto store = MakeMemoryRendezvousStore();
  std::vector<std::unique_ptr<Communicator>> comms(3);
  {
    std::vector<std::thread> joins;
    for (int r = 0; r < 3; ++r) {
      joins.emplace_back([&, r] {
        auto c = TcpConnect(*store, "job/distill/g1", r, 3, "127.0.0.1", milliseconds(10000));
        ASSERT_TRUE(c.ok()) << c.status().ToString();
        comms[static_cast<size_t>(r)] = std::move(*c);
      });
    }
    for (auto& t : joins) t.join();
  }
  for (const auto& c : comms) ASSERT_NE(c, nullptr);
  std::vector<at::Tensor> sum(3), bcast(3), sub_sum(3);
  std::vector<std::string> got(3);
  OnRanks(comms, [&](int rank, Communicator& c) {
    EXPECT_EQ(c.backend(), "tcp");
    sum[rank] = at::tensor({1.0 * rank, 2.0});
    ASSERT_TRUE(c.AllReduce(sum[rank]).ok());
    bcast[rank] = rank == 1 ? at::tensor({4.0f}) : at::zeros({1});
    ASSERT_TRUE(c.Broadcast(bcast[rank], 1).ok());
    ASSERT_TRUE(c.Barrier().ok());
    // A split's traffic and the parent's share the sockets without mixing.
    auto sub = c.Split(rank == 2 ? 1 : 0, rank, "pair");
    ASSERT_TRUE(sub.ok()) << sub.status().ToString();
    if (rank == 0) ASSERT_TRUE(c.SendString("parent", 1).ok());
    sub_sum[rank] = at::tensor({double(rank + 1)});
    ASSERT_TRUE((*sub)->AllReduce(sub_sum[rank]).ok());
    if (rank == 1) {
      auto s = c.RecvString(0);
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      got[1] = *s;
    }
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(sum[r].equal(at::tensor({3.0, 6.0}))) << sum[r];
    EXPECT_EQ(bcast[r].item<float>(), 4.0f);
  }
  EXPECT_EQ(sub_sum[0].item<double>(), 3.0);  // ranks 0 and 1
  EXPECT_EQ(sub_sum[2].item<double>(), 3.0);  // rank 2 alone
  EXPECT_EQ(got[1], "parent");
  // Rank 2 goes away: rank 0 hears of it at once, not after the timeout.
  comms[2].reset();
  at::Tensor t = at::zeros({1});
  const auto start = std::chrono::steady_clock::now();
  Status s = comms[0]->Recv(t, 2);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_NE(s.message().find("connection to rank 2 was closed"), std::string::npos) << s.ToString();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
  // And a silent peer after the timeout.
  comms[0]->set_timeout(milliseconds(300));
  Status silent = comms[0]->Recv(t, 1);
  EXPECT_NE(silent.message().find("recv from rank 1 timed out after 0.3 s"), std::string::npos)
      << silent.ToString();
}

TEST(CommunicatorTest, TcpJoinNamesTheRanksThatNeverCame) {
  auto store = MakeMemoryRendezvousStore();
  auto c = TcpConnect(*store, "job/distill/g7", 0, 3, "127.0.0.1", milliseconds(400));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("rank(s) 1, 2 did not connect"), std::string::npos)
      << c.status().ToString();
  // A later rank waits for the earlier ones' addresses, which a stale attempt's keys never give.
  auto late = TcpConnect(*store, "job/distill/g8", 1, 2, "127.0.0.1", milliseconds(300));
  ASSERT_FALSE(late.ok());
  EXPECT_NE(late.status().message().find("job/distill/g8/addr/0"), std::string::npos)
      << late.status().ToString();
}

}  // namespace
}  // namespace hyb::worker
