#pragma once
// Whether quantization_config.weight_block_size is the block size the scale grids were made with.
#include "moeckpt/model_spec.hpp"
#include "moeckpt/tensor_source.hpp"

namespace moeckpt {

// Extra trailing scale rows/columns are padding (Automodel pads its k scales) and are accepted on
// some weights; a block size that most grids contradict (e.g. 256 for a checkpoint quantized in
// 128-blocks, whose real grids would otherwise be read as "extras") is refused, naming a grid
// and the block size the grids fit.
void check_block_size_matches_scales(const TensorSource& src, const ModelSpec& spec,
                                     const BlockSize& block);

}  // namespace moeckpt
