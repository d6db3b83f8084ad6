#!/usr/bin/env bash
# Builds the edge for ARM gateways without Docker (Debian/Ubuntu build machine), end to end:
# installs the cross compilers, qemu and the Rust targets if missing, builds the release
# binaries, checks that RocksDB is not linked, and leaves stripped copies ready to copy.
#
#   cross/build.sh                 both targets (aarch64, armv7)
#   cross/build.sh aarch64-unknown-linux-gnu
#   cross/build.sh --test          also run the edge's unit tests under qemu (each target)
#   cross/build.sh --zig           also build for glibc 2.17 with cargo-zigbuild (both
#                                  targets exercised on the reference machine)
#
# Linkers and qemu runners come from .cargo/config.toml. Artifacts:
#   $CARGO_TARGET_DIR/<triple>/release/edge       as built
#   $CARGO_TARGET_DIR/edge-dist/edge-<triple>     stripped, what goes on the gateway
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR=never

run_tests=0
zig=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --test) run_tests=1 ;;
    --zig) zig=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    aarch64-unknown-linux-gnu|armv7-unknown-linux-gnueabihf) targets+=("$arg") ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# GNU tool prefix of each target (also what .cargo/config.toml names as linker).
prefix() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
  esac
}
qemu() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo qemu-aarch64-static ;;
    armv7-unknown-linux-gnueabihf) echo qemu-arm-static ;;
  esac
}

need_apt=()
for t in "${targets[@]}"; do
  p=$(prefix "$t")
  command -v "$p-gcc" >/dev/null || need_apt+=("gcc-$p")
done
command -v qemu-aarch64-static >/dev/null || need_apt+=(qemu-user-static)
command -v readelf >/dev/null || need_apt+=(binutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

dist="$CARGO_TARGET_DIR/edge-dist"
mkdir -p "$dist"
report=()
for t in "${targets[@]}"; do
  p=$(prefix "$t")
  echo "==> $t: checking the dependency tree"
  if cargo tree -p edge -e normal,build --target "$t" --prefix none | grep -i rocksdb; then
    echo "FAIL: the edge depends on RocksDB for $t" >&2
    exit 1
  fi

  echo "==> $t: cargo build -p edge --release"
  start=$(date +%s)
  cargo build -p edge --release --locked --target "$t"
  secs=$(( $(date +%s) - start ))
  bin="$CARGO_TARGET_DIR/$t/release/edge"
  out="$dist/edge-$t"
  "$p-strip" -o "$out" "$bin"

  echo "==> $t: checking the binary"
  if "$p-nm" "$bin" | grep -qi rocksdb; then
    echo "FAIL: RocksDB symbols in $bin" >&2
    exit 1
  fi
  needed=$("$p-readelf" -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
  case "$needed" in
    *rocksdb*|*stdc++*) echo "FAIL: $bin needs $needed" >&2; exit 1 ;;
  esac
  glibc=$("$p-objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  if [ -d "/usr/$p/lib" ]; then
    # MALLOC_ARENA_MAX set: the edge's re-exec (see edge/src/main.rs) cannot start a
    # foreign binary under qemu-user (glibc's execvp would hand it to /bin/sh).
    MALLOC_ARENA_MAX=2 "$(qemu "$t")" -L "/usr/$p" "$out" --help | grep -q '^usage: edge' \
      || { echo "FAIL: $out does not run under $(qemu "$t")" >&2; exit 1; }
  fi
  report+=("$(printf '%-32s %9s bytes (stripped %s bytes)  needs %s %s  built in %ss\n    %s' \
    "$t" "$(stat -c %s "$bin")" "$(stat -c %s "$out")" "$needed" "$glibc" "$secs" "$out")")
done

if [ "$run_tests" = 1 ]; then
  for t in "${targets[@]}"; do
    echo "==> unit tests of the edge under qemu ($t)"
    # --release reuses the dependencies just built (dev would compile them all again).
    cargo test -p edge --release --locked --target "$t"
  done
fi

if [ "$zig" = 1 ]; then
  echo "==> cargo-zigbuild for glibc 2.17"
  # Both ship as PyPI wheels (zig itself, and a prebuilt cargo-zigbuild): seconds, not
  # the minutes `cargo install cargo-zigbuild` compiles for.
  python3 -m pip install -q --disable-pip-version-check ziglang cargo-zigbuild
  for t in "${targets[@]}"; do
    cargo zigbuild -p edge --release --locked --target "$t.2.17"
    bin="$CARGO_TARGET_DIR/$t/release/edge"
    out="$dist/edge-$t-glibc2.17"
    "$(prefix "$t")-strip" -o "$out" "$bin"
    glibc=$("$(prefix "$t")-objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
    report+=("$(printf '%-32s stripped %s bytes  needs %s\n    %s' \
      "$t.2.17" "$(stat -c %s "$out")" "$glibc" "$out")")
  done
fi

echo
echo "==> edge artifacts"
printf '%s\n' "${report[@]}"
