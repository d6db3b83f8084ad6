# Sourced by ./run.sh and ./tests/run.sh. RocksDB's bindings (bindgen, clang-sys) load
# libclang itself: libclang.so or libclang-N.so. A machine may already have only
# libclang-cpp, which does not count (seen on a fresh machine: the build then fails).
# One match of any pattern is enough (`ls` of all three failed whenever one had none,
# so a machine with libclang reinstalled it on every run).
have_libclang() {
  for p in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*-linux-gnu*/libclang.so* \
    /usr/lib/*-linux-gnu*/libclang-[0-9]*.so*; do
    [ -e "$p" ] && return 0
  done
  return 1
}
