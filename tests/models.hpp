#pragma once
// Where the shared real checkpoints live (KVATTN_MODELS_DIR, set by CMake to
// ../shared/models beside the source tree), and a skip when they are absent.

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

namespace test {

inline std::string models_dir() { return KVATTN_MODELS_DIR; }
inline std::string model_path(const std::string& file) { return models_dir() + "/" + file; }
inline bool have_models() {
  return std::filesystem::exists(model_path("aidreams260K.bin")) &&
         std::filesystem::exists(model_path("stories260K.bin")) &&
         std::filesystem::exists(model_path("tok512.bin"));
}

}  // namespace test

#define KVATTN_REQUIRE_MODELS()                                                     \
  do {                                                                              \
    if (!test::have_models()) {                                                     \
      GTEST_SKIP() << "shared checkpoints not found in " << test::models_dir()      \
                   << " (aidreams260K.bin, stories260K.bin, tok512.bin); skipping"; \
    }                                                                               \
  } while (false)
