// The moeckpt command line: thin wrappers over the library; errors become one line on stderr and
// exit code 1 (2 for usage errors).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <limits>

#include "cli/interrupt_watch.hpp"
#include "cli/option_values.hpp"
#include "cli/progress_printer.hpp"
#include "core/key_pattern.hpp"
#include "core/printable.hpp"
#include "io/file.hpp"
#include "io/hub_cache.hpp"

#include "moeckpt/adapter.hpp"
#include "moeckpt/distributed.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/inspect.hpp"
#include "moeckpt/kernels.hpp"
#include "moeckpt/synth.hpp"
#include "moeckpt/verify.hpp"

namespace {

// A usage error found after CLI11's parsing (a bad combination of options, a value only the
// library can judge): exit code 2 like CLI11's own, raised before any work starts.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void usage_error(std::string what, std::string expected = {}) {
  throw UsageError(moeckpt::format_error(
      {moeckpt::ErrorKind::kInvalidArgument, "", "", std::move(what), std::move(expected)}));
}

// The options a library refusal suggests, as this command line spells them (the library names
// them by tag only: its callers in Python spell them otherwise).
std::string cli_spelling(moeckpt::CallerOption option, std::string_view value) {
  using moeckpt::CallerOption;
  auto with = [&](std::string flag) {
    return value.empty() ? flag : flag + " " + std::string(value);
  };
  switch (option) {
    case CallerOption::kOverwrite:
      return "--overwrite";
    case CallerOption::kResume:
      return "--resume";
    case CallerOption::kMaxMemory:
      return with("--max-memory");
    case CallerOption::kDistributed:
      return "--distributed";
    case CallerOption::kWorkers:
      return "--workers N --worker K";
    case CallerOption::kWait:
      return with("--wait");
  }
  return moeckpt::neutral_spelling(option, value);
}

std::string message_of(const moeckpt::Error& e) {
  return moeckpt::format_error(e.info(), cli_spelling);
}

// Runs a library check of option values: its kInvalidArgument refusal is a usage error.
template <class F>
auto as_usage(F&& check) {
  try {
    return check();
  } catch (const moeckpt::Error& e) {
    if (e.kind() != moeckpt::ErrorKind::kInvalidArgument) throw;
    throw UsageError(message_of(e));
  }
}

// The FP8 kernels this run uses (MOECKPT_ISA may force a lower ISA than the CPU's; a value the
// kernels refuse is a usage error).
std::string kernels_in_use() {
  namespace k = moeckpt::kernels;
  const k::Isa isa = as_usage([] { return k::best_isa(); });
  k::Isa cpu = k::Isa::kScalar;
  for (k::Isa i : {k::Isa::kAvx2, k::Isa::kAvx512})
    if (k::isa_available(i)) cpu = i;
  if (isa == cpu) return k::isa_name(isa);
  return fmt::format("{} (set by MOECKPT_ISA; this CPU runs {})", k::isa_name(isa),
                     k::isa_name(cpu));
}

// --ep-rank (a rank or "all") against the EP size: a rank in [0, size), "all" over 2 or more.
void check_ep_rank(const std::string& rank, int64_t size) {
  if (rank == "all") {
    if (size < 2)
      usage_error(fmt::format("--ep-rank all with an EP size of {}", size),
                  "--ep-size of at least 2 with --ep-rank all");
  } else if (std::stoll(rank) >= size) {
    usage_error(fmt::format("--ep-rank {} is not below the EP size {}", rank, size),
                fmt::format("an --ep-rank in [0, {}), or all", size));
  }
}

// Integer options: decimal digits within [lo, hi]; anything else ("-1", "1e3", "0x10", a value that
// would wrap an unsigned field) is a usage error naming the range.
CLI::Validator integer_in(uint64_t lo, uint64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) { return moeckpt::cli::check_integer(text, lo, hi); },
      fmt::format("INT in [{} - {}]", lo, hi));
}

// Real-valued options: check_number's strict decimal form within [lo, hi].
CLI::Validator number_in(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) { return moeckpt::cli::check_number(text, lo, hi); },
      fmt::format("NUMBER in [{:g} - {:g}]", lo, hi));
}

// An EP rank, or "all".
CLI::Validator rank_or_all(uint64_t hi) {
  return CLI::Validator(
      [hi](std::string& text) {
        if (text == "all") return std::string();
        auto why = moeckpt::cli::check_integer(text, 0, hi);
        return why.empty() ? why : why + " (or \"all\")";
      },
      fmt::format("INT in [0 - {}] or \"all\"", hi));
}

const CLI::Validator kTolerance(
    [](std::string& text) { return moeckpt::cli::check_tolerance(text); }, "FLOAT >= 0");

constexpr uint64_t kMaxBytes = uint64_t{1} << 56;  // far beyond any checkpoint
constexpr uint64_t kMaxCount = uint64_t{1} << 20;

constexpr const char* kCompatHelp =
    "reproduce NeMo Automodel's adapter bit for bit: automodel-0.6, automodel-0.7, automodel (the "
    "newest, 0.7)";
constexpr const char* kAttnBackendHelp =
    "the training model's attention backend, which names the native sink: sdpa "
    "(self_attn.attention_sink_bias) or te (Transformer Engine: self_attn.attn_module."
    "softmax_offset, F32)";
const std::vector<std::string> kCompatNames{"none", "automodel", "automodel-0.6", "automodel-0.7"};
// Every argument that reads a checkpoint goes through where() (io::resolve_checkpoint).
constexpr const char* kOrRepoId = ", or a Hugging Face repo id in the local hub cache (ORG/NAME)";

int run(int argc, char** argv, moeckpt::cli::InterruptWatch& interrupts) {
  CLI::App app{
      "moeckpt: convert MoE checkpoints between the Hugging Face and grouped-expert layouts"};
  app.require_subcommand(1);
  // --help shows each option's default ("=VALUE", captured from the variable it sets); an option
  // whose default depends on others says so in its text and shows none.
  app.option_defaults()->always_capture_default();
  app.set_version_flag(
      "--version", [] { return fmt::format("moeckpt 0.1.0 (FP8 kernels: {})", kernels_in_use()); });

  // Every command that reads a checkpoint takes a folder or a repo id in the local hub cache.
  std::string revision;
  auto add_revision = [&](CLI::App* cmd) {
    cmd->add_option("--revision", revision,
                    "revision of a repo id given for a checkpoint (branch, tag or commit)")
        ->default_str("main");  // empty means not given: a folder takes no revision
  };

  moeckpt::SynthOptions synth;
  std::string synth_dst;
  auto* synth_cmd = app.add_subcommand(
      "synth", "write a synthetic checkpoint of a model family's layout (FP8, MXFP4)");
  synth_cmd->add_option("DST", synth_dst, "destination folder")->required();
  // The names come from the families that define them: a new preset shows here by itself.
  synth_cmd
      ->add_option("--preset", synth.preset,
                   fmt::format("the layout and size to synthesize, one of: {} (those ending in "
                               "full: the real dimensions, trimmed by the options below)",
                               fmt::join(moeckpt::model_preset_names(), ", ")))
      ->check(CLI::IsMember(moeckpt::model_preset_names()));
  synth_cmd
      ->add_option("--layers", synth.layers,
                   "number of decoder layers (default: the preset's; fewer trim it)")
      ->check(integer_in(1, 1024));
  synth_cmd
      ->add_option("--experts", synth.experts,
                   "routed experts per MoE layer (default: the preset's)")
      ->check(integer_in(1, 4096));
  synth_cmd->add_option("--vocab", synth.vocab, "vocabulary size (default: the preset's)")
      ->check(integer_in(1, kMaxCount));
  synth_cmd
      ->add_option("--mtp", synth.mtp_layers,
                   "MTP layers (default: as many as the preset's config declares, else 3; 1 for a "
                   "trimmed full preset)")
      ->check(integer_in(0, 64));
  synth_cmd->add_option("--seed", synth.seed, "random seed")
      ->check(integer_in(0, std::numeric_limits<uint32_t>::max()));
  synth_cmd
      ->add_option("--tp-size", synth.tp_size,
                   "the TP degree a fused qkv_proj is interleaved over (v26 presets; default 4)")
      ->check(integer_in(1, 1 << 16));
  synth_cmd->add_flag("--sparse", synth.sparse,
                      "real size and layout as sparse files: FP8 codes and large weights are "
                      "holes, scales and small tensors real (plans and I/O tests of full-size "
                      "checkpoints)");
  synth_cmd
      ->add_option("--shard-size", synth.max_shard_bytes,
                   "maximum bytes per shard (default: a third of the total, at most 5 GB)")
      ->check(integer_in(1, kMaxBytes));

  std::string inspect_dir;
  bool inspect_json = false;
  auto* inspect_cmd =
      app.add_subcommand("inspect", "validate a checkpoint folder and summarize it");
  inspect_cmd->add_option("DIR", inspect_dir, std::string("checkpoint folder") + kOrRepoId)
      ->required();
  inspect_cmd->add_flag("--json", inspect_json, "print one JSON object");
  moeckpt::InspectOptions inspect_opts;
  inspect_cmd->add_flag("--headers-only", inspect_opts.headers_only,
                        "skip the data scan (scale values, FP8 NaN codes)");

  std::string fh_src, fh_dst, fh_compat = "none", fh_dtype = "bf16";
  moeckpt::FromHfOptions fh;
  moeckpt::ConvertOptions convert;
  unsigned threads = 0;
  auto* fh_cmd =
      app.add_subcommand("from-hf", "HF checkpoint -> native (grouped-expert) checkpoint");
  fh_cmd->add_option("SRC", fh_src, std::string("HF checkpoint folder") + kOrRepoId)->required();
  fh_cmd->add_option("DST", fh_dst, "destination folder")->required();
  fh_cmd->add_option("--ep-size", fh.ep_size, "expert-parallel world size")
      ->check(integer_in(1, kMaxCount));
  std::string fh_ep_rank;
  fh_cmd
      ->add_option("--ep-rank", fh_ep_rank,
                   "this rank: only its experts are read and written; \"all\": every rank, each "
                   "into DST/ep-rank-R-of-W (default 0; all with --distributed or --workers when "
                   "--ep-size is above 1)")
      ->check(rank_or_all(kMaxCount));
  fh_cmd->add_option("--compat", fh_compat, kCompatHelp)->check(CLI::IsMember(kCompatNames));
  std::string fh_attn = "sdpa";
  fh_cmd->add_option("--attn-backend", fh_attn, kAttnBackendHelp)
      ->check(CLI::IsMember({"sdpa", "te"}));
  fh_cmd->add_option("--dtype", fh_dtype, "dtype of dequantized weights")
      ->check(CLI::IsMember({"bf16", "f32"}));
  fh_cmd->add_option("--shard-size", convert.max_shard_bytes, "maximum bytes per output shard")
      ->check(integer_in(1, kMaxBytes));
  fh_cmd->add_option("--threads", threads, "worker threads (0: all cores)")
      ->check(integer_in(0, 4096));
  uint64_t max_memory = 1ull << 30;
  bool quiet = false;
  fh_cmd->add_option("--max-memory", max_memory, "bytes of task buffers in flight (1 GiB)")
      ->check(integer_in(1, kMaxBytes));
  fh_cmd->add_flag("--quiet", quiet, "no progress output");
  bool overwrite = false, resume = false;
  auto add_existing_flags = [&](CLI::App* cmd) {
    auto* o = cmd->add_flag("--overwrite", overwrite, "replace a checkpoint already in DST");
    auto* r = cmd->add_flag("--resume", resume,
                            "continue a killed conversion into DST (same command): finished, "
                            "verified shards are kept");
    o->excludes(r);
  };
  add_existing_flags(fh_cmd);
  // One conversion spread over many processes (docs/SCALING.md).
  bool distributed = false;
  int64_t n_workers = 0, worker_k = 0;
  double wait_seconds = 172800;
  auto add_distributed_flags = [&](CLI::App* cmd) {
    cmd->add_flag("--distributed", distributed,
                  "be one worker of a conversion spread over processes: rank and count from "
                  "torchrun, srun, mpirun (Open MPI, MPICH, Intel MPI) or PMIx");
    // 0 stands for "not given" here: no default to show.
    auto* n = cmd->add_option("--workers", n_workers,
                              "number of workers (with --worker: overrides the launcher's)")
                  ->check(integer_in(1, moeckpt::kMaxWorkers))
                  ->default_str("");
    auto* k = cmd->add_option("--worker", worker_k, "this worker's index in [0, --workers)")
                  ->check(integer_in(0, moeckpt::kMaxWorkers - 1))
                  ->default_str("");
    n->needs(k);
    k->needs(n);
    cmd->add_option("--wait", wait_seconds,
                    "worker 0: seconds to wait for workers still running once its own shards "
                    "are done, before it leaves the index to the last of them (two days; "
                    "workers not started are not waited for)")
        ->check(number_in(0.0, 1e8));
  };
  add_distributed_flags(fh_cmd);

  std::vector<std::string> th_paths;
  std::string th_quant = "block", th_compat = "none", th_exclude, th_prefix, th_config;
  moeckpt::ToHfOptions th;
  auto* th_cmd =
      app.add_subcommand("to-hf", "native checkpoint (one folder, or every EP rank's) -> HF");
  th_cmd
      ->add_option("SRC_AND_DST", th_paths,
                   "native folder(s) (each may be a Hugging Face repo id in the local hub cache), "
                   "then the destination folder")
      ->required()
      ->expected(2, -1)
      ->default_str("");
  th_cmd
      ->add_option("--quant", th_quant,
                   "block (real scales), cast (Automodel's), none (BF16); with --compat "
                   "automodel*: Automodel's cast unless none")
      ->check(CLI::IsMember({"block", "cast", "none"}));
  th_cmd->add_option("--compat", th_compat, kCompatHelp)->check(CLI::IsMember(kCompatNames));
  std::string th_attn = "sdpa";
  th_cmd->add_option("--attn-backend", th_attn, kAttnBackendHelp)
      ->check(CLI::IsMember({"sdpa", "te"}));
  th_cmd->add_option("--exclude", th_exclude, "drop HF keys matching this regex");
  th_cmd->add_option("--prefix", th_prefix,
                     "prefix of expert keys (default: the native key's own)");
  th_cmd->add_option("--config", th_config, "config.json (default: the first folder's)");
  int64_t th_tp = 0;
  th_cmd
      ->add_option("--tp-size", th_tp,
                   "fused-QKV layouts: the TP degree to interleave qkv_proj over (default: the "
                   "source's, recorded by from-hf)")
      ->check(integer_in(1, 65536))
      ->default_str("");
  th_cmd->add_option("--shard-size", convert.max_shard_bytes, "maximum bytes per output shard")
      ->check(integer_in(1, kMaxBytes));
  th_cmd->add_option("--threads", threads, "worker threads (0: all cores)")
      ->check(integer_in(0, 4096));
  th_cmd->add_option("--max-memory", max_memory, "bytes of task buffers in flight (1 GiB)")
      ->check(integer_in(1, kMaxBytes));
  th_cmd->add_flag("--quiet", quiet, "no progress output");
  add_existing_flags(th_cmd);
  add_distributed_flags(th_cmd);

  // HF -> HF in one pass.
  std::string dq_src, dq_dst, dq_dtype = "bf16";
  auto* dq_cmd = app.add_subcommand(
      "dequantize", "HF FP8 checkpoint -> HF BF16/F32 checkpoint (same keys, no scales)");
  dq_cmd->add_option("SRC", dq_src, std::string("HF FP8 checkpoint folder") + kOrRepoId)
      ->required();
  dq_cmd->add_option("DST", dq_dst, "destination folder")->required();
  dq_cmd->add_option("--dtype", dq_dtype, "dtype of dequantized weights")
      ->check(CLI::IsMember({"bf16", "f32"}));
  std::string q_src, q_dst, q_quant = "block";
  auto* q_cmd = app.add_subcommand(
      "quantize", "HF BF16/F16/F32 checkpoint -> HF FP8 checkpoint in the published layout");
  q_cmd->add_option("SRC", q_src, std::string("HF BF16/F16/F32 checkpoint folder") + kOrRepoId)
      ->required();
  q_cmd->add_option("DST", q_dst, "destination folder")->required();
  q_cmd->add_option("--quant", q_quant, "block (real 128x128 scales) or cast (Automodel's)")
      ->check(CLI::IsMember({"block", "cast"}));
  for (auto* cmd : {dq_cmd, q_cmd}) {
    cmd->add_option("--shard-size", convert.max_shard_bytes, "maximum bytes per output shard")
        ->check(integer_in(1, kMaxBytes));
    cmd->add_option("--threads", threads, "worker threads (0: all cores)")
        ->check(integer_in(0, 4096));
    cmd->add_option("--max-memory", max_memory, "bytes of task buffers in flight (1 GiB)")
        ->check(integer_in(1, kMaxBytes));
    cmd->add_flag("--quiet", quiet, "no progress output");
    add_existing_flags(cmd);
    add_distributed_flags(cmd);
  }

  // A training job's sharded save -> HF checkpoint (FP8 in the same pass).
  std::string co_src, co_dst, co_quant = "none", co_dtype, co_config;
  auto* co_cmd = app.add_subcommand(
      "consolidate",
      "a training job's sharded save (DCP shard-*-model-*.safetensors, torch's or NeMo "
      "Automodel's writer) -> HF checkpoint, optionally FP8 in the same pass");
  co_cmd->add_option("SRC", co_src, "the save's folder (a checkpoint's model/ or sharded/)")
      ->required();
  co_cmd->add_option("DST", co_dst, "destination folder")->required();
  co_cmd
      ->add_option("--quant", co_quant,
                   "none (default), block (real 128x128 scales, the family's published FP8 set) "
                   "or cast (Automodel's)")
      ->check(CLI::IsMember({"none", "block", "cast"}));
  co_cmd
      ->add_option("--dtype", co_dtype,
                   "cast floating tensors to this dtype (Automodel's rule: tensors the save maps "
                   "to F32 and non-float tensors are kept); default: each tensor's HF dtype")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}));
  co_cmd->add_option("--config", co_config,
                     "the model's config.json (default: the save's .hf_metadata/config.json)");
  co_cmd
      ->add_option("--shard-size", convert.max_shard_bytes,
                   "maximum bytes per output shard (default: the save's own output files)")
      ->check(integer_in(1, kMaxBytes));
  co_cmd->add_option("--threads", threads, "worker threads (0: all cores)")
      ->check(integer_in(0, 4096));
  co_cmd->add_option("--max-memory", max_memory, "bytes of task buffers in flight (1 GiB)")
      ->check(integer_in(1, kMaxBytes));
  co_cmd->add_flag("--quiet", quiet, "no progress output");
  add_existing_flags(co_cmd);
  add_distributed_flags(co_cmd);

  std::string fin_dst;
  double fin_wait = 0;
  auto* fin_cmd = app.add_subcommand(
      "finalize",
      "write the index of a folder a distributed conversion wrote, once every worker's shards "
      "are there (after a Slurm job array, or a relaunch of a dead worker)");
  fin_cmd->add_option("DST", fin_dst, "the conversion's destination folder")->required();
  fin_cmd->add_option("--wait", fin_wait, "seconds to wait for workers still running")
      ->check(number_in(0.0, 1e8));

  std::string plan_src, plan_command = "from-hf", plan_dtype = "bf16", plan_ep_rank;
  int64_t plan_workers = 1, plan_ep_size = 1;
  uint64_t plan_shard_size = 5'000'000'000;
  bool plan_json = false;
  auto* plan_cmd = app.add_subcommand(
      "plan", "what each worker of a distributed conversion reads and writes (headers only)");
  plan_cmd->add_option("SRC", plan_src, std::string("HF checkpoint folder") + kOrRepoId)
      ->required();
  plan_cmd->add_option("--command", plan_command, "the conversion: from-hf, dequantize, quantize")
      ->check(CLI::IsMember({"from-hf", "dequantize", "quantize"}));
  plan_cmd->add_option("--workers", plan_workers, "number of workers")
      ->check(integer_in(1, moeckpt::kMaxWorkers));
  plan_cmd->add_option("--ep-size", plan_ep_size, "from-hf: expert-parallel world size")
      ->check(integer_in(1, kMaxCount));
  plan_cmd
      ->add_option("--ep-rank", plan_ep_rank,
                   "from-hf: one rank, or \"all\" (default 0; all when --ep-size is above 1)")
      ->check(rank_or_all(kMaxCount));
  plan_cmd->add_option("--dtype", plan_dtype, "dtype of dequantized weights")
      ->check(CLI::IsMember({"bf16", "f32"}));
  plan_cmd->add_option("--shard-size", plan_shard_size, "maximum bytes per output shard")
      ->check(integer_in(1, kMaxBytes));
  plan_cmd->add_flag("--json", plan_json, "print one JSON object");

  std::string va, vb, vconfig;
  moeckpt::VerifyOptions vo;
  auto* verify_cmd =
      app.add_subcommand("verify", "compare two checkpoints (HF or native) tensor by tensor");
  verify_cmd->add_option("A", va, std::string("first checkpoint folder") + kOrRepoId)->required();
  verify_cmd
      ->add_option("B", vb,
                   std::string("second checkpoint folder (the reference for rtol)") + kOrRepoId)
      ->required();
  verify_cmd->add_option("--rtol", vo.rtol, "relative tolerance (0: exact)")->check(kTolerance);
  verify_cmd->add_option("--atol", vo.atol, "absolute tolerance (0: exact)")->check(kTolerance);
  verify_cmd->add_option("--config", vconfig, "config.json for both (default: each folder's own)");

  for (auto* cmd : {inspect_cmd, fh_cmd, th_cmd, verify_cmd, dq_cmd, q_cmd, plan_cmd})
    add_revision(cmd);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  // Usage errors first, each before any work starts (nothing read, nothing written).
  const std::string kernels = kernels_in_use();
  if (synth_cmd->parsed()) as_usage([&] { moeckpt::check_synth_options(synth); });
  if (distributed || n_workers > 0) {
    if (n_workers > 0 && worker_k >= n_workers)
      usage_error(fmt::format("--worker {} is not below --workers {}", worker_k, n_workers),
                  "a worker index in [0, --workers)");
    if (overwrite)
      usage_error(
          "--overwrite cannot be used by a distributed conversion (a worker cannot know that no "
          "other worker has begun writing)",
          "an empty destination (remove the old checkpoint first), or --resume");
  }
  if (fh_cmd->parsed()) {
    if (fh_cmd->count("--ep-rank") && !fh_cmd->count("--ep-size"))
      usage_error("--ep-rank needs --ep-size", "--ep-size W with an --ep-rank in [0, W), or all");
    if (fh_ep_rank.empty())
      fh_ep_rank = (distributed || n_workers > 0) && fh.ep_size > 1 ? "all" : "0";
    check_ep_rank(fh_ep_rank, fh.ep_size);
  }
  if (th_cmd->parsed()) {
    // Automodel 0.7's to_hf(quantization=False) is --quant none; with quantization=True, and
    // always in 0.6, it writes its cast.
    const auto compat = *moeckpt::parse_compat(th_compat);
    if (compat == moeckpt::Compat::kAutomodel06 && th_cmd->count("--quant") && th_quant != "cast")
      usage_error(
          "--compat automodel-0.6 always quantizes as Automodel 0.6 does (cast with ones scales; "
          "its to_hf ignores `quantization`)",
          "no --quant, or --quant cast");
    if (compat == moeckpt::Compat::kAutomodel07 && th_cmd->count("--quant") && th_quant == "block")
      usage_error(
          "--compat automodel-0.7 writes what Automodel 0.7 writes: its cast (quantization=True) "
          "or BF16 (quantization=False)",
          "no --quant, --quant cast or --quant none");
    // Compiled once here only to refuse a pattern RE2 cannot run (the anchor does not matter).
    if (th_cmd->count("--exclude"))
      as_usage([&] { moeckpt::KeyPattern(th_exclude, moeckpt::KeyPattern::Anchor::kSearch); });
  }
  if (plan_cmd->parsed()) {
    if (plan_ep_rank.empty()) plan_ep_rank = plan_ep_size > 1 ? "all" : "0";
    check_ep_rank(plan_ep_rank, plan_ep_size);
  }

  // A folder, or a repo id resolved in the local Hugging Face cache.
  auto where = [&](const std::string& spec) -> std::string {
    std::optional<std::string> rev;
    if (!revision.empty()) rev = revision;
    return moeckpt::io::resolve_checkpoint(spec, rev).string();
  };

  if (synth_cmd->parsed()) {
    auto r = moeckpt::synthesize_checkpoint(synth_dst, synth);
    std::printf("wrote %s: %zu tensors, %llu bytes, %zu shards\n",
                moeckpt::printable(synth_dst).c_str(), r.tensors,
                static_cast<unsigned long long>(r.total_bytes), r.shards);
    return 0;
  }
  auto report = [&convert, &kernels](const char* what, const std::string& dst,
                                     const moeckpt::ConvertReport& r,
                                     std::chrono::steady_clock::time_point t0) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double peak_mib = static_cast<double>(moeckpt::cli::peak_rss_bytes()) / (1 << 20);
    // Not complete is no failure: this worker's shards are done, and the message says who
    // completes the folder (the last worker to finish, or moeckpt finalize).
    std::string state = r.finalized ? "every worker's shards verified, the folder is complete" : "";
    if (!r.finalized)
      for (const auto& p : r.pending) state += (state.empty() ? "" : "; ") + p;
    const std::string index = state.empty() ? "" : "; " + moeckpt::printable(state);
    const auto worker = fmt::format("worker {} of {}", convert.worker, convert.workers);
    if (convert.workers > 0 && r.own_shards == 0) {
      // Its tensor and byte counts would be the other workers' plan, not anything it wrote.
      std::printf(
          "%s: %s had no shards to write: the %zu shard%s of %s belong%s to other workers (%.2f "
          "s, peak RSS %.0f MiB, FP8 kernels %s)%s\n",
          what, worker.c_str(), r.shards, r.shards == 1 ? "" : "s", moeckpt::printable(dst).c_str(),
          r.shards == 1 ? "s" : "", secs, peak_mib, kernels.c_str(), index.c_str());
      return;
    }
    if (convert.workers > 0) {
      // Its own share only: the tensors and bytes of the shards it wrote (the next line says how
      // many of the folder's shards those are).
      std::printf(
          "%s: wrote %s: %zu tensors, %llu bytes in %.2f s (read %.3f GB, wrote %.3f GB, %.2f "
          "GB/s out, peak RSS %.0f MiB, FP8 kernels %s)\n",
          what, moeckpt::printable(dst).c_str(), r.tensors,
          static_cast<unsigned long long>(r.bytes_out), secs, static_cast<double>(r.bytes_in) / 1e9,
          static_cast<double>(r.bytes_out) / 1e9,
          secs > 0 ? static_cast<double>(r.bytes_out) / 1e9 / secs : 0.0, peak_mib,
          kernels.c_str());
      std::printf(
          "%s: %s wrote %zu of the %zu shards%s%s\n", what, worker.c_str(),
          r.own_shards - r.shards_kept, r.shards,
          r.shards_kept
              ? fmt::format(" and kept {} (finished by an earlier run and verified)", r.shards_kept)
                    .c_str()
              : "",
          index.c_str());
      return;
    }
    // Kept shards were recorded as finished by an earlier run of the same command (this worker's
    // or a killed one's) and verified now: nothing says that run was interrupted.
    std::printf(
        "%s: wrote %s: %zu tensors, %llu bytes, %zu shard%s%s in %.2f s (read %.3f GB, wrote "
        "%.3f GB, %.2f GB/s out, peak RSS %.0f MiB, FP8 kernels %s)\n",
        what, moeckpt::printable(dst).c_str(), r.tensors,
        static_cast<unsigned long long>(r.bytes_out), r.shards, r.shards == 1 ? "" : "s",
        r.shards_kept
            ? fmt::format(" ({} kept: finished by an earlier run and verified)", r.shards_kept)
                  .c_str()
            : "",
        secs, static_cast<double>(r.bytes_in) / 1e9, static_cast<double>(r.bytes_out) / 1e9,
        secs > 0 ? static_cast<double>(r.bytes_out) / 1e9 / secs : 0.0, peak_mib, kernels.c_str());
  };
  convert.exec.threads = threads;
  convert.exec.cancel = interrupts.flag();
  convert.existing = overwrite ? moeckpt::ExistingOutput::kOverwrite
                     : resume  ? moeckpt::ExistingOutput::kResume
                               : moeckpt::ExistingOutput::kRefuse;
  convert.exec.max_memory = max_memory;
  if (distributed || n_workers > 0) {
    moeckpt::WorkerSlot slot;
    if (n_workers > 0) {
      slot = {worker_k, n_workers, 0, 1, "explicit"};
      try {  // the node's worker count, for the threads, where a launcher tells it
        const auto env = moeckpt::worker_slot_from_process_env();
        slot.local_count = env.local_count;
      } catch (const moeckpt::Error&) {
      }
    } else {
      slot = moeckpt::worker_slot_from_process_env();
    }
    convert.workers = slot.count;
    convert.worker = slot.rank;
    convert.wait = std::chrono::milliseconds(std::llround(wait_seconds * 1000.0));
    if (threads == 0) convert.exec.threads = moeckpt::worker_threads(slot);
  }
  // Until the destination is taken (planning, validation), SIGINT/SIGTERM end the run at once:
  // nothing exists to clean up. From then on they stop it at the next task.
  convert.on_start = [&interrupts] { interrupts.set_graceful(true); };
  moeckpt::cli::ProgressPrinter printer(::isatty(2) == 1);
  if (!quiet) convert.progress = &printer;
  if (fh_cmd->parsed()) {
    fh.compat = *moeckpt::parse_compat(fh_compat);
    fh.attn_backend = *moeckpt::parse_attn_backend(fh_attn);
    fh.dtype = fh_dtype == "f32" ? moeckpt::Dtype::F32 : moeckpt::Dtype::BF16;
    fh.ep_rank = fh_ep_rank == "all" ? moeckpt::FromHfOptions::kEveryRank : std::stoll(fh_ep_rank);
    auto t0 = std::chrono::steady_clock::now();
    report("from-hf", fh_dst, moeckpt::from_hf_dir(where(fh_src), fh_dst, fh, convert), t0);
    return 0;
  }
  if (th_cmd->parsed()) {
    th.compat = *moeckpt::parse_compat(th_compat);
    th.attn_backend = *moeckpt::parse_attn_backend(th_attn);
    th.tp_size = th_tp;
    th.quant = th_quant == "cast"   ? moeckpt::QuantMode::kCast
               : th_quant == "none" ? moeckpt::QuantMode::kNone
                                    : moeckpt::QuantMode::kBlock;
    if (th_cmd->count("--exclude")) th.exclude_regex = th_exclude;
    if (th_cmd->count("--prefix")) th.prefix = th_prefix;
    std::vector<std::filesystem::path> srcs;
    for (auto it = th_paths.begin(); it + 1 != th_paths.end(); ++it) srcs.push_back(where(*it));
    std::optional<std::filesystem::path> cfg;
    if (th_cmd->count("--config")) cfg = th_config;
    auto t0 = std::chrono::steady_clock::now();
    report("to-hf", th_paths.back(), moeckpt::to_hf_dirs(srcs, th_paths.back(), th, cfg, convert),
           t0);
    return 0;
  }
  if (dq_cmd->parsed()) {
    moeckpt::FromHfOptions o;
    o.dtype = dq_dtype == "f32" ? moeckpt::Dtype::F32 : moeckpt::Dtype::BF16;
    auto t0 = std::chrono::steady_clock::now();
    report("dequantize", dq_dst, moeckpt::dequantize_dir(where(dq_src), dq_dst, o, convert), t0);
    return 0;
  }
  if (q_cmd->parsed()) {
    moeckpt::ToHfOptions o;
    o.quant = q_quant == "cast" ? moeckpt::QuantMode::kCast : moeckpt::QuantMode::kBlock;
    auto t0 = std::chrono::steady_clock::now();
    report("quantize", q_dst, moeckpt::quantize_dir(where(q_src), q_dst, o, convert), t0);
    return 0;
  }
  if (co_cmd->parsed()) {
    moeckpt::ConsolidateOptions o;
    o.quant = co_quant == "block"  ? moeckpt::QuantMode::kBlock
              : co_quant == "cast" ? moeckpt::QuantMode::kCast
                                   : moeckpt::QuantMode::kNone;
    if (!co_dtype.empty())
      o.dtype = co_dtype == "bf16"  ? moeckpt::Dtype::BF16
                : co_dtype == "f16" ? moeckpt::Dtype::F16
                                    : moeckpt::Dtype::F32;
    if (co_cmd->count("--config")) o.config = co_config;
    o.save_layout = co_cmd->count("--shard-size") == 0;
    auto t0 = std::chrono::steady_clock::now();
    report("consolidate", co_dst, moeckpt::consolidate_dir(co_src, co_dst, o, convert), t0);
    return 0;
  }
  if (fin_cmd->parsed()) {
    const auto r =
        moeckpt::finalize_dir(fin_dst, std::chrono::milliseconds(std::llround(fin_wait * 1000.0)));
    std::printf("finalize: %s: %zu shards of %lld workers verified, %llu bytes%s\n",
                moeckpt::printable(fin_dst).c_str(), r.shards, static_cast<long long>(r.workers),
                static_cast<unsigned long long>(r.bytes),
                r.index_written ? ", index written" : " (one shard: no index)");
    return 0;
  }
  if (plan_cmd->parsed()) {
    moeckpt::FromHfOptions o;
    o.dtype = plan_dtype == "f32" ? moeckpt::Dtype::F32 : moeckpt::Dtype::BF16;
    o.ep_size = plan_ep_size;
    o.ep_rank =
        plan_ep_rank == "all" ? moeckpt::FromHfOptions::kEveryRank : std::stoll(plan_ep_rank);
    const auto command = plan_command == "dequantize" ? moeckpt::FolderCommand::kDequantize
                         : plan_command == "quantize" ? moeckpt::FolderCommand::kQuantize
                                                      : moeckpt::FolderCommand::kFromHf;
    const auto d = moeckpt::plan_distribution(command, where(plan_src), o, moeckpt::ToHfOptions{},
                                              plan_shard_size, plan_workers);
    uint64_t max_out = 0;
    for (const auto& w : d.workers) max_out = std::max(max_out, w.output_bytes);
    const double mean = static_cast<double>(d.output_bytes) / static_cast<double>(d.workers.size());
    const double imbalance = mean > 0 ? static_cast<double>(max_out) / mean : 1.0;
    if (plan_json) {
      nlohmann::ordered_json j;
      j["command"] = d.command;
      j["workers"] = d.workers.size();
      j["shards"] = d.shards;
      j["input_bytes"] = d.input_bytes;
      j["output_bytes"] = d.output_bytes;
      j["imbalance"] = imbalance;
      j["folders"] = d.folders;
      j["per_worker"] = nlohmann::ordered_json::array();
      for (size_t w = 0; w < d.workers.size(); ++w)
        j["per_worker"].push_back({{"worker", w},
                                   {"input_bytes", d.workers[w].input_bytes},
                                   {"output_bytes", d.workers[w].output_bytes},
                                   {"shards", d.workers[w].shards}});
      std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      return 0;
    }
    std::printf(
        "%s of %s over %zu worker(s): %zu shards, %.3f GB in, %.3f GB out, imbalance "
        "(max/mean output bytes) %.4f\n",
        d.command.c_str(), plan_src.c_str(), d.workers.size(), d.shards,
        static_cast<double>(d.input_bytes) / 1e9, static_cast<double>(d.output_bytes) / 1e9,
        imbalance);
    for (size_t w = 0; w < d.workers.size(); ++w)
      std::printf("  worker %zu: %zu shards, %.3f GB in, %.3f GB out\n", w,
                  d.workers[w].shards.size(), static_cast<double>(d.workers[w].input_bytes) / 1e9,
                  static_cast<double>(d.workers[w].output_bytes) / 1e9);
    return 0;
  }
  if (verify_cmd->parsed()) {
    if (verify_cmd->count("--config")) vo.config = vconfig;
    auto r = moeckpt::verify_checkpoints(where(va), where(vb), vo);
    std::cout << moeckpt::to_text(r, vo);
    if (!r.ok()) {
      std::cerr << "moeckpt: error: " << moeckpt::printable(va) << " and " << moeckpt::printable(vb)
                << " differ beyond the tolerance\n";
      return 1;
    }
    return 0;
  }
  if (inspect_cmd->parsed()) {
    auto r = moeckpt::inspect_checkpoint(where(inspect_dir), inspect_opts);
    if (inspect_json)
      // Names and paths that are not UTF-8 are shown with U+FFFD, never a library exception.
      std::cout << moeckpt::to_json(r).dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
                << "\n";
    else
      std::cout << moeckpt::to_text(r);
    if (!r.problems.empty()) {
      constexpr size_t kShown = 10;
      for (size_t i = 0; i < r.problems.size() && i < kShown; ++i)
        std::cerr << "moeckpt: error: " << moeckpt::printable(r.problems[i]) << "\n";
      if (r.problems.size() > kShown)
        std::cerr << "moeckpt: ... and " << r.problems.size() - kShown << " more problem(s)\n";
      return 1;
    }
    return 0;
  }
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Checkpoints of thousands of shards: the soft limit on open files (often 1024) is raised to the
  // hard one. Shard descriptors stay bounded anyway (io::OpenFiles, whose capacity follows the
  // limit raised here).
  moeckpt::io::raise_open_file_limit();
  moeckpt::cli::InterruptWatch interrupts;
  try {
    return run(argc, argv, interrupts);
  } catch (const moeckpt::Interrupted& e) {
    std::cerr << "moeckpt: error: " << message_of(e) << "\n";
    return 130;
  } catch (const moeckpt::Error& e) {
    std::cerr << "moeckpt: error: " << message_of(e) << "\n";
  } catch (const UsageError& e) {
    std::cerr << "moeckpt: error: " << e.what() << "\n";
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "moeckpt: error: out of memory\n";
  } catch (const std::exception& e) {
    std::cerr << "moeckpt: error: " << moeckpt::printable(e.what()) << "\n";
  }
  return 1;
}
