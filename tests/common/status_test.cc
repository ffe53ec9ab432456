#include "hyb/common/status.h"

#include <gtest/gtest.h>

#include "hyb/common/logging.h"

namespace hyb {
namespace {

StatusOr<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgument("odd input " + std::to_string(x));
  return x / 2;
}

StatusOr<int> Quarter(int x) {
  HYB_ASSIGN_OR_RETURN(int h, Half(x));
  HYB_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckPositive(int x) {
  if (x <= 0) return InvalidArgument("not positive");
  return Status::Ok();
}

Status CheckBoth(int a, int b) {
  HYB_RETURN_IF_ERROR(CheckPositive(a));
  HYB_RETURN_IF_ERROR(CheckPositive(b).WithContext("second"));
  return Status::Ok();
}

TEST(StatusTest, OkAndErrorRendering) {
  EXPECT_TRUE(Status::Ok().ok());
  EXPECT_EQ(Status::Ok().ToString(), "OK");
  const Status s = DataLoss("x.safetensors: truncated");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_EQ(s.ToString(), "DATA_LOSS: x.safetensors: truncated");
  EXPECT_EQ(s.WithContext("loading").message(), "loading: x.safetensors: truncated");
  EXPECT_TRUE(Status::Ok().WithContext("ignored").ok());
}

TEST(StatusTest, StatusOrPropagates) {
  auto q = Quarter(12);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(*q, 3);
  auto bad = Quarter(6);  // 6 -> 3 -> odd
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "odd input 3");
  EXPECT_EQ(CheckBoth(1, -1).message(), "second: not positive");
  EXPECT_EQ(CheckBoth(-1, -1).message(), "not positive");
  EXPECT_TRUE(CheckBoth(1, 1).ok());
}

TEST(StatusTest, StatusOrHoldsMoveOnlyValues) {
  StatusOr<std::unique_ptr<int>> p(std::make_unique<int>(7));
  ASSERT_TRUE(p.ok());
  std::unique_ptr<int> owned = std::move(p).value();
  EXPECT_EQ(*owned, 7);
}

TEST(LoggingTest, ParsesLevelsAndFilters) {
  EXPECT_EQ(*ParseLogLevel("debug"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("warn"), LogLevel::kWarning);
  EXPECT_FALSE(ParseLogLevel("loud").ok());
  const LogLevel before = GetLogLevel();
  SetLogLevel(LogLevel::kError);
  EXPECT_FALSE(internal::LogEnabled(LogLevel::kWarning));
  EXPECT_TRUE(internal::LogEnabled(LogLevel::kError));
  ::testing::internal::CaptureStderr();
  HYB_LOG(Info) << "hidden";
  HYB_LOG(Error) << "shown " << 42;
  const std::string err = ::testing::internal::GetCapturedStderr();
  SetLogLevel(before);
  EXPECT_EQ(err.find("hidden"), std::string::npos);
  EXPECT_NE(err.find("shown 42"), std::string::npos);
  EXPECT_NE(err.find("status_test.cc"), std::string::npos);
}

}  // namespace
}  // namespace hyb
