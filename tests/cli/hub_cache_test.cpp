// Repo ids resolved in the local Hugging Face cache, on a cache tree built here as the hub client
// lays it out: models--ORG--NAME/{blobs,refs,snapshots}, shards as symlinks into blobs/.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "io/hub_cache.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;

constexpr const char* kMain = "0123456789abcdef0123456789abcdef01234567";
constexpr const char* kOld = "89abcdef0123456789abcdef0123456789abcdef";

// Env var set for the test's lifetime (the CLI child inherits it).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* v = std::getenv(name)) old_ = v;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// Moves a synthesized checkpoint into the cache: each file becomes a blob named by a fake hash,
// and the snapshot holds relative symlinks to the blobs, as huggingface_hub writes them.
void add_snapshot(const fs::path& repo, const std::string& commit, const fs::path& checkpoint) {
  fs::create_directories(repo / "blobs");
  fs::create_directories(repo / "snapshots" / commit);
  int n = 0;
  for (const auto& e : fs::directory_iterator(checkpoint)) {
    const std::string blob = commit.substr(0, 8) + "blob" + std::to_string(n++);
    fs::copy_file(e.path(), repo / "blobs" / blob);
    fs::create_symlink(fs::path("..") / ".." / "blobs" / blob,
                       repo / "snapshots" / commit / e.path().filename());
  }
}

void write_ref(const fs::path& repo, const std::string& name, const std::string& commit) {
  fs::create_directories((repo / "refs" / name).parent_path());
  std::ofstream(repo / "refs" / name) << commit;  // no trailing newline, as the hub writes it
}

class HubCache : public ::testing::Test {
 protected:
  void SetUp() override {
    SynthOptions a, b;
    a.seed = 1;
    b.seed = 2;
    synthesize_checkpoint(dir_ / "a", a);
    synthesize_checkpoint(dir_ / "b", b);
    repo_ = dir_ / "hub" / "models--XiaomiMiMo--MiMo-V2-Flash";
    add_snapshot(repo_, kMain, dir_ / "a");
    add_snapshot(repo_, kOld, dir_ / "b");
    write_ref(repo_, "main", kMain);
    write_ref(repo_, "v0", kOld);
  }
  test::TempDir dir_;
  fs::path repo_;
};

TEST_F(HubCache, RepoIdsAndRevisionsResolveToSnapshots) {
  ScopedEnv cache("HF_HUB_CACHE", (dir_ / "hub").string());
  EXPECT_EQ(io::resolve_checkpoint("XiaomiMiMo/MiMo-V2-Flash"), repo_ / "snapshots" / kMain);
  EXPECT_EQ(io::resolve_checkpoint("XiaomiMiMo/MiMo-V2-Flash", "v0"), repo_ / "snapshots" / kOld);
  EXPECT_EQ(io::resolve_checkpoint("XiaomiMiMo/MiMo-V2-Flash", kOld), repo_ / "snapshots" / kOld);
  // A local folder wins over the cache; a revision with it is an error.
  EXPECT_EQ(io::resolve_checkpoint((dir_ / "a").string()), dir_ / "a");
  EXPECT_THROW(io::resolve_checkpoint((dir_ / "a").string(), "main"), Error);
}

TEST_F(HubCache, CacheLocationFollowsTheHubsVariables) {
  ::unsetenv("HF_HUB_CACHE");
  ::unsetenv("HUGGINGFACE_HUB_CACHE");
  {
    ScopedEnv home("HF_HOME", (dir_ / "hfhome").string());
    EXPECT_EQ(io::hub_cache_dir(), dir_ / "hfhome" / "hub");
  }
  {
    ScopedEnv home("HOME", (dir_ / "user").string());
    ::unsetenv("HF_HOME");
    ::unsetenv("XDG_CACHE_HOME");
    EXPECT_EQ(io::hub_cache_dir(), dir_ / "user" / ".cache" / "huggingface" / "hub");
  }
  ScopedEnv hub("HF_HUB_CACHE", (dir_ / "x").string());
  EXPECT_EQ(io::hub_cache_dir(), dir_ / "x");
}

TEST_F(HubCache, EveryReadingCommandTakesARepoId) {
  ScopedEnv cache("HF_HUB_CACHE", (dir_ / "hub").string());
  auto r = test::run_cli({"inspect", "XiaomiMiMo/MiMo-V2-Flash", "--headers-only"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cli({"from-hf", "XiaomiMiMo/MiMo-V2-Flash", (dir_ / "n_old").string(), "--revision",
                     "v0", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cli({"from-hf", (dir_ / "b").string(), (dir_ / "n_b").string(), "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::read_bytes(dir_ / "n_old" / "model.safetensors"),
            test::read_bytes(dir_ / "n_b" / "model.safetensors"));
  r = test::run_cli({"verify", "XiaomiMiMo/MiMo-V2-Flash", (dir_ / "a").string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cli({"dequantize", "XiaomiMiMo/MiMo-V2-Flash", (dir_ / "dq").string(), "--quiet"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(HubCache, WhatIsNotInTheCacheIsAClearError) {
  ScopedEnv cache("HF_HUB_CACHE", (dir_ / "hub").string());
  auto r = test::run_cli({"inspect", "XiaomiMiMo/Not-There"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(
      r.err.find("neither a folder nor a repo id in the local Hugging Face cache (looked for " +
                 (dir_ / "hub" / "models--XiaomiMiMo--Not-There").string()),
      std::string::npos)
      << r.err;
  r = test::run_cli({"inspect", "XiaomiMiMo/MiMo-V2-Flash", "--revision", "v9"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("revision \"v9\" is not in the local Hugging Face cache"), std::string::npos)
      << r.err;
  r = test::run_cli({"inspect", "XiaomiMiMo/MiMo-V2-Flash", "--revision", "../../x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("is not a branch, tag or commit name"), std::string::npos) << r.err;
  // A shard missing from a snapshot (its blob never downloaded): the dangling link is named.
  fs::remove(repo_ / "blobs" / (std::string(kMain).substr(0, 8) + "blob0"));
  for (const auto& e : fs::directory_iterator(repo_ / "blobs"))
    if (e.path().filename().string().starts_with(std::string(kMain).substr(0, 8))) {
      fs::remove(e.path());
      break;
    }
  r = test::run_cli({"from-hf", "XiaomiMiMo/MiMo-V2-Flash", (dir_ / "n").string(), "--quiet"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find((repo_ / "snapshots" / kMain).string()), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "n" / "model.safetensors"));
}

}  // namespace
}  // namespace moeckpt
