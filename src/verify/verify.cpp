#include "moeckpt/verify.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>

#include "adapter/scale_ref.hpp"
#include "adapter/validate.hpp"
#include "exec/transforms.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/mimo_rules.hpp"
#include "moeckpt/numerics.hpp"
#include "moeckpt/tensor_key.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

namespace {

// One HF-layout tensor of a checkpoint, as float values (and FP8 codes when stored as FP8).
struct LogicalTensor {
  std::vector<uint64_t> shape;
  Dtype dtype{};             // as stored
  bool dequantized = false;  // values are float32 products fp8 * scale
  std::function<std::vector<float>()> values;
  std::function<std::vector<uint8_t>()> fp8_codes;  // empty when not FP8
};

std::string family_of(const std::string& key) {
  auto k = classify_tensor_name(key);
  if (k.kind == TensorKind::kExpertProj)
    return "experts." + std::string(projection_name(k.projection));
  std::string f(tensor_kind_name(k.kind));
  if (k.projection != Projection::kNone) f += "." + std::string(projection_name(k.projection));
  return (k.mtp ? "mtp." : "") + f;
}

class LogicalView {
 public:
  LogicalView(const fs::path& dir, const MimoConfig& config) : src_({dir}), config_(config) {
    // Each side must be a checkpoint its conversion would accept (the same checks: layout,
    // shapes against config.json, completeness, scales, NaN codes), so a difference is a real one.
    validate_checkpoint(src_, config);
    auto md = src_.metadata(0);
    int64_t start = 0;
    if (auto it = md.find(kMetaExpertStart); it != md.end())
      std::from_chars(it->second.data(), it->second.data() + it->second.size(), start);
    const BlockSize block = config.block.value_or(BlockSize{});
    for (const auto& t : src_.tensors()) {
      if (t.name.ends_with("_scale_inv")) continue;
      auto key = classify_tensor_name(t.name);
      if (key.kind == TensorKind::kGroupedExperts && t.shape.size() == 3) {
        add_grouped(t, key, start);
        continue;
      }
      LogicalTensor lt;
      lt.shape = t.shape;
      lt.dtype = t.dtype;
      const SourceTensor* tp = &t;
      const auto* scale = t.name.ends_with(".weight") ? src_.find(t.name + "_scale_inv") : nullptr;
      if (scale) {
        DequantInput in = dequant_input_for(t, *scale, key, block);
        lt.values = [this, in]() { return exec::dequant_products(src_, in); };
        lt.dequantized = true;
      } else {
        lt.values = [this, tp]() { return exec::to_floats(*tp, src_.read_all(*tp)); };
      }
      if (t.dtype == Dtype::F8_E4M3) lt.fp8_codes = [this, tp]() { return src_.read_all(*tp); };
      tensors_[t.name] = std::move(lt);
    }
  }
  std::map<std::string, LogicalTensor>& tensors() { return tensors_; }

 private:
  DequantInput dequant_input_for(const SourceTensor& w, const SourceTensor& s, const TensorKey& key,
                                 BlockSize block) {
    DequantInput in;
    in.weight = &w;
    in.nan = NanPolicy::kTorchCompat;  // compare NaN as NaN instead of refusing
    in.scale = resolve_scale_ref(src_, w, s, key, config_, {block, true, false});
    return in;
  }

  void add_grouped(const SourceTensor& t, const TensorKey& key, int64_t start) {
    const int64_t Ie = config_.moe_intermediate_size;
    const bool gate_up = key.projection == Projection::kGateAndUp;
    const auto n = static_cast<int64_t>(t.shape[0]);
    for (int64_t s = 0; s < n; ++s) {
      const std::string base =
          fmt::format("{}layers.{}.mlp.experts.{}.", key.prefix, *key.layer, start + s);
      auto add = [&](const std::string& name, int64_t col0, int64_t cols) {
        LogicalTensor lt;
        lt.shape = {static_cast<uint64_t>(cols), t.shape[1]};
        lt.dtype = t.dtype;
        MatrixView v{&t, s, col0, cols};
        const SourceTensor* tp = &t;
        lt.values = [this, v, tp]() {
          auto m = exec::load_matrix(src_, v);
          return exec::to_floats(*tp, m.raw);
        };
        tensors_[name] = std::move(lt);
      };
      if (gate_up) {
        add(base + "gate_proj.weight", 0, Ie);
        add(base + "up_proj.weight", Ie, static_cast<int64_t>(t.shape[2]) - Ie);
      } else {
        add(base + "down_proj.weight", 0, static_cast<int64_t>(t.shape[2]));
      }
    }
  }

  CheckpointSource src_;
  const MimoConfig& config_;
  std::map<std::string, LogicalTensor> tensors_;
};

}  // namespace

bool VerifyReport::ok() const {
  if (!only_in_a.empty() || !only_in_b.empty() || !shape_mismatch.empty()) return false;
  for (const auto& [_, f] : families)
    if (f.beyond_tolerance) return false;
  return true;
}

VerifyReport verify_checkpoints(const fs::path& a, const fs::path& b, const VerifyOptions& o) {
  // NaN would make every comparison pass.
  if (!std::isfinite(o.rtol) || !std::isfinite(o.atol) || o.rtol < 0 || o.atol < 0)
    fail("", "",
         fmt::format("tolerances rtol={} atol={} are not finite and non-negative", o.rtol, o.atol),
         "finite tolerances >= 0");
  // Each side is read with its own config.json (a folder without one cannot be validated).
  MimoConfig config_a = MimoConfig::load(o.config ? *o.config : a / "config.json");
  MimoConfig config_b = o.config ? config_a : MimoConfig::load(b / "config.json");
  LogicalView va(a, config_a), vb(b, config_b);
  VerifyReport r;
  for (auto& [name, ta] : va.tensors()) {
    auto it = vb.tensors().find(name);
    if (it == vb.tensors().end()) {
      r.only_in_a.push_back(name);
      continue;
    }
    auto& tb = it->second;
    if (ta.shape != tb.shape) {
      r.shape_mismatch.push_back(name);
      continue;
    }
    auto& f = r.families[family_of(name)];
    f.tensors++;
    auto xa = ta.values(), xb = tb.values();
    // A dequantized side is compared at the precision the other side stores (from-hf's BF16).
    auto round_to = [](std::vector<float>& x, Dtype d) {
      if (d != Dtype::BF16) return;
      for (auto& v : x) v = numerics::bf16_to_f32(numerics::f32_to_bf16_rne(v));
    };
    if (ta.dequantized && !tb.dequantized) round_to(xa, tb.dtype);
    if (tb.dequantized && !ta.dequantized) round_to(xb, ta.dtype);
    f.elements += xa.size();
    for (size_t i = 0; i < xa.size(); ++i) {
      const float p = xa[i], q = xb[i];
      uint32_t bp, bq;
      std::memcpy(&bp, &p, 4);
      std::memcpy(&bq, &q, 4);
      const bool both_nan = std::isnan(p) && std::isnan(q);
      if (bp == bq || both_nan) {
        f.bitwise_equal++;
        continue;
      }
      const double d = std::fabs(static_cast<double>(p) - static_cast<double>(q));
      if (std::isnan(d) || d > o.atol + o.rtol * std::fabs(static_cast<double>(q)))
        f.beyond_tolerance++;
      if (!std::isnan(d)) {
        f.max_abs = std::max(f.max_abs, d);
        if (q != 0) f.max_rel = std::max(f.max_rel, d / std::fabs(static_cast<double>(q)));
      }
    }
    if (ta.fp8_codes && tb.fp8_codes) {
      auto ca = ta.fp8_codes(), cb = tb.fp8_codes();
      f.fp8_elements += ca.size();
      for (size_t i = 0; i < ca.size(); ++i) {
        if (ca[i] == cb[i]) {
          f.fp8_equal++;
          continue;
        }
        // Same sign and adjacent magnitudes (codes are ordered by magnitude within a sign).
        if ((ca[i] & 0x80) == (cb[i] & 0x80) && std::abs((ca[i] & 0x7F) - (cb[i] & 0x7F)) == 1)
          f.fp8_one_step++;
        if ((ca[i] == 0x80 && cb[i] == 0x00) || (ca[i] == 0x00 && cb[i] == 0x80))
          f.signed_zeros_lost++;
      }
    }
  }
  for (auto& [name, _] : vb.tensors())
    if (!va.tensors().count(name)) r.only_in_b.push_back(name);
  return r;
}

std::string to_text(const VerifyReport& r, const VerifyOptions& o) {
  std::string out = fmt::format("{:<30} {:>7} {:>12} {:>12} {:>11} {:>11} {:>9}  {}\n", "family",
                                "tensors", "elements", "bit-equal", "max abs", "max rel", "failing",
                                "fp8 codes equal / one step");
  uint64_t el = 0, eq = 0, bad = 0;
  for (const auto& [name, f] : r.families) {
    std::string fp8 = f.fp8_elements
                          ? fmt::format("{:.4f}% / {:.4f}%", 100.0 * f.fp8_equal / f.fp8_elements,
                                        100.0 * f.fp8_one_step / f.fp8_elements)
                          : "-";
    out +=
        fmt::format("{:<30} {:>7} {:>12} {:>12} {:>11.4g} {:>11.4g} {:>9}  {}\n", name, f.tensors,
                    f.elements, f.bitwise_equal, f.max_abs, f.max_rel, f.beyond_tolerance, fp8);
    el += f.elements;
    eq += f.bitwise_equal;
    bad += f.beyond_tolerance;
  }
  for (const auto& n : r.only_in_a) out += "only in A: " + n + "\n";
  for (const auto& n : r.only_in_b) out += "only in B: " + n + "\n";
  for (const auto& n : r.shape_mismatch) out += "shape differs: " + n + "\n";
  out += fmt::format("total: {} elements, {} bitwise equal, {} beyond rtol={} atol={}; {}\n", el,
                     eq, bad, o.rtol, o.atol, r.ok() ? "OK" : "MISMATCH");
  return out;
}

}  // namespace moeckpt
