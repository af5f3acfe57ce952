// The moeckpt command line: thin wrappers over the library; errors become one line on stderr and
// exit code 1 (2 for usage errors).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "moeckpt/error.hpp"
#include "moeckpt/inspect.hpp"
#include "moeckpt/synth.hpp"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"moeckpt: convert MoE checkpoints between the Hugging Face and grouped-expert layouts"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("moeckpt 0.1.0"));

  moeckpt::SynthOptions synth;
  std::string synth_dst;
  auto* synth_cmd = app.add_subcommand("synth", "write a synthetic MiMo-V2-Flash-shaped FP8 checkpoint");
  synth_cmd->add_option("DST", synth_dst, "destination folder")->required();
  synth_cmd->add_option("--preset", synth.preset, "tiny (toy sizes) or full (real dimensions)")
      ->check(CLI::IsMember({"tiny", "full"}));
  synth_cmd->add_option("--layers", synth.layers, "number of decoder layers (trims the preset)");
  synth_cmd->add_option("--experts", synth.experts, "routed experts per MoE layer");
  synth_cmd->add_option("--vocab", synth.vocab, "vocabulary size");
  synth_cmd->add_option("--mtp", synth.mtp_layers,
                        "MTP layers (default 3; 1 for a trimmed full preset)");
  synth_cmd->add_option("--seed", synth.seed, "random seed");
  synth_cmd->add_option("--shard-size", synth.max_shard_bytes,
                        "maximum bytes per shard (default: a third of the total, at most 5 GB)");

  std::string inspect_dir;
  bool inspect_json = false;
  auto* inspect_cmd = app.add_subcommand("inspect", "validate a checkpoint folder and summarize it");
  inspect_cmd->add_option("DIR", inspect_dir, "checkpoint folder")->required();
  inspect_cmd->add_flag("--json", inspect_json, "print one JSON object");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  if (synth_cmd->parsed()) {
    auto r = moeckpt::synthesize_checkpoint(synth_dst, synth);
    std::printf("wrote %s: %zu tensors, %llu bytes, %zu shards\n", synth_dst.c_str(), r.tensors,
                static_cast<unsigned long long>(r.total_bytes), r.shards);
    return 0;
  }
  if (inspect_cmd->parsed()) {
    auto r = moeckpt::inspect_checkpoint(inspect_dir);
    if (inspect_json)
      std::cout << moeckpt::to_json(r).dump(2) << "\n";
    else
      std::cout << moeckpt::to_text(r);
    if (!r.problems.empty()) {
      constexpr size_t kShown = 10;
      for (size_t i = 0; i < r.problems.size() && i < kShown; ++i)
        std::cerr << "moeckpt: error: " << r.problems[i] << "\n";
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
  try {
    return run(argc, argv);
  } catch (const moeckpt::Error& e) {
    std::cerr << "moeckpt: error: " << e.what() << "\n";
  } catch (const std::bad_alloc&) {
    std::cerr << "moeckpt: error: out of memory\n";
  } catch (const std::exception& e) {
    std::cerr << "moeckpt: error: " << e.what() << "\n";
  }
  return 1;
}
