// moeckpt._core: the C++ engine for Python. Tensors come in as (name, dtype, shape, address,
// nbytes) rows over memory the Python caller keeps alive (no copy), go out as 1-D uint8 torch
// tensors that own the engine's buffers (DLPack, no copy). The GIL is released while the engine
// plans and runs; long calls run it on a helper thread while the calling thread checks for signals
// (run_interruptible: Ctrl-C stops the engine, then raises). The typed, documented API is the
// pure-Python layer in python/moeckpt/.
#include <fmt/format.h>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include "exec/worker_threads.hpp"
#include "io/checksum.hpp"
#include "io/file.hpp"
#include "io/hub_cache.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/distributed.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/kernels.hpp"
#include "moeckpt/model_config.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/safetensors_writer.hpp"
#include "moeckpt/synth.hpp"
#include "moeckpt/tensor_source.hpp"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; glibc 2.36 headers do not name it
#endif

namespace nb = nanobind;
namespace fs = std::filesystem;
using namespace moeckpt;

namespace {

// One input tensor: name, safetensors dtype name, shape, address of its bytes, byte count.
using InRow = std::tuple<std::string, std::string, std::vector<uint64_t>, uintptr_t, uint64_t>;

Dtype dtype_of(const std::string& name) {
  auto d = parse_dtype(name);
  if (!d)
    fail(ErrorKind::kInvalidArgument, "", "", "unknown dtype \"" + name + "\"",
         "a safetensors dtype name such as BF16");
  return *d;
}

// `windows`: rows whose bytes are only part of the tensor their shape describes (MemorySource).
std::vector<MemorySource::Entry> entries_of(const std::vector<InRow>& rows,
                                            const std::map<std::string, uint64_t>& windows = {}) {
  std::vector<MemorySource::Entry> out;
  out.reserve(rows.size());
  for (const auto& [name, dtype, shape, addr, nbytes] : rows) {
    const Dtype dt = dtype_of(dtype);
    // The same size rule as a file's header: a tensor's bytes must be exactly its shape's.
    const uint64_t want = TensorSpec{name, dt, shape}.nbytes();
    if (want != nbytes && !windows.count(name))
      fail(
          ErrorKind::kInvalidArgument, "", name,
          "holds " + std::to_string(nbytes) + " bytes but its shape needs " + std::to_string(want));
    out.push_back({name, dt, shape,
                   std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(addr), nbytes)});
  }
  return out;
}

QuantMode quant_of(const std::string& q) {
  if (q == "block") return QuantMode::kBlock;
  if (q == "cast") return QuantMode::kCast;
  if (q == "none") return QuantMode::kNone;
  fail(ErrorKind::kInvalidArgument, "", "", "unknown quantization mode \"" + q + "\"",
       "block, cast or none");
}

Dtype out_dtype_of(const std::string& d) {
  if (d == "BF16") return Dtype::BF16;
  if (d == "F32") return Dtype::F32;
  fail(ErrorKind::kInvalidArgument, "", "", "from_hf output dtype " + d + " is not supported",
       "bfloat16 or float32");
}

// A parsed config.json (parsed once per adapter).
struct Config {
  ModelConfig config;
  std::string text;  // the document as given, written into output folders
  std::shared_ptr<const ModelSpec> spec;
};

// The grouped tensor an HF key's expert weight goes to: (grouped name, expert id, key prefix), or
// None when the family's spec does not group it.
std::optional<std::tuple<std::string, int64_t, std::string>> grouped_target(const ModelSpec& spec,
                                                                            const std::string& k) {
  const auto key = spec.classify(k);
  if (key.is_scale || !spec.is_grouped_expert(key)) return std::nullopt;
  for (const auto& g : spec.expert_groupings())
    for (Projection p : g.parts)
      if (p == key.projection)
        return std::make_tuple(spec.grouped_experts_name(key.prefix, *key.layer, g.grouped),
                               *key.expert, key.prefix);
  return std::nullopt;
}

// An output tensor's memory, written by the engine and then owned by a torch tensor. Large buffers
// are anonymous mappings: the kernel's zeroed pages are the only initialization (a std::vector
// would memset them once more). No MADV_HUGEPAGE: with THP defrag "madvise" the faults compact
// memory synchronously (measured: 10-12 s of system time for a 4.4 GiB result, against ~2 s).
class Buffer {
 public:
  explicit Buffer(uint64_t n) : n_(n) {
    if (n >= kMapBytes) {
      void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      data_ = static_cast<uint8_t*>(p);
      mapped_ = true;
    } else {
      data_ = static_cast<uint8_t*>(std::calloc(n ? n : 1, 1));  // zeroed, as mapped pages are
      if (!data_) throw std::bad_alloc();
    }
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (mapped_)
      munmap(data_, n_);
    else
      std::free(data_);
  }
  uint8_t* data() const noexcept { return data_; }
  uint64_t size() const noexcept { return n_; }

 private:
  static constexpr uint64_t kMapBytes = 1ull << 20;
  uint8_t* data_ = nullptr;
  uint64_t n_ = 0;
  bool mapped_ = false;
};

// Faults every page in up front, 64 MiB pieces over the threads: one kernel call per piece
// instead of one trap per 4 KiB page (MADV_POPULATE_WRITE, Linux 5.14; older kernels refuse the
// advice and the pages fault in as they are written).
void populate(const std::vector<std::unique_ptr<Buffer>>& buffers, unsigned threads) {
  std::vector<std::pair<uint8_t*, uint64_t>> pieces;
  constexpr uint64_t kPiece = 64ull << 20;
  for (const auto& b : buffers)
    if (b->size() >= (1ull << 20))
      for (uint64_t o = 0; o < b->size(); o += kPiece)
        pieces.push_back({b->data() + o, std::min(kPiece, b->size() - o)});
  exec::parallel_for(pieces.size(), threads, [&](size_t i) {
    madvise(pieces[i].first, pieces[i].second, MADV_POPULATE_WRITE);
  });
}

class BufferSink final : public TensorSink {
 public:
  explicit BufferSink(const std::vector<TensorSpec>& outputs, unsigned threads) {
    for (const auto& o : outputs) buffers_.push_back(std::make_unique<Buffer>(o.nbytes()));
    populate(buffers_, threads);
  }
  void write(size_t out, uint64_t offset, std::span<const uint8_t> bytes) override {
    Buffer& b = *buffers_.at(out);
    if (offset > b.size() || bytes.size() > b.size() - offset)
      fail(ErrorKind::kInvalidArgument, "", "", "internal: write past the end of an output tensor");
    std::memcpy(b.data() + offset, bytes.data(), bytes.size());
  }
  std::vector<std::unique_ptr<Buffer>>& buffers() { return buffers_; }

 private:
  std::vector<std::unique_ptr<Buffer>> buffers_;
};

// A plan's outputs, converted: specs and their buffers (plan order).
struct Converted {
  std::vector<TensorSpec> specs;
  std::vector<std::unique_ptr<Buffer>> buffers;
};

Converted run_into_buffers(const Plan& plan, const TensorSource& source, const ExecOptions& exec) {
  BufferSink sink(plan.outputs, exec.threads);
  execute(plan, source, sink, exec);
  return {plan.outputs, std::move(sink.buffers())};
}

// Hands a buffer to torch without a copy (DLPack): the capsule owns it.
nb::object as_torch(std::unique_ptr<Buffer> buffer) {
  Buffer* owned = buffer.release();
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<Buffer*>(p); });
  return nb::cast(
      nb::ndarray<nb::pytorch, uint8_t, nb::ndim<1>>(owned->data(), {owned->size()}, owner));
}

// [(name, dtype name, shape, uint8 tensor)] in plan order.
nb::list to_python(Converted&& c) {
  nb::list out;
  for (size_t i = 0; i < c.specs.size(); ++i)
    out.append(nb::make_tuple(c.specs[i].name, std::string(dtype_name(c.specs[i].dtype)),
                              c.specs[i].shape, as_torch(std::move(c.buffers[i]))));
  return out;
}

// `cancel`: a stop request (run_interruptible's).
ExecOptions exec_of(unsigned threads, uint64_t max_memory,
                    const std::atomic<bool>* cancel = nullptr) {
  ExecOptions e;
  e.threads = threads;
  e.max_memory = max_memory;
  e.cancel = cancel;
  return e;
}

struct CancelFlag {
  std::atomic<bool> flag{false};
};

// Runs `work`, an engine call that touches no Python object (load_into's `stage` callback takes
// the GIL itself), on a helper thread, while the calling thread waits with the GIL released and
// takes it back every 20 ms to run Python's signal handlers (PyErr_CheckSignals; they run in the
// main thread only, so only a call made there sees Ctrl-C, as with any Python code). When a
// handler raises (SIGINT: KeyboardInterrupt), the engine is asked to stop at its next task
// (`cancel`, ExecOptions::cancel) and this thread goes on waiting until it has returned: task
// buffers freed, temporary files removed, the destination's lock released, finished shards and
// the manifest kept for resume. Only then is the handler's exception raised, in place of the
// engine's ConversionInterrupted (or of its result, when the last task was already running). A
// handler raising again meanwhile (a second Ctrl-C) is dropped: the engine is already stopping,
// within one task. (The CLI's InterruptWatch does the same with sigwait; its second signal ends
// the process, which a library must not do.)
template <class F>
std::invoke_result_t<F&> run_interruptible(std::atomic<bool>& cancel, F&& work) {
  using R = std::invoke_result_t<F&>;
  std::conditional_t<std::is_void_v<R>, bool, std::optional<R>> result{};
  std::exception_ptr error;
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  std::thread engine;
  {
    nb::gil_scoped_release release;
    engine = std::thread([&] {
      try {
        if constexpr (std::is_void_v<R>)
          work();
        else
          result.emplace(work());
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard lock(mutex);
      done = true;
      cv.notify_all();
    });
  }
  // Whatever leaves this function, the engine has stopped first: nothing outlives the call.
  struct Join {
    std::thread& engine;
    std::atomic<bool>& cancel;
    ~Join() {
      if (!engine.joinable()) return;
      cancel.store(true);
      nb::gil_scoped_release release;
      engine.join();
    }
  } join{engine, cancel};
  std::optional<nb::python_error> interrupt;
  for (;;) {
    bool finished;
    {
      nb::gil_scoped_release release;
      std::unique_lock lock(mutex);
      finished = cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return done; });
    }
    if (finished) break;
    if (PyErr_CheckSignals() != 0) {
      if (!interrupt)
        interrupt.emplace();  // takes the handler's exception (the error indicator is cleared)
      else
        PyErr_Clear();
      cancel.store(true);
    }
  }
  {
    nb::gil_scoped_release release;
    engine.join();
  }
  if (interrupt) throw std::move(*interrupt);
  if (error) std::rethrow_exception(error);
  if constexpr (!std::is_void_v<R>) return std::move(*result);
}

ConvertOptions convert_options(uint64_t max_shard_bytes, unsigned threads, uint64_t max_memory,
                               const std::string& existing, const CancelFlag& cancel) {
  ConvertOptions c;
  c.max_shard_bytes = max_shard_bytes;
  c.exec = exec_of(threads, max_memory);
  c.exec.cancel = &cancel.flag;
  if (existing == "refuse")
    c.existing = ExistingOutput::kRefuse;
  else if (existing == "overwrite")
    c.existing = ExistingOutput::kOverwrite;
  else if (existing == "resume")
    c.existing = ExistingOutput::kResume;
  else
    fail(ErrorKind::kInvalidArgument, "", "",
         "unknown handling of an existing destination \"" + existing + "\"",
         "refuse, overwrite or resume");
  return c;
}

Compat compat_of(const std::string& name) {
  auto c = parse_compat(name);
  if (!c)
    fail(ErrorKind::kInvalidArgument, "", "", "unknown compat mode \"" + name + "\"",
         "None, \"automodel\", \"automodel-0.6\" or \"automodel-0.7\"");
  return *c;
}

AttnBackend attn_of(const std::string& name) {
  auto b = parse_attn_backend(name);
  if (!b)
    fail(ErrorKind::kInvalidArgument, "", "", "unknown attention backend \"" + name + "\"",
         "\"sdpa\" or \"te\"");
  return *b;
}

FromHfOptions from_hf_options(int64_t ep_size, int64_t ep_rank, const std::string& dtype,
                              const std::string& compat, const std::string& attn = "sdpa") {
  FromHfOptions o;
  o.attn_backend = attn_of(attn);
  o.ep_size = ep_size;
  o.ep_rank = ep_rank;
  o.dtype = out_dtype_of(dtype);
  o.compat = compat_of(compat);
  return o;
}

ToHfOptions to_hf_options(const std::string& quant, const std::string& compat,
                          const std::optional<std::string>& exclude,
                          const std::optional<std::string>& prefix, bool require_all,
                          const std::string& attn = "sdpa", int64_t tp_size = 0) {
  ToHfOptions o;
  o.attn_backend = attn_of(attn);
  o.tp_size = tp_size;
  o.quant = quant_of(quant);
  o.compat = compat_of(compat);
  o.exclude_regex = exclude;
  o.prefix = prefix;
  o.require_all_experts = require_all;
  return o;
}

// The options a refusal suggests, as the package's keyword arguments spell them; those only the
// command line has keep the library's neutral words.
std::string python_spelling(CallerOption option, std::string_view value) {
  switch (option) {
    case CallerOption::kOverwrite:
      return "overwrite=True";
    case CallerOption::kResume:
      return "resume=True";
    case CallerOption::kMaxMemory:
      return value.empty() ? "max_memory" : "max_memory=" + std::string(value);
    case CallerOption::kDistributed:
      return "device_mesh";
    default:
      return neutral_spelling(option, value);
  }
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "moeckpt C++ engine (use the moeckpt package, not this module)";
  // Every refusal of the engine (one line naming file, tensor, problem, expectation), raised as
  // the subclass of its kind; each class carries `kind` ("numeric", ...), so callers branch on
  // classes, never on message text.
  // Raw references kept for the life of the process (the interpreter may be gone at exit).
  nb::object error_class = nb::exception<Error>(m, "Error", PyExc_RuntimeError);
  error_class.attr("kind") = nb::none();
  static PyObject* base = error_class.inc_ref().ptr();
  struct KindClass {
    ErrorKind kind;
    const char* name;
    PyObject* also;  // a builtin base that fits, or null
  };
  static const KindClass kClasses[] = {
      {ErrorKind::kMalformedFile, "MalformedFileError", PyExc_ValueError},
      {ErrorKind::kConfigMismatch, "ConfigMismatchError", PyExc_ValueError},
      {ErrorKind::kUnsupportedLayout, "UnsupportedLayoutError", PyExc_ValueError},
      {ErrorKind::kNumeric, "NumericError", PyExc_ValueError},
      {ErrorKind::kDestination, "DestinationError", PyExc_OSError},
      {ErrorKind::kInterrupted, "ConversionInterrupted", nullptr},
      {ErrorKind::kInvalidArgument, "InvalidArgumentError", PyExc_ValueError},
      {ErrorKind::kIo, "InputIOError", PyExc_OSError},
  };
  static std::map<ErrorKind, PyObject*> by_kind;
  for (const auto& k : kClasses) {
    nb::object bases = k.also ? nb::make_tuple(nb::handle(base), nb::handle(k.also))
                              : nb::make_tuple(nb::handle(base));
    const std::string qualified = std::string("moeckpt._core.") + k.name;
    nb::object cls = nb::steal(PyErr_NewException(qualified.c_str(), bases.ptr(), nullptr));
    if (!cls.is_valid()) throw nb::python_error();
    cls.attr("kind") = error_kind_name(k.kind);
    m.attr(k.name) = cls;
    by_kind[k.kind] = cls.inc_ref().ptr();
  }
  // Registered after nb::exception<Error>, so it is tried first.
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const Error& e) {
      auto it = by_kind.find(e.kind());
      PyErr_SetString(it == by_kind.end() ? base : it->second,
                      format_error(e.info(), python_spelling).c_str());
    }
  });

  nb::class_<Config>(m, "Config")
      .def(
          "__init__",
          [](Config* self, const std::string& text, const std::string& where) {
            nlohmann::json doc;
            try {
              doc = nlohmann::json::parse(text);
            } catch (const nlohmann::json::exception& e) {
              fail(ErrorKind::kMalformedFile, where, "",
                   std::string("config is not valid JSON: ") + e.what());
            }
            auto config = ModelConfig::parse(doc, where);
            std::shared_ptr<const ModelSpec> spec = model_spec_for(config);
            new (self) Config{std::move(config), text, std::move(spec)};
          },
          nb::arg("text"), nb::arg("where") = "config.json")
      .def_prop_ro("n_routed_experts", [](const Config& c) { return c.config.n_routed_experts; })
      .def_prop_ro("moe_intermediate_size",
                   [](const Config& c) { return c.config.moe_intermediate_size; })
      .def_prop_ro("hidden_size", [](const Config& c) { return c.config.hidden_size; })
      .def_prop_ro("num_hidden_layers", [](const Config& c) { return c.config.num_hidden_layers; })
      .def_prop_ro("text", [](const Config& c) { return c.text; })
      .def_prop_ro("model", [](const Config& c) { return std::string(c.spec->layout_name()); })
      .def_prop_ro("family", [](const Config& c) { return c.config.family; })
      .def(
          "should_quantize_key",
          [](const Config& c, const std::string& k, const std::string& compat) {
            return c.spec->compat_quantizes(k, compat_of(compat));
          },
          nb::arg("key"), nb::arg("compat"))
      .def(
          "is_published_fp8_key",
          [](const Config& c, const std::string& k) { return c.spec->is_published_fp8(k); },
          nb::arg("key"))
      .def(
          "grouped_target",
          [](const Config& c, const std::string& k) { return grouped_target(*c.spec, k); },
          nb::arg("key"))
      .def(
          "native_key",
          [](const Config& c, const std::string& k) { return c.spec->native_name_of(k); },
          nb::arg("key"))
      .def(
          "is_grouped_expert_key",
          // Split by EP along the expert axis: grouped experts, and a stacked layout's biases.
          [](const Config& c, const std::string& k) {
            const auto kind = c.spec->classify(k).kind;
            return kind == TensorKind::kGroupedExperts || kind == TensorKind::kExpertBias;
          },
          nb::arg("key"));
  m.def(
      "is_grouped_expert_key",
      [](const std::string& k) {
        return reference_model_spec().classify(k).kind == TensorKind::kGroupedExperts;
      },
      nb::arg("key"));

  m.def(
      "should_quantize_key",
      [](const std::string& k, const std::string& compat) {
        return should_quantize_key(k, compat_of(compat));
      },
      nb::arg("key"), nb::arg("compat"));
  m.def(
      "is_published_fp8_key", [](const std::string& k) { return is_published_fp8_key(k); },
      nb::arg("key"));
  // The FP8 kernels' ISA (MOECKPT_ISA may force a lower one; a value it refuses raises).
  m.def("kernel_isa", [] { return std::string(kernels::isa_name(kernels::best_isa())); });
  // (first expert, count) of an EP rank.
  m.def(
      "expert_range",
      [](int64_t n, int64_t size, int64_t rank) {
        auto r = ExpertRange::for_rank(n, size, rank);
        return std::make_tuple(r.first, r.count);
      },
      nb::arg("n_experts"), nb::arg("ep_size"), nb::arg("ep_rank"));

  m.def(
      "synth",
      [](const std::string& dst, const std::string& preset, std::optional<int64_t> layers,
         std::optional<int64_t> experts, std::optional<int64_t> vocab, std::optional<int64_t> mtp,
         uint64_t seed, std::optional<uint64_t> shard_size, std::optional<int64_t> tp_size,
         bool sparse) {
        SynthOptions o;
        o.preset = preset;
        o.layers = layers;
        o.experts = experts;
        o.vocab = vocab;
        o.mtp_layers = mtp;
        o.seed = seed;
        o.max_shard_bytes = shard_size;
        o.tp_size = tp_size;
        o.sparse = sparse;
        nb::gil_scoped_release release;
        auto r = synthesize_checkpoint(dst, o);
        return std::make_tuple(r.tensors, r.total_bytes, r.shards);
      },
      nb::arg("dst"), nb::arg("preset"), nb::arg("layers").none(), nb::arg("experts").none(),
      nb::arg("vocab").none(), nb::arg("mtp").none(), nb::arg("seed"), nb::arg("shard_size").none(),
      nb::arg("tp_size").none() = nb::none(), nb::arg("sparse") = false);

  // HF tensors in memory -> native tensors of one EP rank.
  m.def(
      "from_hf",
      [](const std::vector<InRow>& rows, const Config& cfg, int64_t ep_size, int64_t ep_rank,
         const std::string& dtype, const std::string& compat, unsigned threads, uint64_t max_memory,
         const std::string& attn, int64_t tp_size) {
        auto entries = entries_of(rows);
        auto o = from_hf_options(ep_size, ep_rank, dtype, compat, attn);
        // A state dict may be any part of a checkpoint, as the reference accepts (a folder,
        // below, must be whole).
        o.whole_checkpoint = false;
        std::atomic<bool> cancel{false};
        Converted out = run_interruptible(cancel, [&] {
          // The checkpoint TP degree of fused QKV weights, as a folder's index records it.
          MemorySource src(std::move(entries), {{"tp_size", std::to_string(tp_size)}});
          return run_into_buffers(plan_from_hf(src, cfg.config, o), src,
                                  exec_of(threads, max_memory, &cancel));
        });
        return to_python(std::move(out));
      },
      nb::arg("rows"), nb::arg("config"), nb::arg("ep_size"), nb::arg("ep_rank"), nb::arg("dtype"),
      nb::arg("compat"), nb::arg("threads"), nb::arg("max_memory"), nb::arg("attn") = "sdpa",
      nb::arg("tp_size") = 1);

  // An HF checkpoint folder -> destinations the caller owns (a model's parameters): each row
  // (name, dtype, global shape, row0, row1, address, bytes) is rows [row0, row1) of a native
  // tensor held contiguously at `address`. Returns (missing, unexpected, tensors, bytes read).
  using DestRow = std::tuple<std::string, std::string, std::vector<uint64_t>, int64_t, int64_t,
                             uintptr_t, uint64_t>;
  // A row with address 0 is staged: its pieces go to stage(index, offset, piece), `piece` a uint8
  // tensor over the engine's buffer, valid during the call only (GPU destinations).
  // `require_all`: a destination without a source is an error before anything is read. `phase`:
  // "check+write" (a checking pass, then the writes), "check" (the checking pass alone: nothing
  // is written) or "write" (fresh destinations: no checking pass); see LoadOptions.
  m.def(
      "load_into",
      [](const std::string& dir, const std::vector<DestRow>& rows, const std::string& dtype,
         const std::string& compat, const std::string& attn, unsigned threads, uint64_t max_memory,
         nb::object stage, int64_t ep_size, int64_t ep_rank, bool require_all,
         const std::string& phase) {
        LoadOptions lo;
        lo.require_all = require_all;
        if (phase == "check")
          lo.phase = LoadOptions::Phase::kCheckOnly;
        else if (phase == "write")
          lo.phase = LoadOptions::Phase::kWriteOnly;
        else if (phase != "check+write")
          fail(ErrorKind::kInvalidArgument, "", "", "load phase \"" + phase + "\"",
               "\"check+write\", \"check\" or \"write\"");
        std::vector<LoadDestination> dests;
        for (const auto& [name, dt, shape, row0, row1, address, nbytes] : rows) {
          LoadDestination d{name, dtype_of(dt), shape, row0, row1, {}};
          if (address) {
            d.bytes = std::span(reinterpret_cast<uint8_t*>(address), nbytes);
          } else {
            const size_t index = dests.size();
            d.staged_bytes = nbytes;
            d.stage = [stage, index](uint64_t offset, std::span<const uint8_t> piece) {
              nb::gil_scoped_acquire acquire;
              nb::ndarray<nb::pytorch, uint8_t, nb::ndim<1>> view(
                  const_cast<uint8_t*>(piece.data()), {piece.size()});
              stage(index, offset, view);
            };
          }
          dests.push_back(std::move(d));
        }
        const auto o = from_hf_options(ep_size, ep_rank, dtype, compat, attn);
        std::atomic<bool> cancel{false};
        const LoadReport r = run_interruptible(cancel, [&] {
          return load_hf_into(dir, dests, o, exec_of(threads, max_memory, &cancel), lo);
        });
        return std::make_tuple(r.missing, r.unexpected, r.tensors, r.bytes_read);
      },
      nb::arg("dir"), nb::arg("rows"), nb::arg("dtype"), nb::arg("compat"), nb::arg("attn"),
      nb::arg("threads"), nb::arg("max_memory"), nb::arg("stage").none() = nb::none(),
      nb::arg("ep_size") = 1, nb::arg("ep_rank") = 0, nb::arg("require_all") = false,
      nb::arg("phase") = "check+write");

  // The native tensors from-hf gives for one EP rank of an HF checkpoint folder, from the headers
  // alone: ([(name, dtype, shape)] in plan order, __metadata__, config.json text).
  // moeckpt.from_hf_dir allocates them and fills them through load_into: one conversion path.
  m.def(
      "from_hf_layout",
      [](const std::string& dir, int64_t ep_size, int64_t ep_rank, const std::string& dtype,
         const std::string& compat, const std::string& attn) {
        auto o = from_hf_options(ep_size, ep_rank, dtype, compat, attn);
        o.prescan_scales = false;  // the load reads (and refuses) the scales it uses
        nb::list layout;
        std::map<std::string, std::string> metadata;
        std::string config_text;
        std::vector<TensorSpec> outputs;
        {
          nb::gil_scoped_release release;
          config_text = io::read_small_file(checkpoint_config_path(dir), kMaxConfigBytes);
          CheckpointSource src({fs::path(dir)});
          Plan plan = plan_from_hf(src, ModelConfig::load(checkpoint_config_path(dir)), o);
          metadata = std::move(plan.metadata);
          outputs = std::move(plan.outputs);
        }
        for (const auto& t : outputs)
          layout.append(nb::make_tuple(t.name, std::string(dtype_name(t.dtype)), t.shape));
        return std::make_tuple(layout, metadata, config_text);
      },
      nb::arg("dir"), nb::arg("ep_size"), nb::arg("ep_rank"), nb::arg("dtype"), nb::arg("compat"),
      nb::arg("attn") = "sdpa");

  // Host memory for tensors the engine fills: one uint8 tensor per size, its pages faulted in up
  // front over `threads` threads (see Buffer).
  m.def(
      "host_buffers",
      [](const std::vector<uint64_t>& sizes, unsigned threads) {
        std::vector<std::unique_ptr<Buffer>> buffers;
        {
          nb::gil_scoped_release release;
          for (uint64_t n : sizes) buffers.push_back(std::make_unique<Buffer>(n));
          populate(buffers, threads);
        }
        nb::list out;
        for (auto& b : buffers) out.append(as_torch(std::move(b)));
        return out;
      },
      nb::arg("sizes"), nb::arg("threads"));

  // Native tensors in memory -> HF tensors. `expert_start`: first global expert id of the grouped
  // tensors given (an EP rank's shard).
  m.def(
      "to_hf",
      [](const std::vector<InRow>& rows, const Config& cfg, const std::string& quant,
         const std::string& compat, std::optional<std::string> exclude,
         std::optional<std::string> prefix, int64_t expert_start, bool require_all,
         unsigned threads, uint64_t max_memory, const std::string& attn, int64_t tp_size) {
        auto entries = entries_of(rows);
        auto o = to_hf_options(quant, compat, exclude, prefix, require_all, attn, tp_size);
        // A state dict, as Automodel's to_hf gives it: keys in the input's order (a folder's
        // layout is by name: ToHfOptions::order).
        o.order = ToHfOptions::Order::kSource;
        std::atomic<bool> cancel{false};
        Converted out = run_interruptible(cancel, [&] {
          MemorySource src(std::move(entries));
          return run_into_buffers(plan_to_hf(src, cfg.config, o, {expert_start}), src,
                                  exec_of(threads, max_memory, &cancel));
        });
        return to_python(std::move(out));
      },
      nb::arg("rows"), nb::arg("config"), nb::arg("quant"), nb::arg("compat"),
      nb::arg("exclude").none(), nb::arg("prefix").none(), nb::arg("expert_start"),
      nb::arg("require_all"), nb::arg("threads"), nb::arg("max_memory"), nb::arg("attn") = "sdpa",
      nb::arg("tp_size") = 0);

  m.def(
      "convert_single_tensor_to_hf",
      [](const InRow& row, const Config& cfg, const std::string& quant, const std::string& compat,
         std::optional<std::string> exclude, std::optional<std::string> prefix,
         int64_t expert_start, const std::string& attn, int64_t tp_size) {
        auto entries = entries_of({row});
        auto o = to_hf_options(quant, compat, exclude, prefix, false, attn, tp_size);
        o.single_tensor = true;
        std::atomic<bool> cancel{false};
        Converted out = run_interruptible(cancel, [&] {
          // As the library's convert_single_tensor_to_hf (o.require_all_experts is false), but
          // into buffers torch will own, so a large grouped tensor is not copied once more.
          MemorySource src(std::move(entries));
          return run_into_buffers(plan_to_hf(src, cfg.config, o, {expert_start}), src,
                                  exec_of(0, ExecOptions{}.max_memory, &cancel));
        });
        return to_python(std::move(out));
      },
      nb::arg("row"), nb::arg("config"), nb::arg("quant"), nb::arg("compat"),
      nb::arg("exclude").none(), nb::arg("prefix").none(), nb::arg("expert_start"),
      nb::arg("attn") = "sdpa", nb::arg("tp_size") = 0);

  // A stop request for a folder conversion: run_interruptible sets it when a signal handler raises
  // (Ctrl-C), and the conversion stops at the next task as the CLI's does on SIGINT; the call
  // raises once it has stopped.
  nb::class_<CancelFlag>(m, "CancelFlag")
      .def(nb::init<>())
      .def("set", [](CancelFlag& f) { f.flag.store(true); })
      .def("is_set", [](const CancelFlag& f) { return f.flag.load(); });

  // Native tensors in memory -> an HF checkpoint folder, through the same job layer as the CLI's
  // to-hf (destination checks, lock, manifest, resume, cleanup on error). Returns (tensors, bytes,
  // shards, shards kept from an interrupted run).
  m.def(
      "to_hf_dir",
      [](const std::vector<InRow>& rows, const std::string& dst, const Config& cfg,
         const std::string& quant, const std::string& compat, std::optional<std::string> exclude,
         std::optional<std::string> prefix, int64_t expert_start, bool require_all,
         uint64_t max_shard_bytes, unsigned threads, uint64_t max_memory,
         const std::string& existing, CancelFlag& cancel, const std::string& attn,
         int64_t tp_size) {
        auto entries = entries_of(rows);
        auto o = to_hf_options(quant, compat, exclude, prefix, require_all, attn, tp_size);
        const auto c = convert_options(max_shard_bytes, threads, max_memory, existing, cancel);
        const auto r = run_interruptible(cancel.flag, [&] {
          MemorySource src(std::move(entries));
          return to_hf_dir_from_memory(src, cfg.config, dst, o, expert_start, c);
        });
        return std::make_tuple(r.tensors, r.bytes_out, r.shards, r.shards_kept);
      },
      nb::arg("rows"), nb::arg("dst"), nb::arg("config"), nb::arg("quant"), nb::arg("compat"),
      nb::arg("exclude").none(), nb::arg("prefix").none(), nb::arg("expert_start"),
      nb::arg("require_all"), nb::arg("max_shard_bytes"), nb::arg("threads"), nb::arg("max_memory"),
      nb::arg("existing"), nb::arg("cancel"), nb::arg("attn") = "sdpa", nb::arg("tp_size") = 0);

  // A distributed export (to_hf_dir with a device mesh): from names, dtypes and global shapes
  // alone, the shards of the whole model's export, the rank writing each, and per rank the rows of
  // each EP-split tensor its shards read. Returns (shards, owners, rows_needed).
  m.def(
      "export_plan",
      [](const std::vector<std::tuple<std::string, std::string, std::vector<uint64_t>>>& specs,
         const std::vector<std::string>& split, const Config& cfg, const std::string& quant,
         const std::string& compat, std::optional<std::string> exclude,
         std::optional<std::string> prefix, const std::string& attn, int64_t tp_size,
         uint64_t max_shard_bytes, int64_t workers) {
        std::vector<MemorySource::Entry> entries;
        std::map<std::string, uint64_t> windows;
        for (const auto& [name, dtype, shape] : specs) {
          entries.push_back({name, dtype_of(dtype), shape, {}});
          windows[name] = 0;  // no bytes: planning reads none
        }
        auto o = to_hf_options(quant, compat, exclude, prefix, true, attn, tp_size);
        MemorySource src(std::move(entries), {}, windows);
        auto d = plan_export_distribution(src, cfg.config, o, split, max_shard_bytes, workers);
        return std::make_tuple(d.shards, d.owners, d.rows_needed);
      },
      nb::arg("specs"), nb::arg("split"), nb::arg("config"), nb::arg("quant"), nb::arg("compat"),
      nb::arg("exclude").none(), nb::arg("prefix").none(), nb::arg("attn"), nb::arg("tp_size"),
      nb::arg("max_shard_bytes"), nb::arg("workers"));

  // One rank's part of a distributed export: the whole model's plan over this rank's tensors
  // (`windows`: the EP-split ones, as rows [offset / row bytes, ...) of the global tensor), the
  // shards `owners` gives this worker; the caller finalizes after its barrier. Returns (tensors,
  // bytes written here, shards, shards kept).
  m.def(
      "to_hf_dir_worker",
      [](const std::vector<InRow>& rows, const std::map<std::string, uint64_t>& windows,
         const std::string& inputs_text, const std::string& dst, const Config& cfg,
         const std::string& quant, const std::string& compat, std::optional<std::string> exclude,
         std::optional<std::string> prefix, uint64_t max_shard_bytes, unsigned threads,
         uint64_t max_memory, const std::string& existing, CancelFlag& cancel,
         const std::string& attn, int64_t tp_size, int64_t workers, int64_t worker,
         const std::vector<int64_t>& owners) {
        auto entries = entries_of(rows, windows);
        auto o = to_hf_options(quant, compat, exclude, prefix, true, attn, tp_size);
        auto c = convert_options(max_shard_bytes, threads, max_memory, existing, cancel);
        c.workers = workers;
        c.worker = worker;
        c.shard_owners = owners;
        c.finalize = false;
        const auto r = run_interruptible(cancel.flag, [&] {
          MemorySource src(std::move(entries), {}, windows);
          return to_hf_dir_from_source(src, inputs_text, cfg.config, dst, o, 0, c);
        });
        return std::make_tuple(r.tensors, r.bytes_out, r.shards, r.shards_kept);
      },
      nb::arg("rows"), nb::arg("windows"), nb::arg("inputs_text"), nb::arg("dst"),
      nb::arg("config"), nb::arg("quant"), nb::arg("compat"), nb::arg("exclude").none(),
      nb::arg("prefix").none(), nb::arg("max_shard_bytes"), nb::arg("threads"),
      nb::arg("max_memory"), nb::arg("existing"), nb::arg("cancel"), nb::arg("attn"),
      nb::arg("tp_size"), nb::arg("workers"), nb::arg("worker"), nb::arg("owners"));

  // Completes a folder a distributed conversion wrote (moeckpt finalize). Returns (shards,
  // bytes, index written).
  m.def(
      "finalize_dir",
      [](const std::string& dst, double wait_seconds) {
        if (!std::isfinite(wait_seconds) || wait_seconds < 0 || wait_seconds > 1e8)
          fail(ErrorKind::kInvalidArgument, "", "",
               fmt::format("wait_seconds={} is out of range", wait_seconds),
               "a finite number of seconds from 0 to 1e8");
        std::atomic<bool> cancel{false};  // Ctrl-C ends the wait
        const auto r = run_interruptible(cancel, [&] {
          return finalize_dir(dst, std::chrono::milliseconds(std::llround(wait_seconds * 1000.0)),
                              &cancel);
        });
        return std::make_tuple(r.shards, r.bytes, r.index_written);
      },
      nb::arg("dst"), nb::arg("wait_seconds") = 0.0);

  // A digest of tensors in memory (names, shapes and bytes): the identity a distributed export's
  // ranks agree on for --resume (each rank's digest of what it holds, gathered).
  m.def("memory_digest", [](std::vector<InRow> rows) {
    // By name: the same tensors are the same identity in any order (their layout is by name too).
    std::stable_sort(rows.begin(), rows.end(), [](const InRow& a, const InRow& b) {
      return std::get<0>(a) < std::get<0>(b);
    });
    std::string text;
    for (const auto& [name, dtype, shape, addr, nbytes] : rows) {
      text += name + " " + dtype + " " + std::to_string(nbytes) + " ";
      {
        nb::gil_scoped_release release;
        text += io::text_checksum({reinterpret_cast<const char*>(addr), nbytes}) + "\n";
      }
      if (PyErr_CheckSignals() != 0) throw nb::python_error();  // Ctrl-C between tensors
    }
    return io::text_checksum(text);
  });

  // HF -> HF folder conversions (moeckpt dequantize / quantize), the same job layer. Return
  // (tensors, bytes, shards, shards kept).
  m.def(
      "dequantize_dir",
      [](const std::string& src, const std::string& dst, const std::string& dtype,
         uint64_t max_shard_bytes, unsigned threads, uint64_t max_memory,
         const std::string& existing, CancelFlag& cancel) {
        auto o = from_hf_options(1, 0, dtype, "none");
        const auto c = convert_options(max_shard_bytes, threads, max_memory, existing, cancel);
        const auto r =
            run_interruptible(cancel.flag, [&] { return dequantize_dir(src, dst, o, c); });
        return std::make_tuple(r.tensors, r.bytes_out, r.shards, r.shards_kept);
      },
      nb::arg("src"), nb::arg("dst"), nb::arg("dtype"), nb::arg("max_shard_bytes"),
      nb::arg("threads"), nb::arg("max_memory"), nb::arg("existing"), nb::arg("cancel"));
  m.def(
      "quantize_dir",
      [](const std::string& src, const std::string& dst, const std::string& quant,
         uint64_t max_shard_bytes, unsigned threads, uint64_t max_memory,
         const std::string& existing, CancelFlag& cancel) {
        auto o = to_hf_options(quant, "none", std::nullopt, std::nullopt, true);
        const auto c = convert_options(max_shard_bytes, threads, max_memory, existing, cancel);
        const auto r = run_interruptible(cancel.flag, [&] { return quantize_dir(src, dst, o, c); });
        return std::make_tuple(r.tensors, r.bytes_out, r.shards, r.shards_kept);
      },
      nb::arg("src"), nb::arg("dst"), nb::arg("quant"), nb::arg("max_shard_bytes"),
      nb::arg("threads"), nb::arg("max_memory"), nb::arg("existing"), nb::arg("cancel"));

  // A training job's sharded save -> HF checkpoint (moeckpt consolidate). max_shard_bytes 0: the
  // save's own output files. Returns (tensors, bytes, shards, shards kept).
  m.def(
      "consolidate_dir",
      [](const std::string& src, const std::string& dst, const std::string& quant,
         std::optional<std::string> dtype, std::optional<std::string> config,
         uint64_t max_shard_bytes, unsigned threads, uint64_t max_memory,
         const std::string& existing, CancelFlag& cancel) {
        ConsolidateOptions o;
        if (quant != "none")
          o.quant = to_hf_options(quant, "none", std::nullopt, std::nullopt, true).quant;
        if (dtype) {
          const auto d = parse_dtype(*dtype);
          if (!d || (*d != Dtype::BF16 && *d != Dtype::F16 && *d != Dtype::F32))
            fail(ErrorKind::kInvalidArgument, "", "", "dtype " + *dtype + " is not a cast target",
                 "bfloat16, float16 or float32");
          o.dtype = *d;
        }
        if (config) o.config = *config;
        o.save_layout = max_shard_bytes == 0;
        const auto c = convert_options(max_shard_bytes ? max_shard_bytes : 5'000'000'000, threads,
                                       max_memory, existing, cancel);
        const auto r =
            run_interruptible(cancel.flag, [&] { return consolidate_dir(src, dst, o, c); });
        return std::make_tuple(r.tensors, r.bytes_out, r.shards, r.shards_kept);
      },
      nb::arg("src"), nb::arg("dst"), nb::arg("quant"), nb::arg("dtype").none(),
      nb::arg("config").none(), nb::arg("max_shard_bytes"), nb::arg("threads"),
      nb::arg("max_memory"), nb::arg("existing"), nb::arg("cancel"));

  // A checkpoint folder, or a repo id resolved in the local Hugging Face cache.
  m.def(
      "resolve_checkpoint",
      [](const std::string& spec, std::optional<std::string> revision) {
        return io::resolve_checkpoint(spec, revision).string();
      },
      nb::arg("spec"), nb::arg("revision").none());
}
