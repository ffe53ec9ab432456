// The coordinator's request handling (Service::Handle) on a real SQLite file, without sockets:
// authentication, errors that name their field, and that refused requests store nothing. The
// whole service with real processes is tests/integration/service_test.cc.
#include "hyb/coordinator/service.h"

#include <gtest/gtest.h>

#include "testing/temp_dir.h"

namespace hyb::coordinator {
namespace {

using hyb::testing::TempDir;

class ServiceHandleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServiceOptions o;
    o.storage_root = dir_.File("store");
    o.api_token = "user-token";
    o.worker_token = "worker-token";
    o.long_poll_seconds = 0.2;
    auto s = Service::Create(o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    service_ = std::move(s).value();
    ASSERT_TRUE(service_->Start().ok());
  }

  http::Response Call(const std::string& method, const std::string& path,
                      const std::string& body = "", const std::string& token = "user-token",
                      std::map<std::string, std::string> query = {}) {
    http::Request r;
    r.method = method;
    r.path = path;
    r.target = path;
    r.query = std::move(query);
    r.body = body;
    if (!token.empty()) r.headers["authorization"] = "Bearer " + token;
    return service_->Handle(r);
  }
  static Json Body(const http::Response& r) { return Json::parse(r.body, nullptr, false); }
  static std::string Field(const http::Response& r) { return Body(r)["error"].value("field", ""); }
  size_t Jobs() { return Body(Call("GET", "/v1/jobs"))["jobs"].size(); }

  TempDir dir_;
  std::unique_ptr<Service> service_;
};

TEST_F(ServiceHandleTest, HealthNeedsNoTokenEverythingElseDoes) {
  EXPECT_EQ(Call("GET", "/healthz", "", "").status, 200);
  EXPECT_EQ(Call("GET", "/readyz", "", "").status, 200);
  auto missing = Call("GET", "/v1/jobs", "", "");
  EXPECT_EQ(missing.status, 401);
  EXPECT_EQ(Field(missing), "Authorization");
  EXPECT_EQ(Call("GET", "/v1/jobs", "", "nope").status, 401);
  // Each side's token opens only its own routes.
  EXPECT_EQ(Call("GET", "/v1/jobs", "", "worker-token").status, 401);
  EXPECT_EQ(Call("POST", "/v1/worker/register", R"({"worker_id": "w"})", "user-token").status, 401);
  EXPECT_EQ(Call("GET", "/v1/jobs").status, 200);
  EXPECT_EQ(Call("GET", "/v1/nothing").status, 404);
  auto wrong_method = Call("DELETE", "/v1/jobs");
  EXPECT_EQ(wrong_method.status, 405);
}

TEST_F(ServiceHandleTest, BadSpecsNameTheirFieldAndStoreNothing) {
  auto malformed = Call("POST", "/v1/jobs", "{\"job_id\": ");
  EXPECT_EQ(malformed.status, 400);
  EXPECT_NE(Body(malformed)["error"].value("message", "").find("request body"), std::string::npos)
      << malformed.body;
  const Json spec = {{"job_id", "j1"},
                     {"teacher", "no-such-teacher"},
                     {"distill", {{"data", "data"}}},
                     {"task", {{"type", "generate"}, {"validation", "v.jsonl"}}},
                     {"search", {{"tolerance", 0.1}}}};
  Json unknown = spec;
  unknown["colour"] = "blue";
  auto r = Call("POST", "/v1/jobs", unknown.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("colour"), std::string::npos) << r.body;
  Json bad_type = spec;
  bad_type["task"]["type"] = "essay";
  r = Call("POST", "/v1/jobs", bad_type.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(Field(r), "task.type") << r.body;
  // The schema is fine, the inputs are not: validation names the field (nothing is loaded).
  r = Call("POST", "/v1/jobs", spec.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(Field(r), "teacher") << r.body;
  r = Call("POST", "/v1/jobs", spec.dump(), "user-token", {{"validate_only", "maybe"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(Field(r), "validate_only");
  EXPECT_EQ(Jobs(), 0u);
  EXPECT_EQ(Call("GET", "/v1/jobs/j1").status, 404);
  EXPECT_EQ(Call("POST", "/v1/jobs/j1/cancel").status, 404);
  EXPECT_EQ(Call("GET", "/v1/jobs/j1/events").status, 404);
  EXPECT_EQ(Call("GET", "/v1/jobs/j1/report").status, 404);
}

TEST_F(ServiceHandleTest, WorkersRegisterBeforeLeasingAndGetNoTaskWhenNoneIsQueued) {
  auto unregistered = Call("POST", "/v1/worker/lease", R"({"worker_id": "w1"})", "worker-token");
  EXPECT_EQ(unregistered.status, 404);
  EXPECT_EQ(Field(unregistered), "worker_id");
  EXPECT_EQ(Call("POST", "/v1/worker/register", R"({"host": "h"})", "worker-token").status, 400);
  auto reg =
      Call("POST", "/v1/worker/register", R"({"worker_id": "w1", "host": "h"})", "worker-token");
  ASSERT_EQ(reg.status, 200) << reg.body;
  EXPECT_GT(Body(reg).value("heartbeat_seconds", 0.0), 0);
  auto lease = Call("POST", "/v1/worker/lease", R"({"worker_id": "w1", "wait_seconds": 0.1})",
                    "worker-token");
  EXPECT_EQ(lease.status, 204);
  auto hb =
      Call("POST", "/v1/worker/tasks/nope/heartbeat", R"({"worker_id": "w1"})", "worker-token");
  EXPECT_EQ(hb.status, 404);
  const Json workers = Body(Call("GET", "/v1/workers"));
  ASSERT_EQ(workers["workers"].size(), 1u);
  EXPECT_EQ(workers["workers"][0]["state"], "idle");
  EXPECT_EQ(workers["workers"][0]["info"]["host"], "h");
}

TEST_F(ServiceHandleTest, DrainingRefusesNewWork) {
  service_->Stop();
  EXPECT_EQ(Call("GET", "/readyz", "", "").status, 503);
  EXPECT_EQ(Call("GET", "/healthz", "", "").status, 200);
  EXPECT_EQ(Call("POST", "/v1/jobs", "{}").status, 503);
}

}  // namespace
}  // namespace hyb::coordinator
