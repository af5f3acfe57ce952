// Restricting a plan to row windows of its outputs: what a rank loading its shards of a model's
// parameters runs (each rank reads only the bytes behind its rows).
#include <algorithm>
#include <variant>

#include "moeckpt/error.hpp"
#include "moeckpt/plan.hpp"

namespace moeckpt {
namespace {

int64_t rows_of(const TensorSpec& t) {
  return t.shape.empty() ? 1 : static_cast<int64_t>(t.shape[0]);
}

uint64_t row_elements(const TensorSpec& t) {
  uint64_t n = 1;
  for (size_t d = 1; d < t.shape.size(); ++d) n *= t.shape[d];
  return n;
}

}  // namespace

void restrict_to_rows(Plan& plan, const std::vector<std::optional<RowWindow>>& windows) {
  auto window_of = [&](size_t out) -> const std::optional<RowWindow>& { return windows.at(out); };
  // Whether a task writing whole outputs may run: every output it writes wanted whole, or none.
  auto whole_outputs = [&](const std::vector<size_t>& outs) {
    bool any = false;
    for (size_t o : outs) {
      const auto& w = window_of(o);
      if (!w) continue;
      any = true;
      if (w->row0 > 0 || w->row1 < rows_of(plan.outputs[o]))
        fail(ErrorKind::kInvalidArgument, "", plan.outputs[o].name,
             "only rows of it are wanted, but its task writes the whole tensor",
             "whole tensors for quantizing tasks");
    }
    return any;
  };
  struct Clip {
    const Plan& plan;
    decltype(window_of)& window;
    decltype(whole_outputs)& whole;
    bool operator()(CopyTask& t) const {
      const auto& w = window(t.out);
      if (!w) return false;
      const uint64_t re = row_elements(plan.outputs[t.out]);
      // Output element i is source element i - out_delta.
      const auto src_of = [&](int64_t row) {
        return static_cast<uint64_t>(
            std::max<int64_t>(0, row * static_cast<int64_t>(re) - t.out_delta));
      };
      t.elem0 = std::max(t.elem0, src_of(w->row0));
      t.elem1 = std::min(t.elem1, src_of(w->row1));
      return t.elem0 < t.elem1;
    }
    bool operator()(DequantTask& t) const {
      const auto& w = window(t.out);
      if (!w) return false;
      const int64_t start = t.out_row0 < 0 ? t.row0 : t.out_row0;
      if (t.in.mx_scale) {  // one task per whole matrix: run it if any wanted row is in it
        const int64_t n = static_cast<int64_t>(t.in.weight->shape.at(0));
        return std::max(start, w->row0) < std::min(start + n, w->row1);
      }
      const int64_t row1 = t.row1 < 0 ? static_cast<int64_t>(t.in.weight->shape.at(0)) : t.row1;
      const int64_t a = std::max(start, w->row0), b = std::min(start + (row1 - t.row0), w->row1);
      if (a >= b) return false;
      t.row0 += a - start;
      t.row1 = t.row0 + (b - a);
      t.out_row0 = a;
      return true;
    }
    bool operator()(ExpertSlotTask& t) const {
      const auto& w = window(t.out);
      return w && t.slot >= w->row0 && t.slot < w->row1;
    }
    bool operator()(EmitTask& t) const {
      std::vector<size_t> outs{t.out_weight};
      if (t.out_scale) outs.push_back(*t.out_scale);
      return whole(outs);
    }
    bool operator()(SlotGroupTask& g) const {
      std::vector<size_t> outs;
      for (const auto& p : g.parts) {
        outs.push_back(p.out_weight);
        if (p.out_scale) outs.push_back(*p.out_scale);
      }
      return whole(outs);
    }
    bool operator()(GroupQuantTask& t) const {
      std::vector<size_t> outs;
      for (const auto& o : t.out_weight)
        if (o) outs.push_back(*o);
      for (const auto& o : t.out_scale)
        if (o) outs.push_back(*o);
      return whole(outs);
    }
    bool operator()(GatherQuantTask& t) const { return whole({t.out_weight, t.out_scale}); }
  };
  std::vector<Task> kept;
  kept.reserve(plan.tasks.size());
  for (auto& task : plan.tasks)
    if (std::visit(Clip{plan, window_of, whole_outputs}, task)) kept.push_back(std::move(task));
  plan.tasks = std::move(kept);
}

}  // namespace moeckpt
