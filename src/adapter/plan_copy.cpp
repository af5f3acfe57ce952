#include "adapter/plan_copy.hpp"

#include <algorithm>

namespace moeckpt {

Plan plan_copy(const TensorSource& source, uint64_t task_bytes) {
  Plan plan;
  for (const auto& t : source.tensors()) {
    const size_t out = plan.outputs.size();
    plan.outputs.push_back({t.name, t.dtype, t.shape});
    const uint64_t es = std::max<uint64_t>(1, dtype_size(t.dtype));
    const uint64_t elems = t.nbytes / es;
    const uint64_t per_task = std::max<uint64_t>(1, task_bytes / es);
    CopyTask c;
    c.src = &t;
    c.out = out;
    if (elems <= per_task) {
      plan.tasks.push_back(c);
      continue;
    }
    for (uint64_t e = 0; e < elems; e += per_task) {
      c.elem0 = e;
      c.elem1 = std::min(elems, e + per_task);
      plan.tasks.push_back(c);
    }
  }
  return plan;
}

}  // namespace moeckpt
