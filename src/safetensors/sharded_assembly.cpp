#include "safetensors/sharded_assembly.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <regex>
#include <set>

#include "core/strict_json.hpp"
#include "io/file.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/numerics.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

const char* sharded_writer_name(ShardedWriter w) noexcept {
  return w == ShardedWriter::kTorch ? "torch" : "automodel";
}

namespace {

const std::regex& shard_name_pattern() {
  static const std::regex re(R"(shard-(\d{5,})-model-(\d{5,})-of-(\d{5,})\.safetensors)");
  return re;
}

constexpr const char* kShardingInfoKey = "DCP_SHARDING_INFO";
constexpr const char* kDcpVersionKey = "DCP_VERSION";
constexpr const char* kFileIndexMapping = "fqn_to_file_index_mapping.json";
constexpr const char* kDtypeMapping = "fqn_to_dtype_mapping.json";
constexpr uint64_t kMaxMappingBytes = 256ull << 20;
// The most bytes of a piece held at once when its bytes in a range are not contiguous in the
// whole tensor (a column shard).
constexpr uint64_t kScatterChunkBytes = 8ull << 20;
// The most elements converted at once when a tensor reads as another dtype.
constexpr uint64_t kConvertChunkElems = 1ull << 20;

// The most output files (and ranks) a file name may give: the writers' 5 digits.
constexpr int64_t kMaxFileCount = 99999;

int64_t parse_count(const std::string& digits, const std::string& file) {
  const int64_t v = digits.size() > 6 ? kMaxFileCount + 1 : std::stoll(digits);
  if (v > kMaxFileCount)
    fail(ErrorKind::kMalformedFile, file, "", "number " + digits + " in the file name is too large",
         "at most 99999");
  return v;
}

std::string region_text(const std::vector<uint64_t>& lo, const std::vector<uint64_t>& hi) {
  std::string s = "[";
  for (size_t d = 0; d < lo.size(); ++d)
    s += (d ? ", " : "") + std::to_string(lo[d]) + ":" + std::to_string(hi[d]);
  return s + "]";
}

// torch's is_floating_point (float8_e8m0fnu included).
bool is_float(Dtype d) {
  return d == Dtype::F16 || d == Dtype::BF16 || d == Dtype::F32 || d == Dtype::F64 ||
         d == Dtype::F8_E4M3 || d == Dtype::F8_E5M2 || d == Dtype::F8_E8M0;
}
bool is_regular_float(Dtype d) {
  return d == Dtype::F16 || d == Dtype::BF16 || d == Dtype::F32 || d == Dtype::F64;
}

// Automodel's _resolve_output_dtype: the dtype a consolidated tensor gets.
Dtype resolved_dtype(Dtype stored, std::optional<Dtype> mapped, std::optional<Dtype> cast) {
  if (cast) {
    if (mapped == Dtype::F32 && is_regular_float(stored)) return Dtype::F32;
    return is_regular_float(stored) ? *cast : stored;
  }
  if (!mapped || *mapped == stored) return stored;
  if (is_regular_float(*mapped) && is_float(stored)) return *mapped;
  return stored;  // e.g. an FP8-mapped tensor saved in a float dtype: kept as saved
}

// The conversions a read can make (torch's .to() on CPU, exactly).
bool convertible(Dtype from, Dtype to) {
  if (from == to) return true;
  const bool from_ok =
      from == Dtype::F32 || from == Dtype::BF16 || from == Dtype::F16 || from == Dtype::F8_E4M3;
  const bool to_ok = to == Dtype::F32 || to == Dtype::BF16 || to == Dtype::F16;
  return from_ok && to_ok;
}

void convert(Dtype from, const uint8_t* in, uint64_t n, Dtype to, uint8_t* out) {
  for (uint64_t i = 0; i < n; ++i) {
    float f = 0;
    switch (from) {
      case Dtype::F32:
        std::memcpy(&f, in + 4 * i, 4);
        break;
      case Dtype::BF16:
      case Dtype::F16: {
        uint16_t b;
        std::memcpy(&b, in + 2 * i, 2);
        f = from == Dtype::BF16 ? numerics::bf16_to_f32(b) : numerics::f16_to_f32(b);
        break;
      }
      default:
        f = numerics::fp8_e4m3fn_to_f32(in[i]);
        break;
    }
    if (to == Dtype::F32) {
      std::memcpy(out + 4 * i, &f, 4);
    } else {
      uint16_t b = to == Dtype::BF16 ? numerics::f32_to_bf16_rne(f) : numerics::f32_to_f16_rne(f);
      // torch's vectorized float->bfloat16 kernels (a whole tensor's .to()) make every NaN 0xFFFF.
      if (to == Dtype::BF16 && std::isnan(f)) b = 0xFFFF;
      std::memcpy(out + 2 * i, &b, 2);
    }
  }
}

std::map<std::string, nlohmann::json> read_mapping(const fs::path& path) {
  const auto doc =
      parse_strict_json(io::read_small_file(path, kMaxMappingBytes), path.string(), "mapping");
  if (!doc.is_object())
    fail(ErrorKind::kMalformedFile, path.string(), "", "is not a JSON object",
         "{tensor name: value}");
  std::map<std::string, nlohmann::json> out;
  for (auto it = doc.begin(); it != doc.end(); ++it) out.emplace(it.key(), *it);
  return out;
}

// Where a piece's elements land in the whole tensor.
struct PieceGeometry {
  std::vector<uint64_t> local, offsets, global_strides;
  uint64_t numel = 0;
  bool contiguous = false;  // its elements are consecutive in the whole tensor
  uint64_t global_of(uint64_t p) const {
    uint64_t g = 0;
    for (size_t d = local.size(); d-- > 0;) {
      const uint64_t i = p % local[d];
      p /= local[d];
      g += (i + offsets[d]) * global_strides[d];
    }
    return g;
  }
  // The first piece element at or after whole-tensor element `e`.
  uint64_t lower_bound(uint64_t e) const {
    uint64_t lo = 0, hi = numel;
    while (lo < hi) {
      const uint64_t mid = lo + (hi - lo) / 2;
      if (global_of(mid) < e)
        lo = mid + 1;
      else
        hi = mid;
    }
    return lo;
  }
};

PieceGeometry geometry(const ShardedTensor& t, const SavedPiece& p) {
  PieceGeometry g;
  g.local = p.info->shape;
  g.offsets = p.offsets;
  g.global_strides.assign(t.shape.size(), 1);
  for (size_t d = t.shape.size(); d-- > 1;)
    g.global_strides[d - 1] = g.global_strides[d] * t.shape[d];
  g.numel = 1;
  for (auto s : g.local) g.numel *= s;
  size_t first = 0;
  while (first < g.local.size() && g.local[first] == 1) ++first;
  g.contiguous = true;
  for (size_t d = first + 1; d < g.local.size(); ++d)
    if (g.local[d] != t.shape[d]) g.contiguous = false;
  return g;
}

// Elements [e0, e1) of the whole tensor in its stored dtype into `dst`.
void assemble(const ShardedTensor& t, const std::vector<SafetensorsFile>& files, uint64_t e0,
              uint64_t e1, uint8_t* dst) {
  const uint64_t es = dtype_size(t.stored);
  std::vector<uint8_t> scratch;
  for (const auto& piece : t.pieces) {
    const auto g = geometry(t, piece);
    if (g.global_of(0) >= e1 || g.global_of(g.numel - 1) < e0) continue;
    const uint64_t p0 = g.lower_bound(e0), p1 = g.lower_bound(e1);
    if (p0 >= p1) continue;
    const auto& file = files[piece.file];
    if (g.contiguous) {
      file.read(*piece.info, p0 * es,
                std::span<uint8_t>(dst + (g.global_of(p0) - e0) * es, (p1 - p0) * es));
      continue;
    }
    const uint64_t row = g.local.back();
    const uint64_t chunk = std::max<uint64_t>(row, kScatterChunkBytes / es / row * row);
    for (uint64_t c = p0; c < p1; c += chunk) {
      const uint64_t c1 = std::min(p1, c + chunk);
      scratch.resize((c1 - c) * es);
      file.read(*piece.info, c * es, scratch);
      for (uint64_t q = c; q < c1;) {
        const uint64_t run = std::min(row - q % row, c1 - q);
        std::memcpy(dst + (g.global_of(q) - e0) * es, scratch.data() + (q - c) * es, run * es);
        q += run;
      }
    }
  }
}

// A mapped tensor no rank saves that belongs there: Automodel maps the base checkpoint's index,
// so a model fine-tuned from an FP8 (or MXFP4) release saves its weights dequantized and none of
// the scale (or block) companions the mapping still lists; and a tied output embedding may be
// saved once. Anything else is a missing piece of the save.
bool expected_unsaved(const std::string& name, const std::map<std::string, ShardedTensor>& saved,
                      const fs::path& meta_dir) {
  for (std::string_view suffix : {"_scale_inv", "_blocks", "_scales"})
    if (name.ends_with(suffix) && saved.count(name.substr(0, name.size() - suffix.size())))
      return true;
  if (name == "lm_head.weight") {
    std::error_code ec;
    const auto config = meta_dir / "config.json";
    if (!fs::exists(config, ec)) return false;
    const auto doc =
        parse_strict_json(io::read_small_file(config, kMaxMappingBytes), config.string(), "config");
    const auto tie = doc.is_object() ? doc.find("tie_word_embeddings") : doc.end();
    return tie != doc.end() && tie->is_boolean() && tie->get<bool>();
  }
  return false;
}

}  // namespace

bool is_sharded_save(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || fs::exists(dir / kIndexFileName, ec) ||
      fs::exists(dir / kSingleFileName, ec))
    return false;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (std::regex_match(e.path().filename().string(), shard_name_pattern())) return true;
  return false;
}

fs::path checkpoint_config_path(const fs::path& dir) {
  std::error_code ec;
  const fs::path own = dir / "config.json", saved = dir / kShardedMetadataDir / "config.json";
  return !fs::exists(own, ec) && is_sharded_save(dir) && fs::exists(saved, ec) ? saved : own;
}

std::shared_ptr<ShardedData> open_sharded_save(const fs::path& dir,
                                               std::vector<SafetensorsFile>& files,
                                               std::optional<Dtype> cast) {
  auto data = std::make_shared<ShardedData>();
  auto& save = data->save;
  std::vector<fs::path> paths;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.ends_with(".safetensors")) paths.push_back(e.path());
  }
  std::sort(paths.begin(), paths.end());
  const std::string folder = dir.string();
  for (const auto& p : paths) {
    const std::string name = p.filename().string();
    std::smatch m;
    if (!std::regex_match(name, m, shard_name_pattern()))
      fail(ErrorKind::kMalformedFile, p.string(), "",
           "is in a sharded save's folder but is not one of its files",
           "only shard-RRRRR-model-IIIII-of-NNNNN.safetensors (files of one save)");
    ShardedSave::File f{name, parse_count(m[1], name) - 1, parse_count(m[2], name)};
    const int64_t n = parse_count(m[3], name);
    if (f.rank < 0 || f.index < 1 || f.index > n)
      fail(ErrorKind::kMalformedFile, p.string(), "",
           "rank or file index out of range in the file name",
           "shard-RRRRR-model-IIIII-of-NNNNN with RRRRR >= 1 and 1 <= IIIII <= NNNNN");
    if (save.files.empty()) {
      save.output_files = n;
    } else if (n != save.output_files) {
      fail(ErrorKind::kMalformedFile, p.string(), "",
           "names " + std::to_string(n) + " output files but " + save.files.front().name +
               " names " + std::to_string(save.output_files) +
               ": files of two saves are mixed in this folder",
           "the files of one save only");
    }
    save.files.push_back(f);
  }
  if (save.files.empty())
    fail(ErrorKind::kInvalidArgument, folder, "", "no sharded save here",
         "shard-RRRRR-model-IIIII-of-NNNNN.safetensors files");

  // Which writer: safetensors' serializer (torch) puts __metadata__ first, Automodel's streaming
  // writer last. One save has one writer.
  for (size_t i = 0; i < paths.size(); ++i) {
    files.push_back(SafetensorsFile::open(paths[i]));
    const auto& md = files.back().header().metadata();
    for (const char* key : {kShardingInfoKey, kDcpVersionKey})
      if (!md.count(key))
        fail(ErrorKind::kMalformedFile, files.back().path(), "",
             std::string("has no __metadata__ ") + key,
             "a file of a DCP sharded save (DCP_SHARDING_INFO and DCP_VERSION)");
    const auto file = io::File::open_read(paths[i]);
    std::vector<uint8_t> start(std::min<uint64_t>(16, files.back().header().json_length()));
    file.pread_exact(8, start);
    const bool metadata_first =
        std::string_view(reinterpret_cast<const char*>(start.data()), start.size())
            .starts_with("{\"__metadata__\"");
    const auto w = metadata_first ? ShardedWriter::kTorch : ShardedWriter::kAutomodel;
    if (i == 0) {
      save.writer = w;
    } else if (w != save.writer) {
      fail(ErrorKind::kMalformedFile, paths[i].string(), "",
           std::string("was written by ") + sharded_writer_name(w) + "'s writer but " +
               save.files.front().name + " by " + sharded_writer_name(save.writer) +
               "'s: files of two saves are mixed in this folder",
           "the files of one save only");
    }
  }

  const fs::path meta_dir = dir / kShardedMetadataDir;
  std::optional<std::map<std::string, nlohmann::json>> index_mapping, dtype_mapping;
  if (fs::exists(meta_dir / kFileIndexMapping, ec))
    index_mapping = read_mapping(meta_dir / kFileIndexMapping);
  if (fs::exists(meta_dir / kDtypeMapping, ec))
    dtype_mapping = read_mapping(meta_dir / kDtypeMapping);
  if (fs::exists(meta_dir / "config.json", ec)) save.config = meta_dir / "config.json";
  if (fs::is_directory(meta_dir, ec))
    for (const auto& e : fs::directory_iterator(meta_dir, ec)) {
      const std::string name = e.path().filename().string();
      if (name != "config.json" && name != kFileIndexMapping && name != kDtypeMapping &&
          !name.starts_with(".") && e.is_regular_file(ec) && !e.is_symlink(ec))
        save.other_files.push_back(e.path());
    }
  std::sort(save.other_files.begin(), save.other_files.end());
  if (save.writer == ShardedWriter::kAutomodel && !index_mapping)
    fail(ErrorKind::kMalformedFile, (meta_dir / kFileIndexMapping).string(), "",
         "is missing: an Automodel sharded save names every output file 00001-of-00001 and keeps "
         "the real layout there",
         "the save's .hf_metadata folder, as its Checkpointer writes it");

  // Pieces by tensor name, from each file's DCP_SHARDING_INFO.
  std::map<std::string, ShardedTensor> tensors;
  std::map<std::string, std::string> first_file;  // for messages
  std::map<std::string, size_t> first_file_index;
  for (size_t i = 0; i < files.size(); ++i) {
    const auto& sf = files[i];
    const auto& md = sf.header().metadata();
    const auto info = md.find(kShardingInfoKey);
    const auto version = md.find(kDcpVersionKey);
    if (i == 0) {
      save.dcp_version = version->second;
    } else if (version->second != save.dcp_version) {
      fail(ErrorKind::kMalformedFile, sf.path(), "",
           "DCP_VERSION \"" + version->second + "\" differs from " + save.files.front().name +
               "'s \"" + save.dcp_version + "\": files of two saves are mixed in this folder",
           "the files of one save only");
    }
    const auto doc = parse_strict_json(info->second, sf.path(), kShardingInfoKey);
    if (!doc.is_object())
      fail(ErrorKind::kMalformedFile, sf.path(), "", "DCP_SHARDING_INFO is not a JSON object");
    for (const auto& t : sf.header().tensors())
      if (!doc.contains(t.name))
        fail(ErrorKind::kMalformedFile, sf.path(), t.name,
             "tensor has no entry in DCP_SHARDING_INFO", "its saved_offsets");
    for (auto it = doc.begin(); it != doc.end(); ++it) {
      const TensorInfo* piece = sf.header().find(it.key());
      if (!piece)
        fail(ErrorKind::kMalformedFile, sf.path(), it.key(),
             "DCP_SHARDING_INFO names a tensor the file does not hold");
      const auto off = it->is_object() ? it->find("saved_offsets") : it->end();
      if (off == it->end() || !off->is_array() || off->size() != piece->shape.size())
        fail(ErrorKind::kMalformedFile, sf.path(), it.key(),
             "DCP_SHARDING_INFO entry has no saved_offsets of " +
                 std::to_string(piece->shape.size()) + " dimensions",
             "{\"saved_offsets\": [one offset per dimension]}");
      SavedPiece sp{i, piece, {}};
      for (size_t d = 0; d < off->size(); ++d) {
        const auto& v = (*off)[d];
        uint64_t end = 0;
        if (!v.is_number_unsigned() ||
            __builtin_add_overflow(v.get<uint64_t>(), piece->shape[d], &end) || end > kMaxDimension)
          fail(ErrorKind::kMalformedFile, sf.path(), it.key(),
               "saved_offsets entry " + v.dump() + " is not a valid offset",
               "non-negative integers, offset + size at most 2^48");
        sp.offsets.push_back(v.get<uint64_t>());
      }
      auto [pos, fresh] = tensors.try_emplace(it.key());
      auto& t = pos->second;
      if (fresh) {
        t.name = it.key();
        t.stored = piece->dtype;
        t.shape.assign(piece->shape.size(), 0);
        first_file[it.key()] = save.files[i].name;
        first_file_index[it.key()] = i;
      } else if (piece->dtype != t.stored) {
        fail(ErrorKind::kMalformedFile, sf.path(), it.key(),
             "piece is " + std::string(dtype_name(piece->dtype)) + " but its piece in " +
                 first_file[it.key()] + " is " + std::string(dtype_name(t.stored)),
             "every piece of a tensor in one dtype");
      } else if (piece->shape.size() != t.shape.size()) {
        fail(ErrorKind::kMalformedFile, sf.path(), it.key(),
             "piece has " + std::to_string(piece->shape.size()) + " dimensions but its piece in " +
                 first_file[it.key()] + " has " + std::to_string(t.shape.size()),
             "every piece of a tensor with the same number of dimensions");
      }
      if (dtype_size(piece->dtype) == 0)
        fail(ErrorKind::kUnsupportedLayout, sf.path(), it.key(),
             "piece of sub-byte dtype " + std::string(dtype_name(piece->dtype)),
             "whole-byte element types");
      for (size_t d = 0; d < t.shape.size(); ++d)
        t.shape[d] = std::max(t.shape[d], sp.offsets[d] + piece->shape[d]);
      if (piece->nbytes() == 0) {
        ++t.empty_pieces;
      } else {
        if (!t.pieces.empty() && save.files[t.pieces.front().file].index != save.files[i].index &&
            !index_mapping)
          fail(ErrorKind::kMalformedFile, sf.path(), it.key(),
               "piece is in output file " + std::to_string(save.files[i].index) +
                   " but its piece in " + save.files[t.pieces.front().file].name + " in " +
                   std::to_string(save.files[t.pieces.front().file].index),
               "every piece of a tensor in the same output file");
        t.pieces.push_back(std::move(sp));
      }
    }
  }

  // Placement: the mapping (Automodel, or a torch save that has one), else the file names.
  if (index_mapping) {
    const std::string where = (meta_dir / kFileIndexMapping).string();
    int64_t highest = 0;
    for (const auto& [name, v] : *index_mapping) {
      if (!v.is_number_unsigned() || v.get<uint64_t>() < 1 || v.get<uint64_t>() > 99999)
        fail(ErrorKind::kMalformedFile, where, name, "file index " + v.dump() + " is not valid",
             "an integer from 1");
      highest = std::max<int64_t>(highest, v.get<int64_t>());
      if (!tensors.count(name) && !expected_unsaved(name, tensors, meta_dir))
        fail(ErrorKind::kMalformedFile, where, name,
             "the mapping places this tensor but no file of the save holds a piece of it (a "
             "rank's file missing?)",
             "every mapped tensor saved by some rank");
    }
    for (auto& [name, t] : tensors) {
      const auto it = index_mapping->find(name);
      if (it == index_mapping->end())
        fail(ErrorKind::kMalformedFile, (dir / first_file[name]).string(), name,
             "tensor has pieces but no place in " + where, "every saved tensor in the mapping");
      t.output_file = it->second.get<int64_t>();
    }
    // Automodel names every file 00001-of-00001: the mapping says how many there are.
    save.output_files = save.writer == ShardedWriter::kAutomodel
                            ? highest
                            : std::max<int64_t>(save.output_files, highest);
  } else {
    for (auto& [name, t] : tensors) t.output_file = save.files[first_file_index[name]].index;
  }

  for (auto& [name, t] : tensors) {
    const std::string file = (dir / first_file[name]).string();
    // Overlaps: pieces by their first dimension's start; a pair whose boxes meet in every
    // dimension shares elements.
    std::sort(t.pieces.begin(), t.pieces.end(),
              [](const SavedPiece& a, const SavedPiece& b) { return a.offsets < b.offsets; });
    const size_t nd = t.shape.size();
    std::vector<uint64_t> lo(nd), hi(nd);
    for (size_t a = 0; a < t.pieces.size(); ++a)
      for (size_t b = a + 1; b < t.pieces.size(); ++b) {
        const auto &pa = t.pieces[a], &pb = t.pieces[b];
        if (nd && pb.offsets[0] >= pa.offsets[0] + pa.info->shape[0]) break;
        bool meet = true;
        for (size_t d = 0; d < nd; ++d) {
          lo[d] = std::max(pa.offsets[d], pb.offsets[d]);
          hi[d] = std::min(pa.offsets[d] + pa.info->shape[d], pb.offsets[d] + pb.info->shape[d]);
          meet = meet && lo[d] < hi[d];
        }
        if (meet)
          fail(ErrorKind::kMalformedFile, files[pb.file].path(), name,
               "piece overlaps its piece in " + save.files[pa.file].name + " at elements " +
                   region_text(lo, hi) +
                   " (files of an earlier save with more ranks left in this folder?)",
               "pieces that tile the tensor without overlap");
      }
    // Coverage: pieces inside the whole tensor, not overlapping, with as many elements.
    uint64_t numel = 1, covered = 0;
    for (auto s : t.shape)
      if (__builtin_mul_overflow(numel, s, &numel))
        fail(ErrorKind::kMalformedFile, file, name, "tensor size overflows");
    for (const auto& p : t.pieces) covered += p.info->numel();
    if (t.pieces.empty() && numel != 0)
      fail(ErrorKind::kMalformedFile, file, name,
           "every piece of this tensor is empty but its offsets make it " + format_shape(t.shape),
           "pieces covering the tensor");
    if (covered != numel) {
      // The first grid cell no piece holds: the grid of every piece boundary.
      std::vector<std::vector<uint64_t>> cuts(nd);
      for (size_t d = 0; d < nd; ++d) {
        cuts[d] = {0, t.shape[d]};
        for (const auto& p : t.pieces) {
          cuts[d].push_back(p.offsets[d]);
          cuts[d].push_back(p.offsets[d] + p.info->shape[d]);
        }
        std::sort(cuts[d].begin(), cuts[d].end());
        cuts[d].erase(std::unique(cuts[d].begin(), cuts[d].end()), cuts[d].end());
      }
      std::vector<size_t> cell(nd, 0);
      std::string region;
      // A bounded search (cells x pieces): past it, the message gives the counts alone.
      const uint64_t budget = 100'000'000 / std::max<uint64_t>(1, t.pieces.size());
      for (uint64_t tries = 0; tries < budget && region.empty(); ++tries) {
        bool inside = true, held = false;
        for (size_t d = 0; d < nd; ++d) inside = inside && cell[d] + 1 < cuts[d].size();
        if (inside) {
          for (const auto& p : t.pieces) {
            bool in = true;
            for (size_t d = 0; d < nd && in; ++d)
              in = cuts[d][cell[d]] >= p.offsets[d] &&
                   cuts[d][cell[d]] < p.offsets[d] + p.info->shape[d];
            if (in) {
              held = true;
              break;
            }
          }
          if (!held) {
            for (size_t d = 0; d < nd; ++d) {
              lo[d] = cuts[d][cell[d]];
              hi[d] = cuts[d][cell[d] + 1];
            }
            region = region_text(lo, hi);
          }
        }
        size_t d = nd;  // next cell, last dimension fastest
        while (d > 0) {
          --d;
          if (++cell[d] + 1 < cuts[d].size()) break;
          cell[d] = 0;
          if (d == 0) tries = budget;
        }
        if (nd == 0) break;
      }
      fail(ErrorKind::kMalformedFile, file, name,
           "pieces cover " + std::to_string(covered) + " of its " + std::to_string(numel) +
               " elements" + (region.empty() ? "" : "; elements " + region + " are in no piece") +
               " (a rank's file missing?)",
           "pieces covering the whole tensor " + format_shape(t.shape));
    }
    // The dtype it reads as.
    std::optional<Dtype> mapped;
    if (dtype_mapping)
      if (auto it = dtype_mapping->find(name); it != dtype_mapping->end()) {
        const auto d =
            it->second.is_string() ? parse_dtype(it->second.get<std::string>()) : std::nullopt;
        if (!d)
          fail(ErrorKind::kMalformedFile, (meta_dir / kDtypeMapping).string(), name,
               "dtype " + it->second.dump() + " is not a safetensors dtype");
        mapped = *d;
      }
    t.dtype = resolved_dtype(t.stored, mapped, cast);
    if (!convertible(t.stored, t.dtype))
      fail(ErrorKind::kUnsupportedLayout, file, name,
           "would be converted from " + std::string(dtype_name(t.stored)) + " to " +
               std::string(dtype_name(t.dtype)) + ", which moeckpt does not do",
           "conversions among F32, BF16 and F16 (and from F8_E4M3)");
  }
  for (auto& [name, t] : tensors) {
    data->tensors.push_back(std::move(t));
    const auto& s = data->tensors.back();
    TensorInfo info;
    info.name = s.name;
    info.dtype = s.dtype;
    info.shape = s.shape;
    uint64_t n = dtype_size(s.dtype);
    for (auto d : s.shape) n *= d;
    info.begin = 0;
    info.end = n;
    data->infos.push_back(std::move(info));
  }
  return data;
}

void read_assembled(const ShardedTensor& t, const std::vector<SafetensorsFile>& files,
                    uint64_t offset, std::span<uint8_t> out) {
  const uint64_t es = dtype_size(t.dtype), es_stored = dtype_size(t.stored);
  uint64_t nbytes = es;
  for (auto d : t.shape) nbytes *= d;
  if (offset > nbytes || out.size() > nbytes - offset)
    fail(ErrorKind::kInvalidArgument, files[t.pieces.empty() ? 0 : t.pieces.front().file].path(),
         t.name,
         "read of " + std::to_string(out.size()) + " bytes at " + std::to_string(offset) +
             " is outside the tensor's " + std::to_string(nbytes) + " bytes");
  if (out.empty()) return;
  const uint64_t e0 = offset / es, e1 = (offset + out.size() + es - 1) / es;
  const bool aligned = offset % es == 0 && out.size() % es == 0;
  if (t.dtype == t.stored && aligned) {
    assemble(t, files, e0, e1, out.data());
    return;
  }
  std::vector<uint8_t> stored, converted;
  for (uint64_t e = e0; e < e1; e += kConvertChunkElems) {
    const uint64_t m = std::min(kConvertChunkElems, e1 - e);
    stored.resize(m * es_stored);
    assemble(t, files, e, e + m, stored.data());
    const uint8_t* bytes = stored.data();
    if (t.dtype != t.stored) {
      converted.resize(m * es);
      convert(t.stored, stored.data(), m, t.dtype, converted.data());
      bytes = converted.data();
    }
    // The part of [e, e + m) elements inside the wanted byte range.
    const uint64_t lo = std::max(offset, e * es), hi = std::min(offset + out.size(), (e + m) * es);
    std::memcpy(out.data() + (lo - offset), bytes + (lo - e * es), hi - lo);
  }
}

void prefetch_assembled(const ShardedTensor& t, const std::vector<SafetensorsFile>& files,
                        uint64_t offset, uint64_t bytes) noexcept {
  const uint64_t es = dtype_size(t.dtype), es_stored = dtype_size(t.stored);
  if (!bytes || !es) return;
  const uint64_t e0 = offset / es, e1 = (offset + bytes + es - 1) / es;
  for (const auto& piece : t.pieces) {
    const auto g = geometry(t, piece);
    if (g.global_of(0) >= e1 || g.global_of(g.numel - 1) < e0) continue;
    const uint64_t p0 = g.lower_bound(e0), p1 = g.lower_bound(e1);
    if (p0 < p1) files[piece.file].prefetch(*piece.info, p0 * es_stored, (p1 - p0) * es_stored);
  }
}

}  // namespace moeckpt
