#include "adapter/validate.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "adapter/block_size_check.hpp"
#include "exec/numeric_refusals.hpp"
#include "exec/transforms.hpp"
#include "exec/worker_threads.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/tensor_key.hpp"

namespace moeckpt {
namespace {

// Where a missing tensor should have been: the folder of the source's files.
std::string folder_of(const TensorSource& src) {
  if (src.tensors().empty()) return {};
  const std::string& f = src.tensors().front().file;
  auto slash = f.rfind('/');
  return slash == std::string::npos ? std::string(".") : f.substr(0, slash);
}

bool native_metadata(const std::map<std::string, std::string>& md) {
  auto it = md.find(kMetaLayout);
  return it != md.end() && it->second == "native";
}

std::string elements_at(const SourceTensor& t, uint64_t index) {
  if (t.shape.size() < 2) return fmt::format("[{}]", index);
  std::vector<uint64_t> at(t.shape.size());
  for (size_t d = t.shape.size(); d-- > 0;) {
    at[d] = index % t.shape[d];
    index /= t.shape[d];
  }
  return format_shape(at);
}

// Reads the listed tensors in chunks of at most 8 MiB on several threads; `check` sees each
// chunk with the index of its first element and throws to refuse. The first error is rethrown.
template <class Check>
void scan_parallel(const TensorSource& src, const std::vector<const SourceTensor*>& tensors,
                   unsigned threads, const Check& check) {
  constexpr uint64_t kChunk = 8ull << 20;
  struct Item {
    const SourceTensor* t;
    uint64_t offset, bytes;
  };
  std::vector<Item> items;
  for (const auto* t : tensors) {
    const uint64_t esize = std::max<uint64_t>(1, dtype_size(t->dtype));
    const uint64_t chunk = kChunk / esize * esize;
    for (uint64_t off = 0; off < t->nbytes; off += chunk)
      items.push_back({t, off, std::min(chunk, t->nbytes - off)});
  }
  exec::parallel_for(items.size(), threads, [&](size_t i) {
    const Item& it = items[i];
    std::vector<uint8_t> buf(it.bytes);
    src.read(*it.t, it.offset, buf);
    check(*it.t, it.offset / std::max<uint64_t>(1, dtype_size(it.t->dtype)),
          std::span<const uint8_t>(buf));
  });
}

int64_t parse_count(const std::map<std::string, std::string>& md, const char* key,
                    const std::string& file) {
  auto it = md.find(key);
  if (it == md.end())
    fail(ErrorKind::kMalformedFile, file, "",
         fmt::format("__metadata__ has moeckpt keys but no \"{}\"", key),
         "moeckpt.ep_size, ep_rank, expert_start and expert_count together");
  int64_t v = -1;
  const auto& s = it->second;
  auto [p, e] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (e != std::errc() || p != s.data() + s.size() || v < 0 || v > (int64_t{1} << 24))
    fail(ErrorKind::kMalformedFile, file, "",
         fmt::format("__metadata__ {} = \"{}\" is not a count", key, s), "a non-negative integer");
  return v;
}

}  // namespace

bool is_native_layout(const TensorSource& src, const ModelSpec& spec) {
  for (size_t p = 0; p < src.parts(); ++p)
    if (native_metadata(src.metadata(p))) return true;
  for (const auto& t : src.tensors())
    if (spec.classify(t.name).kind == TensorKind::kGroupedExperts) return true;
  return false;
}

void refuse_native_layout(const TensorSource& src, const ModelSpec& spec) {
  for (const auto& t : src.tensors())
    if (spec.classify(t.name).kind == TensorKind::kGroupedExperts)
      fail(ErrorKind::kUnsupportedLayout, t.file, t.name,
           "is a grouped expert tensor: this folder holds the native layout, not HF",
           "an HF checkpoint with per-expert weights (to-hf converts native folders)");
  for (size_t p = 0; p < src.parts(); ++p)
    if (native_metadata(src.metadata(p)))
      fail(ErrorKind::kUnsupportedLayout,
           src.tensors().empty() ? folder_of(src) : src.tensors().front().file, "",
           "__metadata__ says moeckpt.layout = native: this folder holds the native layout, not "
           "HF",
           "an HF checkpoint (to-hf converts native folders)");
}

void refuse_hf_layout(const TensorSource& src, const ModelSpec& spec) {
  for (const auto& t : src.tensors()) {
    const auto k = spec.classify(t.name);
    if (k.is_scale)
      fail(ErrorKind::kUnsupportedLayout, t.file, t.name,
           "is an FP8 block scale: this folder holds the HF layout, not the native layout",
           "a native (grouped-expert) checkpoint (from-hf converts HF folders)");
    if (spec.is_grouped_expert(k))
      fail(ErrorKind::kUnsupportedLayout, t.file, t.name,
           "is a per-expert weight: this folder holds the HF layout, not the native layout",
           "a native (grouped-expert) checkpoint (from-hf converts HF folders)");
    if (spec.stacked_expert_member(t.name, 0) || k.kind == TensorKind::kStackedExperts)
      fail(ErrorKind::kUnsupportedLayout, t.file, t.name,
           "is a stacked expert tensor: this folder holds the HF layout, not the native layout",
           "a native (grouped-expert) checkpoint (from-hf converts HF folders)");
  }
}

void check_layer_index(const SourceTensor& t, const TensorKey& k, const ModelSpec& spec) {
  const ModelConfig& c = spec.config();
  if (!k.layer || k.mtp || *k.layer < c.num_hidden_layers) return;
  const int64_t n = c.num_hidden_layers;
  const auto decoders =
      n == 1 ? std::string("decoder layer 0") : fmt::format("decoder layers 0..{}", n - 1);
  const auto mtp = spec.configured_mtp_layers();
  // MTP layers stored as layers.<n + i> after the decoder layers: the declared count extends the
  // range (a layer past it is neither kind).
  if (mtp && spec.mtp_layer_id(0) == n)
    fail(ErrorKind::kConfigMismatch, t.file, t.name,
         fmt::format("layer {} is not below num_hidden_layers = {} + num_nextn_predict_layers = {} "
                     "of config.json",
                     *k.layer, n, *mtp),
         *mtp == 0   ? decoders + " and no MTP layer"
         : *mtp == 1 ? fmt::format("{}, then MTP layer {}", decoders, n)
                     : fmt::format("{}, then MTP layers {}..{}", decoders, n, n + *mtp - 1));
  fail(ErrorKind::kConfigMismatch, t.file, t.name,
       fmt::format("layer {} is not below num_hidden_layers = {} of config.json", *k.layer, n),
       decoders);
}

void check_shapes_against_config(const TensorSource& src, const ModelSpec& spec) {
  const ModelConfig& c = spec.config();
  for (const auto& t : src.tensors()) {
    const auto k = spec.classify(t.name);
    if (k.is_scale) continue;
    check_layer_index(t, k, spec);
    if (auto why = spec.contradicts_config(k))
      fail(ErrorKind::kConfigMismatch, t.file, t.name, *why, "the tensors config.json implies");
    auto want = spec.expected_hf_shape(k);
    if (want && k.kind == TensorKind::kExpertProj && t.dtype == Dtype::U8)
      (*want)[1] /= 2;  // MXFP4: two E2M1 codes per byte along the input axis
    if (want && *want != t.shape)
      fail(ErrorKind::kConfigMismatch, t.file, t.name,
           "shape " + format_shape(t.shape) + " disagrees with config.json", format_shape(*want));
  }
  if (c.block) check_block_size_matches_scales(src, spec, *c.block);
}

void check_layers_complete(const TensorSource& src, const ModelSpec& spec, bool native,
                           std::optional<int64_t> expert) {
  std::set<int64_t> mtp_layers;
  bool lm_head = false;
  // The decoder's prefix: the one most layer tensors carry (other towers, e.g. an audio encoder's
  // layers, are fewer), so that the answer never depends on the order the source lists tensors.
  std::map<std::string, size_t> prefixes;
  for (const auto& t : src.tensors()) {
    const auto k = spec.classify(t.name);
    if (k.kind == TensorKind::kLmHead) lm_head = true;
    if (k.is_scale || !k.layer) continue;
    if (k.mtp)
      mtp_layers.insert(*k.layer);
    else
      ++prefixes[k.prefix];
  }
  std::string prefix = "model.";
  size_t most = 0;
  for (const auto& [p, n] : prefixes)
    if (n > most) {
      prefix = p;
      most = n;
    }
  // MTP layers may be left out (some transformers saves drop them, synth --mtp says fewer), but
  // only from the last: each predicts from the one before it, so a kept one needs those before it.
  // The first missing one is enough to refuse (and bounds the loop by the layers present, however
  // large an index a file names).
  std::set<int64_t> needed = mtp_layers;
  if (!mtp_layers.empty())
    for (int64_t i = 0; spec.mtp_layer_id(i) < *mtp_layers.rbegin(); ++i)
      if (!mtp_layers.count(spec.mtp_layer_id(i))) {
        needed.insert(spec.mtp_layer_id(i));
        break;
      }
  const std::string where = folder_of(src);
  for (const auto& r : spec.required_tensors(prefix, needed, native)) {
    if (src.find(r.name) || (r.backend_name && src.find(*r.backend_name))) continue;
    const auto rk = spec.classify(r.name);
    if (lm_head && rk.kind == TensorKind::kLmHead) continue;
    std::string what = "missing: " + r.needed_by + " needs it";
    if (rk.mtp && rk.layer && !mtp_layers.count(*rk.layer))
      what +=
          fmt::format(" (MTP layer {} is there, and MTP layers may be left out only from the last)",
                      *mtp_layers.rbegin());
    fail(ErrorKind::kConfigMismatch, where, r.name, what, "every tensor config.json implies");
  }
  if (native || !expert) return;  // grouped expert tensors are required tensors natively
  // Every layer with routed experts holds some (which ones, the expert checks of the conversion
  // say): one expert's projections stand for the layer.
  const ModelConfig& c = spec.config();
  std::vector<int64_t> expert_layers;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.layer_is_moe[static_cast<size_t>(l)]) expert_layers.push_back(l);
  if (spec.mtp_layers_have_routed_experts())
    expert_layers.insert(expert_layers.end(), needed.begin(), needed.end());
  for (int64_t l : expert_layers)
    for (const auto& g : spec.expert_groupings())
      for (Projection p : g.parts) {
        const auto name = spec.expert_weight_name(prefix, l, *expert, p);
        // A stacked layout's experts may be its unquantized (grouped) form instead.
        const auto bf16 = spec.hf_experts_stacked()
                              ? spec.hf_name_of(spec.grouped_experts_name(prefix, l, g.grouped))
                              : std::nullopt;
        if (!src.find(name) && !(bf16 && src.find(*bf16)))
          fail(ErrorKind::kConfigMismatch, where, name,
               "missing: " + spec.describe_layer(l) + " needs it",
               "every tensor config.json implies");
      }
}

std::vector<int64_t> check_native_metadata(const TensorSource& src, const ModelSpec& spec) {
  const ModelConfig& c = spec.config();
  std::vector<int64_t> starts;
  std::optional<int64_t> world;
  std::map<int64_t, size_t> ranks;  // rank -> part
  const auto* ck_src = dynamic_cast<const CheckpointSource*>(&src);
  for (size_t p = 0; p < src.parts(); ++p) {
    const auto md = src.metadata(p);
    std::string file = "<memory>";
    if (ck_src && ck_src->checkpoint(p).shard_count()) {
      const auto& ck = ck_src->checkpoint(p);
      file = ck.shard(0).path();
      for (size_t s = 1; s < ck.shard_count(); ++s)
        for (const char* key :
             {kMetaLayout, kMetaEpSize, kMetaEpRank, kMetaExpertStart, kMetaExpertCount}) {
          auto a = md.find(key);
          auto b = ck.shard(s).header().metadata().find(key);
          const bool ha = a != md.end(), hb = b != ck.shard(s).header().metadata().end();
          if (ha != hb || (ha && a->second != b->second))
            fail(ErrorKind::kMalformedFile, ck.shard(s).path(), "",
                 fmt::format("__metadata__ {} = \"{}\" disagrees with {} (\"{}\")", key,
                             hb ? b->second : "", file, ha ? a->second : ""),
                 "the same moeckpt metadata in every shard of a folder");
        }
    }
    bool any = false;
    for (const char* key :
         {kMetaLayout, kMetaEpSize, kMetaEpRank, kMetaExpertStart, kMetaExpertCount})
      any = any || md.count(key);
    if (!any) {
      starts.push_back(0);
      continue;
    }
    if (auto it = md.find(kMetaLayout); it == md.end() || it->second != "native")
      fail(ErrorKind::kMalformedFile, file, "",
           fmt::format("__metadata__ moeckpt.layout is \"{}\"", it == md.end() ? "" : it->second),
           "\"native\"");
    const int64_t size = parse_count(md, kMetaEpSize, file);
    const int64_t rank = parse_count(md, kMetaEpRank, file);
    const int64_t start = parse_count(md, kMetaExpertStart, file);
    const int64_t count = parse_count(md, kMetaExpertCount, file);
    if (size < 1 || rank >= size)
      fail(ErrorKind::kMalformedFile, file, "",
           fmt::format("__metadata__ moeckpt.ep_rank = {} with ep_size = {}", rank, size),
           "0 <= ep_rank < ep_size");
    const auto want = ExpertRange::for_rank(c.n_routed_experts, size, rank);
    if (start != want.first || count != want.count)
      fail(ErrorKind::kConfigMismatch, file, "",
           fmt::format("__metadata__ says experts [{}, {}) for EP rank {}/{}, but with "
                       "n_routed_experts = {} that rank holds [{}, {})",
                       start, start + count, rank, size, c.n_routed_experts, want.first,
                       want.first + want.count),
           "moeckpt metadata consistent with config.json");
    if (world && *world != size)
      fail(ErrorKind::kConfigMismatch, file, "",
           fmt::format("__metadata__ moeckpt.ep_size = {} but another input folder says {}", size,
                       *world),
           "the folders of one expert-parallel checkpoint");
    world = size;
    if (auto [it, fresh] = ranks.emplace(rank, p); !fresh)
      fail(ErrorKind::kConfigMismatch, file, "",
           fmt::format("EP rank {} is given twice (input folders {} and {})", rank, it->second + 1,
                       p + 1),
           "each rank's folder once");
    for (const auto& t : src.tensors())
      if (t.part == p && spec.classify(t.name).kind == TensorKind::kGroupedExperts &&
          (t.shape.empty() || static_cast<int64_t>(t.shape[0]) != count))
        fail(ErrorKind::kConfigMismatch, t.file, t.name,
             fmt::format("grouped expert tensor of shape {} but __metadata__ "
                         "moeckpt.expert_count = {}",
                         format_shape(t.shape), count),
             fmt::format("[{}, ...]", count));
    starts.push_back(start);
  }
  return starts;
}

std::vector<LargeScale> check_scale_values(const TensorSource& src, const SourceTensor& s,
                                           int64_t used_rows, int64_t used_cols, float large) {
  std::vector<LargeScale> out;
  if (s.shape.size() != 2) return out;  // refused by the scale reference checks
  const uint64_t cols = std::max<uint64_t>(1, s.shape[1]);
  std::mutex m;
  scan_parallel(src, {&s}, 1, [&](const SourceTensor& t, uint64_t first, auto bytes) {
    const auto v = exec::to_floats(t, bytes);
    for (size_t i = 0; i < v.size(); ++i) {
      const uint64_t r = (first + i) / cols, c = (first + i) % cols;
      if (static_cast<int64_t>(r) >= used_rows || static_cast<int64_t>(c) >= used_cols) continue;
      if (!exec::is_usable_scale(v[i]))
        exec::refuse_scale(t, static_cast<int64_t>(r), static_cast<int64_t>(c), v[i]);
      if (v[i] > large) {
        std::lock_guard lock(m);
        out.push_back({static_cast<int64_t>(r), static_cast<int64_t>(c), v[i]});
      }
    }
  });
  return out;
}

void scan_fp8_nan_codes(const TensorSource& src, unsigned threads) {
  std::vector<const SourceTensor*> list;
  for (const auto& t : src.tensors())
    if (t.dtype == Dtype::F8_E4M3) list.push_back(&t);
  scan_parallel(src, list, threads, [](const SourceTensor& t, uint64_t first, auto bytes) {
    uint8_t any = 0;
    for (uint8_t b : bytes) any |= static_cast<uint8_t>((b & 0x7F) == 0x7F);
    if (!any) return;
    for (size_t i = 0; i < bytes.size(); ++i)
      if ((bytes[i] & 0x7F) == 0x7F) exec::refuse_nan(t, elements_at(t, first + i), bytes[i]);
  });
}

void scan_native_non_finite(const TensorSource& src, const ModelSpec& spec, unsigned threads) {
  if (!spec.publishes_fp8()) return;  // a BF16 release is exported as it is: nothing quantized
  std::vector<const SourceTensor*> list;
  for (const auto& t : src.tensors()) {
    if (t.dtype != Dtype::BF16 && t.dtype != Dtype::F16 && t.dtype != Dtype::F32) continue;
    if (spec.classify(t.name).kind == TensorKind::kGroupedExperts || spec.is_published_fp8(t.name))
      list.push_back(&t);
  }
  scan_parallel(src, list, threads, [](const SourceTensor& t, uint64_t first, auto bytes) {
    const size_t es = dtype_size(t.dtype);
    for (size_t i = 0; i < bytes.size() / es; ++i) {
      const uint8_t* p = &bytes[i * es];
      bool bad;
      if (es == 2) {
        const uint16_t v = static_cast<uint16_t>(p[0] | p[1] << 8);
        bad = t.dtype == Dtype::BF16 ? (v & 0x7F80) == 0x7F80 : (v & 0x7C00) == 0x7C00;
      } else {
        uint32_t v;
        std::memcpy(&v, p, 4);
        bad = (v & 0x7F800000u) == 0x7F800000u;
      }
      if (bad)
        exec::refuse_non_finite(t, "", elements_at(t, first + i),
                                exec::element_to_float(t.dtype, p));
    }
  });
}

}  // namespace moeckpt
