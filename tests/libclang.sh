# Sourced by ./run.sh and ./tests/run.sh. RocksDB's bindings (bindgen, clang-sys) load
# libclang itself: libclang.so or libclang-N.so. A machine may already have only
# libclang-cpp, which does not count (seen on a fresh machine: the build then fails).
have_libclang() {
  ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*-linux-gnu*/libclang.so* \
    /usr/lib/*-linux-gnu*/libclang-[0-9]*.so* >/dev/null 2>&1
}
