#include "moeckpt/verify.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>

#include "adapter/checkpoint_validation.hpp"
#include "adapter/scale_ref.hpp"
#include "adapter/stacked_member_source.hpp"
#include "adapter/validate.hpp"
#include "core/printable.hpp"
#include "exec/transforms.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/model_spec.hpp"
#include "moeckpt/numerics.hpp"
#include "moeckpt/sharded_save.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

namespace {

// Elements of one comparison step: the two sides' values are held a chunk of rows at a time, so
// memory stays bounded whatever the tensor size (a single row is the smallest step).
constexpr uint64_t kChunkElements = 4ull << 20;

// One HF-layout tensor of a checkpoint as a [rows, cols] matrix, read as float values (and FP8
// codes when stored as FP8) a range of rows at a time.
struct LogicalTensor {
  std::vector<uint64_t> shape;
  Dtype dtype{};             // as stored
  bool dequantized = false;  // values are float32 products fp8 * scale
  int64_t rows = 1, cols = 1;
  std::function<std::vector<float>(int64_t r0, int64_t r1)> values;
  std::function<std::vector<uint8_t>(int64_t r0, int64_t r1)> fp8_codes;  // empty when not FP8
};

// [rows, cols] of a stored tensor: its first dimension by the rest (a scalar is [1, 1]).
std::pair<int64_t, int64_t> matrix_dims(const std::vector<uint64_t>& shape) {
  if (shape.empty()) return {1, 1};
  uint64_t cols = 1;
  for (size_t i = 1; i < shape.size(); ++i) cols *= shape[i];
  return {static_cast<int64_t>(shape[0]), static_cast<int64_t>(cols)};
}

std::string family_of(const ModelSpec& spec, const std::string& key) {
  auto k = spec.classify(key);
  if (k.kind == TensorKind::kExpertProj)
    return "experts." + std::string(projection_name(k.projection));
  std::string f(tensor_kind_name(k.kind));
  if (k.projection != Projection::kNone) f += "." + std::string(projection_name(k.projection));
  return (k.mtp ? "mtp." : "") + f;
}

class LogicalView {
 public:
  LogicalView(const fs::path& dir, const ModelConfig& config)
      : src_({dir}), spec_(model_spec_for(config)) {
    // Each side must be a checkpoint its conversion would accept (the same checks: layout,
    // shapes against config.json, completeness, scales, NaN codes), so a difference is a real one.
    validate_checkpoint(src_, config);
    auto md = src_.metadata(0);
    int64_t start = 0;
    if (auto it = md.find(kMetaExpertStart); it != md.end())
      std::from_chars(it->second.data(), it->second.data() + it->second.size(), start);
    const BlockSize block = config.block.value_or(BlockSize{});
    const bool fused_hf = spec_->hf_qkv_fused() && !is_native_layout(src_, *spec_);
    // Stacked HF experts are compared per expert, as the native side's slots are.
    if (spec_->hf_experts_stacked() && !is_native_layout(src_, *spec_))
      members_ = std::make_unique<StackedMemberSource>(src_, *spec_);
    for (const auto& t : view().tensors()) {
      if (spec_->is_block_scale(t.name)) continue;
      auto key = spec_->classify(t.name);
      if (key.is_mx_scale) continue;
      if ((key.kind == TensorKind::kGroupedExperts || key.kind == TensorKind::kStackedExperts) &&
          t.shape.size() == 3) {
        add_grouped(t, key, start);
        continue;
      }
      if (fused_hf && key.kind == TensorKind::kAttentionProj &&
          key.projection == Projection::kQkv) {
        add_tp_interleaved(t, key, block);
        continue;
      }
      if (key.kind == TensorKind::kExpertProj && t.dtype == Dtype::U8) {
        add_mxfp4(t);
        continue;
      }
      if (key.kind == TensorKind::kExpertBias && t.shape.size() == 2) {
        add_expert_bias(t, members_ ? 0 : start);
        continue;
      }
      LogicalTensor lt;
      lt.shape = t.shape;
      lt.dtype = t.dtype;
      std::tie(lt.rows, lt.cols) = matrix_dims(t.shape);
      const SourceTensor* tp = &t;
      const int64_t cols = lt.cols;
      const uint64_t es = dtype_size(t.dtype);
      auto read_rows = [this, tp, cols, es](int64_t r0, int64_t r1) {
        std::vector<uint8_t> bytes(static_cast<size_t>((r1 - r0) * cols) * es);
        src_.read(*tp, static_cast<uint64_t>(r0 * cols) * es, bytes);
        return bytes;
      };
      const auto scale_name = spec_->block_scale_name(t.name);
      const auto* scale = scale_name ? src_.find(*scale_name) : nullptr;
      if (scale) {
        DequantInput in = dequant_input_for(t, *scale, key, block);
        lt.values = [this, in](int64_t r0, int64_t r1) {
          return exec::dequant_products(src_, in, r0, r1);
        };
        lt.dequantized = true;
      } else {
        lt.values = [tp, read_rows](int64_t r0, int64_t r1) {
          return exec::to_floats(*tp, read_rows(r0, r1));
        };
      }
      if (t.dtype == Dtype::F8_E4M3) lt.fp8_codes = read_rows;
      tensors_[spec_->hf_name_of(t.name).value_or(t.name)] = std::move(lt);  // the HF key space
    }
  }
  std::map<std::string, LogicalTensor>& tensors() { return tensors_; }
  const ModelSpec& spec() const { return *spec_; }

 private:
  DequantInput dequant_input_for(const SourceTensor& w, const SourceTensor& s, const TensorKey& key,
                                 BlockSize block) {
    DequantInput in;
    in.weight = &w;
    in.nan = NanPolicy::kTorchCompat;  // compare NaN as NaN instead of refusing
    in.scale = resolve_scale_ref(src_, w, s, key, *spec_, {block, true, false});
    return in;
  }

  // The q, k and v projections of a fused qkv_proj (split natively): each a gather of one row
  // run per TP shard, dequantized with the shard's own scale grid; or one canonical [Q, K, V]
  // tensor (fused natively).
  void add_tp_interleaved(const SourceTensor& t, const TensorKey& key, BlockSize block) {
    const auto& dims = spec_->attention_dims(key);
    const auto layout = spec_->qkv_interleave(
        dims, spec_->checkpoint_tp(src_.index_metadata(0), t.file), true, t.file, t.name);
    DequantInput in;
    in.weight = &t;
    in.nan = NanPolicy::kTorchCompat;
    if (const auto* s = src_.find(*spec_->block_scale_name(t.name))) {
      ScaleRef r;
      r.tensors = {s};
      r.block_rows = block.rows;
      r.block_cols = block.cols;
      r.period_rows = layout.rows_per_shard();
      r.period_scale_rows = ceil_div(layout.rows_per_shard(), block.rows);
      r.check_values = false;
      in.scale = r;
    }
    const auto cols = static_cast<int64_t>(t.shape.at(1));
    const int parts = spec_->native_qkv_fused() ? 1 : 3;
    for (int p = 0; p < parts; ++p) {
      const int64_t n = layout.shard_rows(p);
      // Source row runs of logical rows [r0, r1) (rows contiguous in the source).
      auto runs = [layout, n, p, parts](int64_t r0, int64_t r1) {
        std::vector<std::pair<int64_t, int64_t>> out;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t at =
              parts == 1 ? interleaved_row(layout, r) : layout.first_row(r / n, p) + r % n;
          if (!out.empty() && out.back().second == at)
            out.back().second++;
          else
            out.emplace_back(at, at + 1);
        }
        return out;
      };
      LogicalTensor lt;
      const int64_t rows = parts == 1 ? layout.rows() : layout.tp * n;
      lt.shape = {static_cast<uint64_t>(rows), static_cast<uint64_t>(cols)};
      lt.dtype = t.dtype;
      lt.rows = rows;
      lt.cols = cols;
      lt.dequantized = in.scale.has_value();
      lt.values = [this, in, runs](int64_t r0, int64_t r1) {
        std::vector<float> out;
        for (auto [a, b] : runs(r0, r1)) {
          auto v =
              in.scale
                  ? exec::dequant_products(src_, in, a, b)
                  : exec::dequant_products(
                        src_, DequantInput{in.weight, {}, nullptr, NanPolicy::kTorchCompat}, a, b);
          out.insert(out.end(), v.begin(), v.end());
        }
        return out;
      };
      if (t.dtype == Dtype::F8_E4M3) {
        const SourceTensor* w = &t;
        lt.fp8_codes = [this, w, cols, runs](int64_t r0, int64_t r1) {
          std::vector<uint8_t> out;
          for (auto [a, b] : runs(r0, r1)) {
            std::vector<uint8_t> bytes(static_cast<size_t>((b - a) * cols));
            src_.read(*w, static_cast<uint64_t>(a * cols), bytes);
            out.insert(out.end(), bytes.begin(), bytes.end());
          }
          return out;
        };
      }
      tensors_[parts == 1 ? t.name : spec_->attention_weight_name(t.name, kQkv[p])] = std::move(lt);
    }
  }

  // An MXFP4 expert weight as its [out, in] values (one expert, dequantized whole).
  const TensorSource& view() const {
    return members_ ? static_cast<const TensorSource&>(*members_) : src_;
  }

  // Expert biases [n, out] from expert `start` on: one row per expert ("<name>[e]"), so an EP
  // rank's rows meet the HF tensor's.
  void add_expert_bias(const SourceTensor& t, int64_t start) {
    const auto n = static_cast<int64_t>(t.shape[0]);
    const auto cols = static_cast<int64_t>(t.shape[1]);
    const uint64_t es = dtype_size(t.dtype);
    for (int64_t e = 0; e < n; ++e) {
      LogicalTensor lt;
      lt.shape = {t.shape[1]};
      lt.dtype = t.dtype;
      lt.cols = cols;
      const SourceTensor* tp = &t;
      lt.values = [this, tp, e, cols, es](int64_t, int64_t) {
        std::vector<uint8_t> bytes(static_cast<size_t>(cols) * es);
        src_.read(*tp, static_cast<uint64_t>(e * cols) * es, bytes);
        return exec::to_floats(*tp, bytes);
      };
      tensors_[fmt::format("{}[{}]", t.name, start + e)] = std::move(lt);
    }
  }

  void add_mxfp4(const SourceTensor& t) {
    const auto* s = view().find(spec_->mx_scale_name(t.name));
    if (!s) fail(ErrorKind::kMalformedFile, t.file, t.name, "MXFP4 weight without its scale");
    LogicalTensor lt;
    lt.rows = static_cast<int64_t>(t.shape.at(0));
    lt.cols = 2 * static_cast<int64_t>(t.shape.at(1));
    lt.shape = {static_cast<uint64_t>(lt.rows), static_cast<uint64_t>(lt.cols)};
    lt.dtype = Dtype::U8;
    lt.dequantized = true;
    DequantInput in;
    in.weight = &t;
    in.mx_scale = s;
    in.nan = NanPolicy::kTorchCompat;
    const int64_t cols = lt.cols;
    lt.values = [this, in, cols](int64_t r0, int64_t r1) {
      std::vector<float> all(static_cast<size_t>(in.weight->shape[0]) * static_cast<size_t>(cols));
      exec::dequant_mxfp4_into(src_, in, Dtype::F32, reinterpret_cast<uint8_t*>(all.data()), cols,
                               false);
      return std::vector<float>(all.begin() + r0 * cols, all.begin() + r1 * cols);
    };
    tensors_[t.name] = std::move(lt);
  }

  void add_grouped(const SourceTensor& t, const TensorKey& key, int64_t start) {
    const std::vector<Projection> parts = spec_->expert_grouping(key.projection).parts;
    const auto n = static_cast<int64_t>(t.shape[0]);
    for (int64_t s = 0; s < n; ++s) {
      auto add = [&](const std::string& name, int64_t col0, int64_t cols) {
        LogicalTensor lt;
        lt.shape = {static_cast<uint64_t>(cols), t.shape[1]};
        lt.dtype = t.dtype;
        lt.rows = cols;
        lt.cols = static_cast<int64_t>(t.shape[1]);
        MatrixView v{&t, s, col0, cols};
        const SourceTensor* tp = &t;
        // A slot view is the transpose of one expert's slot: read the slot (bounded by one
        // expert's size) and keep the rows asked for.
        lt.values = [this, v, tp](int64_t r0, int64_t r1) {
          auto m = exec::load_matrix(src_, v);
          const size_t row_bytes = static_cast<size_t>(m.cols) * dtype_size(tp->dtype);
          return exec::to_floats(*tp, std::span<const uint8_t>(m.raw).subspan(
                                          static_cast<size_t>(r0) * row_bytes,
                                          static_cast<size_t>(r1 - r0) * row_bytes));
        };
        tensors_[name] = std::move(lt);
      };
      // Each part's HF width; the last part takes the rest of the slot.
      int64_t col = 0;
      for (size_t i = 0; i < parts.size(); ++i) {
        const int64_t cols = i + 1 == parts.size()
                                 ? static_cast<int64_t>(t.shape[2]) - col
                                 : static_cast<int64_t>(spec_->expert_hf_shape(parts[i])[0]);
        add(spec_->expert_weight_name(key.prefix, *key.layer, start + s, parts[i]), col, cols);
        col += cols;
      }
    }
  }

  CheckpointSource src_;
  std::unique_ptr<const ModelSpec> spec_;
  std::unique_ptr<StackedMemberSource> members_;  // stacked HF experts as per-expert views
  std::map<std::string, LogicalTensor> tensors_;
};

}  // namespace

namespace {

template <class Round>
void compare_values(LogicalTensor& ta, LogicalTensor& tb, int64_t r0, int64_t r1,
                    const VerifyOptions& o, VerifyFamily& f, Round&& round_to) {
  auto xa = ta.values(r0, r1), xb = tb.values(r0, r1);
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
}

void compare_codes(const std::vector<uint8_t>& ca, const std::vector<uint8_t>& cb,
                   VerifyFamily& f) {
  f.fp8_elements += ca.size();
  for (size_t i = 0; i < ca.size(); ++i) {
    if (ca[i] == cb[i]) {
      f.fp8_equal++;
      continue;
    }
    // Same sign and adjacent magnitudes (codes are ordered by magnitude within a sign).
    if ((ca[i] & 0x80) == (cb[i] & 0x80) && std::abs((ca[i] & 0x7F) - (cb[i] & 0x7F)) == 1)
      f.fp8_one_step++;
    if ((ca[i] == 0x80 && cb[i] == 0x00) || (ca[i] == 0x00 && cb[i] == 0x80)) f.signed_zeros_lost++;
  }
}

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
    fail(ErrorKind::kInvalidArgument, "", "",
         fmt::format("tolerances rtol={} atol={} are not finite and non-negative", o.rtol, o.atol),
         "finite tolerances >= 0");
  // Each side is read with its own config.json (a folder without one cannot be validated).
  ModelConfig config_a = ModelConfig::load(o.config ? *o.config : checkpoint_config_path(a));
  ModelConfig config_b = o.config ? config_a : ModelConfig::load(checkpoint_config_path(b));
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
    auto& f = r.families[family_of(va.spec(), name)];
    f.tensors++;
    // A dequantized side is compared at the precision the other side stores (from-hf's BF16).
    auto round_to = [](std::vector<float>& x, Dtype d) {
      if (d != Dtype::BF16) return;
      for (auto& v : x) v = numerics::bf16_to_f32(numerics::f32_to_bf16_rne(v));
    };
    const int64_t step =
        std::max<int64_t>(1, static_cast<int64_t>(kChunkElements) / std::max<int64_t>(1, ta.cols));
    for (int64_t r0 = 0; r0 < ta.rows; r0 += step) {
      const int64_t r1 = std::min(ta.rows, r0 + step);
      compare_values(ta, tb, r0, r1, o, f, round_to);
      if (ta.fp8_codes && tb.fp8_codes)
        compare_codes(ta.fp8_codes(r0, r1), tb.fp8_codes(r0, r1), f);
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
  return printable_lines(out);  // names come from the files
}

}  // namespace moeckpt
