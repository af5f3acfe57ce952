#pragma once
// The plan that writes every tensor of a source as it reads (a sharded save's consolidation: the
// source assembles each tensor from its pieces and restores its dtype).
#include <cstdint>

#include "moeckpt/plan.hpp"

namespace moeckpt {

// Outputs in the source's order; a tensor larger than `task_bytes` is copied by several tasks of
// about that many bytes each (element ranges), so one large tensor keeps every thread busy.
Plan plan_copy(const TensorSource& source, uint64_t task_bytes);

}  // namespace moeckpt
