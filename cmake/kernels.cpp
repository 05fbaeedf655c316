// The one translation unit that compiles kvattn's kernels, for programs that
// define KVATTN_PRECOMPILED_KERNELS everywhere else (CMake: kvattn::kernels).
#define KVATTN_KERNELS_IMPLEMENTATION
#include <kvattn/kernels/kernels.hpp>
