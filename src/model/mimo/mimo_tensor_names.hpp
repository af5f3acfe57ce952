#pragma once
// The MiMo tensor-name grammar: what a name is, which layer/expert/projection, its prefix, and
// whether it is a scale companion.
#include <string>
#include <string_view>

#include "moeckpt/tensor_key.hpp"

namespace moeckpt {

TensorKey classify_tensor_name(std::string_view name);
// For "...self_attn.<proj>.weight", the text up to and including "self_attn." (the names of the
// layer's other projections and scales are built on it).
std::string self_attn_prefix(std::string_view attention_weight_name);

}  // namespace moeckpt
