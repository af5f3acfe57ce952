#include "moeckpt/inspect.hpp"

#include <fmt/format.h>

#include <fmt/ranges.h>

#include <charconv>
#include <cstdlib>
#include <set>

#include "adapter/checkpoint_validation.hpp"
#include "adapter/validate.hpp"
#include "core/printable.hpp"
#include "core/strict_json.hpp"
#include "io/file.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/model_spec.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

std::string human_bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.2f} {}", v, units[u]);
}

std::string layer_label(const TensorKey& k) {
  return (k.mtp ? "mtp." : "") + std::to_string(k.layer.value_or(-1));
}

// "model.layers.3.mlp.experts.down_projs" -> "model.layers.*.mlp.experts.down_projs": one family
// for every layer, without knowing the family's grammar.
std::string any_layer(const TensorKey& k) {
  const std::string id = "." + std::to_string(*k.layer) + ".";
  const auto at = k.name.find(id, k.prefix.size());
  return at == std::string::npos ? k.name
                                 : k.name.substr(0, at) + ".*." + k.name.substr(at + id.size());
}

std::string expert_span(int64_t start, int64_t count) {
  if (count == 0) return "no experts";
  if (count == 1) return fmt::format("expert {}", start);
  return fmt::format("experts {}-{}", start, start + count - 1);
}

// The EP placement from-hf records in every shard's __metadata__ (check_native_metadata refuses
// what is wrong with it; this only reads it, for the report).
InspectReport::ExpertParallel read_expert_parallel(const std::map<std::string, std::string>& md) {
  InspectReport::ExpertParallel ep;
  const char* keys[] = {kMetaEpSize, kMetaEpRank, kMetaExpertStart, kMetaExpertCount};
  int64_t* values[] = {&ep.size, &ep.rank, &ep.expert_start, &ep.expert_count};
  ep.recorded = md.count(kMetaLayout) > 0;
  for (const char* k : keys) ep.recorded = ep.recorded || md.count(k) > 0;
  if (!ep.recorded) return ep;
  if (auto it = md.find(kMetaLayout); it == md.end() || it->second != "native")
    ep.unreadable =
        fmt::format("{} is \"{}\", not \"native\"", kMetaLayout, it == md.end() ? "" : it->second);
  for (size_t i = 0; i < 4 && ep.unreadable.empty(); ++i) {
    auto it = md.find(keys[i]);
    if (it == md.end()) {
      ep.unreadable = fmt::format("no {}", keys[i]);
      break;
    }
    const std::string& v = it->second;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), *values[i]);
    if (ec != std::errc() || end != v.data() + v.size() || *values[i] < 0)
      ep.unreadable = fmt::format("{} = \"{}\" is not a count", keys[i], v);
  }
  if (ep.unreadable.empty() && (ep.size < 1 || ep.rank >= ep.size))
    ep.unreadable = fmt::format("{} = {} with {} = {}", kMetaEpRank, ep.rank, kMetaEpSize, ep.size);
  return ep;
}

// Where the grouped tensors' first dimension (per layer) disagrees with the recorded expert count
// (without metadata: config.json's, as to-hf reads such a folder), and where the recorded range is
// not the one config.json's experts give that rank.
std::vector<std::string> expert_disagreements(
    const InspectReport::ExpertParallel& ep, const std::optional<ModelConfig>& config,
    const std::map<int64_t, std::set<uint64_t>>& grouped_dims) {
  std::vector<std::string> out;
  for (const auto& [layer, dims] : grouped_dims)
    if (dims.size() > 1)
      out.push_back(
          fmt::format("layer {}'s grouped expert tensors hold different expert counts: {}", layer,
                      fmt::join(dims, ", ")));
  std::optional<int64_t> want;
  std::string says;
  if (ep.recorded && ep.unreadable.empty()) {
    want = ep.expert_count;
    says = fmt::format("__metadata__ {} = {}", kMetaExpertCount, ep.expert_count);
  } else if (!ep.recorded && config) {
    want = config->n_routed_experts;
    says = fmt::format(
        "config.json's n_routed_experts = {} (a folder without EP metadata is the whole "
        "checkpoint)",
        config->n_routed_experts);
  }
  if (want) {
    std::map<uint64_t, std::vector<int64_t>> wrong;  // experts held -> layers
    for (const auto& [layer, dims] : grouped_dims)
      if (dims.size() == 1 && static_cast<int64_t>(*dims.begin()) != *want)
        wrong[*dims.begin()].push_back(layer);
    for (const auto& [n, layers] : wrong)
      out.push_back(fmt::format(
          "the grouped expert tensors of layer{} {} hold {} experts (first dimension) but {}",
          layers.size() == 1 ? "" : "s", fmt::join(layers, ","), n, says));
  }
  if (ep.recorded && ep.unreadable.empty() && config) {
    const auto range = ExpertRange::for_rank(config->n_routed_experts, ep.size, ep.rank);
    if (range.first != ep.expert_start || range.count != ep.expert_count)
      out.push_back(fmt::format(
          "__metadata__ gives EP rank {} of {} {}, but config.json's {} experts split over {} "
          "rank{} give it {}",
          ep.rank, ep.size, expert_span(ep.expert_start, ep.expert_count), config->n_routed_experts,
          ep.size, ep.size == 1 ? "" : "s", expert_span(range.first, range.count)));
  }
  return out;
}

}  // namespace

InspectReport inspect_checkpoint(const fs::path& dir, const InspectOptions& options) {
  CheckpointSource src({dir});  // the folder's headers, opened once for the report and validation
  const Checkpoint& ck = src.checkpoint(0);
  InspectReport r;
  r.dir = dir.string();
  r.shards = ck.shard_count();
  r.has_index = ck.has_index();
  r.tensors = ck.names().size();
  r.total_bytes = ck.total_bytes();
  if (const ShardedSave* save = ck.sharded_save()) {
    InspectReport::ShardedSaveSummary sum;
    sum.writer = sharded_writer_name(save->writer);
    sum.dcp_version = save->dcp_version;
    sum.output_files = save->output_files;
    std::set<int64_t> ranks;
    for (const auto& f : save->files) ranks.insert(f.rank);
    sum.ranks = static_cast<int64_t>(ranks.size());
    for (const auto& name : ck.names()) {
      const ShardedTensor& t = *ck.find(name)->pieces;
      sum.pieces += t.pieces.size() + t.empty_pieces;
      sum.empty_pieces += t.empty_pieces;
      sum.split_tensors += t.pieces.size() > 1;
      if (t.dtype != t.stored)
        ++sum.restored[fmt::format("{}->{}", dtype_name(t.stored), dtype_name(t.dtype))];
    }
    sum.has_config = save->config.has_value();
    r.sharded_save = std::move(sum);
  }

  std::optional<ModelConfig> config;
  std::error_code ec;
  const fs::path config_path = checkpoint_config_path(dir);
  // A sharded save is any model's training save: a model_type moeckpt does not convert is
  // summarized without its config (the consolidation copies any model).
  bool foreign_model = false;
  if (ck.sharded_save() && fs::exists(config_path, ec)) {
    const auto doc = parse_strict_json(io::read_small_file(config_path, kMaxConfigBytes),
                                       config_path.string(), "config");
    foreign_model = !ModelConfig::names_known_family(doc);
    if (foreign_model)
      r.notes.push_back(
          "config.json names a model_type moeckpt does not convert: shapes and layer kinds are "
          "not checked (consolidate copies it as it is)");
  }
  if (!foreign_model && (!options.headers_only || fs::exists(config_path, ec))) {
    config = ModelConfig::load(config_path);  // refuses a missing or broken config.json
    r.has_config = true;
    r.layers = config->num_hidden_layers;
    for (auto k : config->layer_attention)
      (k == AttentionKind::kFull ? r.full_layers : r.swa_layers)++;
    r.latent_attention = config->latent.has_value();
    r.moe_layers = config->moe_layer_count();
    r.dense_layers = r.layers - r.moe_layers;
    r.n_routed_experts = config->n_routed_experts;
  } else {
    if (!foreign_model) r.notes.push_back("no config.json: shapes and layer kinds are not checked");
  }
  const int64_t block_rows = config && config->block ? config->block->rows : 128;
  // Without a config.json, names are read with the reference family's grammar.
  const auto spec = model_spec_for(config.value_or(ModelConfig{}));
  if (config) r.model = std::string(spec->layout_name());

  std::map<int64_t, std::set<int64_t>> experts;        // layer -> ids
  std::map<int64_t, std::set<uint64_t>> grouped_dims;  // native: layer -> first dims
  std::set<int64_t> mtp_layers;
  std::map<std::string, InspectReport::Fp8Family> families;
  std::map<std::string, InspectReport::GroupedFamily> grouped;
  uint64_t unknown = 0;

  for (const auto& name : ck.names()) {
    const auto& e = *ck.find(name);
    const auto& t = *e.info;
    auto& d = r.by_dtype[std::string(dtype_name(t.dtype))];
    d.tensors++;
    d.bytes += t.nbytes();
    auto key = spec->classify(name);
    if (key.mtp && key.layer) mtp_layers.insert(*key.layer);
    const std::string& file = ck.file_of(e);

    // A stacked layout's experts: one tensor per projection holds every expert of the layer.
    if (config && spec->stacked_expert_member(name, 0) && key.layer && !t.shape.empty()) {
      r.stacked_experts = true;
      for (uint64_t e = 0; e < t.shape[0]; ++e) experts[*key.layer].insert(static_cast<int64_t>(e));
      continue;
    }
    if (key.is_scale) {
      if (!ck.find(key.weight_name))
        r.notes.push_back(fmt::format("{}: tensor '{}': scale without its weight '{}' (ignored)",
                                      file, name, key.weight_name));
      continue;
    }
    if (key.kind == TensorKind::kOther && !(config && spec->is_passthrough(name))) {
      if (++unknown <= 20)
        r.notes.push_back(
            fmt::format("{}: tensor '{}': not a {} tensor name", file, name, spec->layout_name()));
    }
    if (key.kind == TensorKind::kExpertProj && key.layer &&
        (!key.mtp || spec->mtp_layers_have_routed_experts()))
      experts[*key.layer].insert(*key.expert);
    if (key.kind == TensorKind::kGroupedExperts && key.layer && !t.shape.empty()) {
      grouped_dims[*key.layer].insert(t.shape[0]);
      const auto fam_name = any_layer(key);
      auto& g = grouped[fam_name + format_shape(t.shape) + std::string(dtype_name(t.dtype))];
      g.family = fam_name;
      g.shape = t.shape;
      g.dtype = std::string(dtype_name(t.dtype));
      g.count++;
    }
    // MXFP4 experts: packed E2M1 with E8M0 scales, listed with the FP8 families.
    const auto* mx = key.kind == TensorKind::kExpertProj && t.dtype == Dtype::U8
                         ? ck.find(spec->mx_scale_name(name))
                         : nullptr;
    const auto scale_name = spec->block_scale_name(name);
    const auto* scale = mx ? mx : scale_name ? ck.find(*scale_name) : nullptr;
    if (!scale) continue;
    const auto& s = *scale->info;
    if (t.shape.size() != 2 || s.shape.size() != 2) continue;  // refused by the validation
    std::string layout = mx ? "mxfp4" : "plain";
    if (config && spec->hf_qkv_fused() && key.projection == Projection::kQkv) {
      // One block grid per checkpoint TP shard (metadata.tp_size, or the family's fixed degree);
      // a bad tp_size is the validation's problem to report.
      std::string tp = "?";
      try {
        tp = std::to_string(spec->checkpoint_tp(ck.index_metadata(), file));
      } catch (const Error&) {
      }
      layout = "per_tp_shard_" + tp;
    } else if (config && key.kind == TensorKind::kAttentionProj &&
               key.projection != Projection::kO) {
      const auto& dims = spec->attention_dims(key);
      const auto* k_scale =
          ck.find(*spec->block_scale_name(spec->attention_weight_name(name, Projection::kK)));
      if (k_scale && k_scale->info->shape.size() == 2) {
        std::array<int64_t, 3> weight_rows{-1, -1, -1};
        for (Projection p : kQkv) {
          const auto* e = ck.find(spec->attention_weight_name(name, p));
          if (e && e->info->shape.size() == 2)
            weight_rows[qkv_index(p)] = static_cast<int64_t>(e->info->shape[0]);
        }
        auto fused = spec->detect_shared_qkv_scales(
            key, static_cast<int64_t>(k_scale->info->shape[0]), block_rows, weight_rows);
        if (fused) layout = "fused_kv_t4";
        // `dims` refers into the spec's own copy of the config, not into `config`.
        if (key.projection == Projection::kK)
          r.attention.push_back({layer_label(key),
                                 &dims == &spec->config().full ? "full" : "sliding_window",
                                 k_scale->info->shape, layout});
      }
    }
    std::string fam_name = key.kind == TensorKind::kExpertProj
                               ? "mlp.experts.*." + std::string(projection_name(key.projection))
                               : std::string(tensor_kind_name(key.kind)) +
                                     (key.projection != Projection::kNone
                                          ? "." + std::string(projection_name(key.projection))
                                          : "");
    auto fkey = fam_name + format_shape(t.shape) + format_shape(s.shape) + layout +
                std::string(dtype_name(s.dtype));
    auto& fam = families[fkey];
    fam.family = fam_name;
    fam.shape = t.shape;
    fam.scale_shape = s.shape;
    fam.scale_dtype = std::string(dtype_name(s.dtype));
    fam.layout = layout;
    fam.count++;
  }
  if (unknown > 20) r.notes.push_back(fmt::format("... {} unknown tensor names in all", unknown));
  for (auto& [_, f] : families) r.fp8.push_back(f);
  r.mtp_layers = static_cast<int64_t>(mtp_layers.size());
  // Accepted (a conversion keeps the MTP layers there are), but worth a line: a count that is not
  // the config's is how a num_nextn_predict_layers off by some shows.
  if (const auto declared = config ? spec->configured_mtp_layers() : std::nullopt;
      declared && r.mtp_layers < *declared)
    r.notes.push_back(fmt::format(
        "config.json declares {} MTP layer(s) (num_nextn_predict_layers); the checkpoint holds {} "
        "(the others are left out)",
        *declared, r.mtp_layers));
  r.native = is_native_layout(src, *spec);
  if (r.native) {
    // An EP rank's folder holds its share of each MoE layer's experts: the grouped tensors' first
    // dimension, checked against what the metadata records.
    for (const auto& [layer, dims] : grouped_dims)  // the smaller where they differ (flagged)
      r.experts_per_layer[layer] = static_cast<int64_t>(*dims.begin());
    for (auto& [_, g] : grouped) r.grouped.push_back(g);
    auto ep = read_expert_parallel(src.metadata(0));
    ep.disagreements = expert_disagreements(ep, config, grouped_dims);
    r.expert_parallel = ep;
  } else {
    for (const auto& [layer, ids] : experts)
      r.experts_per_layer[layer] = static_cast<int64_t>(ids.size());
  }
  // The checks a conversion of this folder would make (from-hf for HF folders, to-hf for native
  // ones), data included unless headers only: the first refusal is the problem.
  if (config) {
    try {
      validate_checkpoint(src, *config, {!options.headers_only, options.threads});
    } catch (const Error& e) {
      r.problems.push_back(e.what());
    }
  }
  // The validation refuses bad EP metadata itself (one line per refusal); without a config.json
  // it does not run, and then the report's own finding is the problem.
  if (r.problems.empty() && r.expert_parallel) {
    const auto& ep = *r.expert_parallel;
    const std::string& file = ck.shard_count() ? ck.shard(0).path() : r.dir;  // the metadata's
    if (!ep.unreadable.empty())
      r.problems.push_back(fmt::format("{}: __metadata__: {}", file, ep.unreadable));
    else if (!ep.disagreements.empty())
      r.problems.push_back(fmt::format("{}: {}", file, ep.disagreements.front()));
  }
  return r;
}

nlohmann::ordered_json to_json(const InspectReport& r) {
  nlohmann::ordered_json j;
  j["dir"] = r.dir;
  j["shards"] = r.shards;
  j["has_index"] = r.has_index;
  j["tensors"] = r.tensors;
  j["total_bytes"] = r.total_bytes;
  if (r.sharded_save) {
    const auto& ss = *r.sharded_save;
    j["sharded_save"] = {{"writer", ss.writer},
                         {"dcp_version", ss.dcp_version},
                         {"ranks", ss.ranks},
                         {"output_files", ss.output_files},
                         {"pieces", ss.pieces},
                         {"empty_pieces", ss.empty_pieces},
                         {"split_tensors", ss.split_tensors},
                         {"restored_dtypes", ss.restored},
                         {"coverage", "exact"},
                         {"has_config", ss.has_config}};
  } else {
    j["sharded_save"] = nullptr;
  }
  auto& dt = j["by_dtype"] = nlohmann::ordered_json::object();
  for (const auto& [name, d] : r.by_dtype) dt[name] = {{"tensors", d.tensors}, {"bytes", d.bytes}};
  j["layout"] = r.native ? "native" : "hf";
  j["stacked_experts"] = r.stacked_experts;
  if (r.has_config) {
    j["model"] = r.model;
    j["layers"] = {{"total", r.layers},
                   {"full_attention", r.full_layers},
                   {"sliding_window", r.swa_layers},
                   {"latent_attention", r.latent_attention},
                   {"dense", r.dense_layers},
                   {"moe", r.moe_layers},
                   {"mtp", r.mtp_layers}};
    j["n_routed_experts"] = r.n_routed_experts;
  } else {
    j["layers"] = {{"mtp", r.mtp_layers}};
  }
  auto& epl = j["experts_per_layer"] = nlohmann::ordered_json::object();
  for (const auto& [l, n] : r.experts_per_layer) epl[std::to_string(l)] = n;
  if (r.expert_parallel) {
    const auto& ep = *r.expert_parallel;
    auto& e = j["expert_parallel"] = {{"recorded", ep.recorded}};
    if (!ep.unreadable.empty())
      e["unreadable"] = ep.unreadable;
    else if (ep.recorded) {
      e["ep_size"] = ep.size;
      e["ep_rank"] = ep.rank;
      e["expert_start"] = ep.expert_start;
      e["expert_count"] = ep.expert_count;
    }
    e["disagreements"] = ep.disagreements;
  } else {
    j["expert_parallel"] = nullptr;
  }
  auto& ge = j["grouped_experts"] = nlohmann::ordered_json::array();
  for (const auto& g : r.grouped)
    ge.push_back(
        {{"family", g.family}, {"count", g.count}, {"shape", g.shape}, {"dtype", g.dtype}});
  auto& fp8 = j["fp8"] = nlohmann::ordered_json::array();
  for (const auto& f : r.fp8)
    fp8.push_back({{"family", f.family},
                   {"count", f.count},
                   {"shape", f.shape},
                   {"scale_shape", f.scale_shape},
                   {"scale_dtype", f.scale_dtype},
                   {"layout", f.layout}});
  auto& att = j["attention_scale_layouts"] = nlohmann::ordered_json::array();
  for (const auto& a : r.attention)
    att.push_back({{"layer", a.layer},
                   {"kind", a.kind},
                   {"k_scale_shape", a.k_scale_shape},
                   {"layout", a.layout}});
  j["problems"] = r.problems;
  j["notes"] = r.notes;
  return j;
}

std::string to_text(const InspectReport& r) {
  std::string out;
  // Tensor names, paths and config values come from files: escaped (no forged lines, no
  // terminal control sequences).
  auto line = [&](const std::string& s) { out += printable(s) + "\n"; };
  line(fmt::format("checkpoint {}: {} shard{}{}", r.dir, r.shards, r.shards == 1 ? "" : "s",
                   r.has_index ? " with index" : ""));
  if (r.sharded_save) {
    const auto& ss = *r.sharded_save;
    line(fmt::format(
        "sharded save ({}'s DCP writer, DCP_VERSION {}): {} rank{}, {} piece{} ({} empty), {} "
        "tensor{} split over several, every tensor covered exactly; consolidates into {} "
        "file{}{}",
        ss.writer, ss.dcp_version, ss.ranks, ss.ranks == 1 ? "" : "s", ss.pieces,
        ss.pieces == 1 ? "" : "s", ss.empty_pieces, ss.split_tensors,
        ss.split_tensors == 1 ? "" : "s", ss.output_files, ss.output_files == 1 ? "" : "s",
        ss.has_config ? "" : " (no .hf_metadata/config.json)"));
    for (const auto& [conv, n] : ss.restored)
      line(fmt::format("  {} tensor{} read as {} (the HF dtype the save's mapping restores)", n,
                       n == 1 ? "" : "s", conv));
  }
  line(fmt::format("tensors: {}, {} ({} bytes)", r.tensors, human_bytes(r.total_bytes),
                   r.total_bytes));
  for (const auto& [name, d] : r.by_dtype)
    line(fmt::format("  {:<8} {:>7} tensors  {:>12}", name, d.tensors, human_bytes(d.bytes)));
  if (r.has_config) line("model: " + r.model);
  if (!r.expert_parallel) {
    line(r.stacked_experts ? "layout: HF (experts stacked per layer)"
                           : "layout: HF (one tensor per expert)");
  } else {
    const auto& ep = *r.expert_parallel;
    std::string where;
    if (!ep.recorded)
      where = "no EP metadata: read as the whole checkpoint";
    else if (!ep.unreadable.empty())
      where = "EP metadata unreadable: " + ep.unreadable;
    else
      where = fmt::format("EP rank {} of {} holds {} ({}{})", ep.rank, ep.size,
                          expert_span(ep.expert_start, ep.expert_count), ep.expert_count,
                          r.has_config ? fmt::format(" of {}", r.n_routed_experts) : std::string());
    line("layout: native (grouped experts); " + where);
    for (const auto& d : ep.disagreements) line("  disagrees: " + d);
  }
  if (r.has_config && r.latent_attention)
    line(fmt::format("layers: {} (latent attention; {} dense, {} MoE), MTP layers: {}", r.layers,
                     r.dense_layers, r.moe_layers, r.mtp_layers));
  else if (r.has_config)
    line(fmt::format(
        "layers: {} ({} full attention, {} sliding window; {} dense, {} MoE), MTP layers: {}",
        r.layers, r.full_layers, r.swa_layers, r.dense_layers, r.moe_layers, r.mtp_layers));
  if (!r.experts_per_layer.empty()) {
    std::map<int64_t, std::vector<int64_t>> by_count;
    for (const auto& [l, n] : r.experts_per_layer) by_count[n].push_back(l);
    const std::string config =
        r.has_config ? fmt::format("config: {}", r.n_routed_experts) : "no config.json";
    for (const auto& [n, ls] : by_count)
      line(fmt::format("experts: {} in each of layers {} ({}{})", n, fmt::join(ls, ","),
                       r.native ? "grouped tensors' first dimension; " : "", config));
  }
  if (!r.grouped.empty()) {
    line("grouped expert tensors (name, count, shape, dtype):");
    for (const auto& g : r.grouped)
      line(fmt::format("  {:<44} {:>6} x {:<18} {}", g.family, g.count, format_shape(g.shape),
                       g.dtype));
  }
  if (!r.fp8.empty()) {
    line("FP8 weights (family, count, shape, scale shape, scale layout):");
    for (const auto& f : r.fp8)
      line(fmt::format("  {:<34} {:>6} x {:<14} scale {} {:<10} {}", f.family, f.count,
                       format_shape(f.shape), f.scale_dtype, format_shape(f.scale_shape),
                       f.layout));
  }
  if (!r.attention.empty()) {
    line("attention q/k/v scale layout per layer:");
    for (const auto& a : r.attention)
      line(fmt::format("  layer {:<6} {:<15} k scale {:<10} {}", a.layer, a.kind,
                       format_shape(a.k_scale_shape), a.layout));
  }
  if (r.problems.empty() && r.notes.empty()) line("unexpected: nothing");
  for (const auto& p : r.problems) line("problem: " + p);
  for (const auto& n : r.notes) line("note: " + n);
  return out;
}

}  // namespace moeckpt
