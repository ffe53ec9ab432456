// What deployments rely on in the `hybridize` binary: --flags-file (the Kubernetes ConfigMap) and
// --check-config (tests/k8s/check_manifests.py asks it about every container), run as real
// processes. HYB_SERVE_CLI (compiled in): the binary that runs `serve` (the coordinator-only
// build when HYB_COORDINATOR_CLI was configured); HYB_FULL_CLI: the full binary (for `worker`).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <tuple>
#include <utility>

#include "hyb/common/json_util.h"
#include "testing/temp_dir.h"

namespace hyb {
namespace {

// Runs `env_prefix binary args`, returns (exit code, stdout + stderr).
std::pair<int, std::string> RunBinary(const char* binary, const std::string& args,
                                      const std::string& env_prefix = "") {
  const std::string cmd = "env -u HYB_API_TOKEN -u HYB_WORKER_TOKEN " + env_prefix + " " +
                          std::string(binary) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

class DeployConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mkdir(dir_.File("storage").c_str(), 0755);
    mkdir(dir_.File("db").c_str(), 0755);
    Write(dir_.File("api"), "api-secret\n");
    Write(dir_.File("worker"), "worker-secret\n");
    Write(dir_.File("serve.flags"), "# the coordinator's settings\n--listen=0.0.0.0:9191\n"
                                    "--storage " + dir_.File("storage") + "\n\n"
                                    "--db=" + dir_.File("db/h.db") + "\n--lease-seconds=45\n");
  }
  std::string Serve(const std::string& extra) {
    return "serve --flags-file " + dir_.File("serve.flags") + " --token-file " + dir_.File("api") +
           " --worker-token-file " + dir_.File("worker") + " " + extra;
  }
  testing::TempDir dir_;
  const char* serve_ = HYB_SERVE_CLI;
  const char* full_ = HYB_FULL_CLI;
};

TEST_F(DeployConfigTest, CheckConfigPrintsTheSettingsOfTheFlagsFileAndCommandLine) {
  // The command line overrides the file (--lease-seconds), the file supplies the rest.
  auto [rc, out] = RunBinary(serve_, Serve("--lease-seconds 20 --check-config"));
  ASSERT_EQ(rc, 0) << out;
  const Json j = Json::parse(out);
  EXPECT_EQ(j["command"], "serve");
  EXPECT_EQ(j["listen"]["host"], "0.0.0.0");
  EXPECT_EQ(j["ports"], Json::array({9191}));
  EXPECT_EQ(j["storage"], dir_.File("storage"));
  EXPECT_EQ(j["db"], dir_.File("db/h.db"));
  EXPECT_EQ(j["lease_seconds"], 20.0);
  EXPECT_EQ(j["routes"]["readiness"], "/readyz");
  EXPECT_EQ(j["api_token"], "file " + dir_.File("api"));  // where from, never the token
  EXPECT_EQ(out.find("api-secret"), std::string::npos);
  // Nothing was created: --check-config opens no database.
  struct stat st{};
  EXPECT_NE(stat(dir_.File("db/h.db").c_str(), &st), 0);
}

TEST_F(DeployConfigTest, CheckConfigRejectsWhatWouldStopTheCommandNamingIt) {
  const std::pair<std::string, std::string> cases[] = {
      {Serve("--storage " + dir_.File("nope") + " --check-config"),
       "--storage " + dir_.File("nope") + ": no such directory"},
      {Serve("--db " + dir_.File("nodir/h.db") + " --check-config"),
       "--db " + dir_.File("nodir/") + ": no such directory"},
      {Serve("--tls-cert " + dir_.File("api") + " --check-config"),
       "give both --tls-cert and --tls-key"},
      {Serve("--tls-cert " + dir_.File("c.pem") + " --tls-key " + dir_.File("k.pem") +
             " --check-config"),
       "--tls-cert " + dir_.File("c.pem") + ": no such file"},
  };
  for (const auto& [args, message] : cases) {
    auto [rc, out] = RunBinary(serve_, args);
    EXPECT_EQ(rc, 1) << args;
    EXPECT_NE(out.find(message), std::string::npos) << args << "\n" << out;
  }
  // A HYB_* variable the command does not read (a typo, or another command's) fails the check
  // and is warned about when serving.
  auto [rc, out] = RunBinary(serve_, Serve("--check-config"), "HYB_LEASE_SECONDS=5");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("environment variable HYB_LEASE_SECONDS is set but `hybridize serve` does "
                     "not read it"),
            std::string::npos)
      << out;
}

TEST_F(DeployConfigTest, FlagsFileErrorsNameTheFileAndLine) {
  Write(dir_.File("bad1.flags"), "--listen=0.0.0.0:1\n# fine\n--bogus=1\n");
  Write(dir_.File("bad2.flags"), "--listen=0.0.0.0:1\nlisten=2\n");
  Write(dir_.File("bad3.flags"), "--flags-file=" + dir_.File("bad1.flags") + "\n");
  const std::pair<std::string, std::string> cases[] = {
      {"bad1.flags", "bad1.flags:3: unknown flag --bogus"},
      {"bad2.flags", "bad2.flags:2: expected '--name=value', '--name value' or '--name', got "
                     "'listen=2'"},
      {"bad3.flags", "bad3.flags:1: --flags-file cannot name another file"},
      {"missing.flags", "missing.flags"},
  };
  for (const auto& [file, message] : cases) {
    auto [rc, out] = RunBinary(serve_, "serve --storage x --flags-file " + dir_.File(file));
    EXPECT_EQ(rc, 2) << file << "\n" << out;
    EXPECT_NE(out.find(message), std::string::npos) << file << "\n" << out;
  }
  auto [rc, out] = RunBinary(serve_, "serve --flags-file a --flags-file b");
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("give --flags-file once"), std::string::npos) << out;
}

TEST_F(DeployConfigTest, WorkerCheckConfigChecksTheCoordinatorUrlAndStorage) {
  Write(dir_.File("worker.flags"), "--coordinator=http://hybridize-coordinator:8080\n"
                                   "--storage=" + dir_.File("storage") + "\n--threads 2\n");
  auto [rc, out] = RunBinary(full_, "worker --flags-file " + dir_.File("worker.flags") +
                                  " --token-file " + dir_.File("worker") +
                                  " --id hybridize-worker-0 --check-config",
                       "NCCL_NVLS_ENABLE=0");
  ASSERT_EQ(rc, 0) << out;
  const Json j = Json::parse(out);
  EXPECT_EQ(j["coordinator"], "http://hybridize-coordinator:8080");
  EXPECT_EQ(j["id"], "hybridize-worker-0");
  EXPECT_EQ(j["threads"], 2);
  EXPECT_EQ(j["ports"], Json::array());
  EXPECT_EQ(j["environment"]["libraries"][0], "NCCL_*");
  std::tie(rc, out) = RunBinary(full_, "worker --coordinator ftp://x:1 --storage " +
                                     dir_.File("storage") + " --check-config",
                          "HYB_WORKER_TOKEN=t");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("scheme 'ftp' is not http or https"), std::string::npos) << out;
}

}  // namespace
}  // namespace hyb
