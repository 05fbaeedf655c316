# Cross-compiling for aarch64 Linux with Debian's g++-aarch64-linux-gnu; the
# test binaries run under qemu-aarch64 (Debian's qemu-user), also for
# gtest_discover_tests. GoogleTest is built from Debian's sources
# (/usr/src/googletest), since libgtest-dev holds host libraries only.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)  # Eigen is headers only: the host's serve
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
