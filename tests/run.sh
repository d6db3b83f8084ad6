#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Debian and
# PyPI packages), builds, runs the Rust tests, then the system tests with real clients.
#   ./tests/run.sh            everything
#   ./tests/run.sh -k kcat    pass arguments through to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outside the checkout so later runs on this machine reuse the RocksDB build
# (about 30 minutes of C++ on two cores the first time).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-cloud-sync/target}"
export CARGO_TERM_COLOR=never

need_apt=()
command -v kcat >/dev/null || need_apt+=(kcat)
command -v mosquitto >/dev/null || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
# The power-cut test boots the edge in a QEMU virtual machine (tests/python/vm.py).
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
command -v busybox >/dev/null || need_apt+=(busybox-static)
# KafkaJS (tests/js) runs on Node.js.
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
. tests/libclang.sh
have_libclang || need_apt+=(libclang-dev clang)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
echo "==> fetching the power-cut test's guest kernel (once)"
./tests/vm/kernel.sh
echo "==> installing Python test packages"
python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
echo "==> installing Node.js test packages (KafkaJS)"
npm ci --prefix tests/js --no-audit --no-fund --loglevel=error

echo "==> building"
cargo build --workspace --all-targets

# The fuzz targets (fuzz/, their own workspace) include decoder sources by path; a
# change there must not leave them uncompilable (cargo-fuzz and nightly only run them).
echo "==> checking that the fuzz targets compile"
cargo check --manifest-path fuzz/Cargo.toml --bins

# Module docs are where the durability steps and layouts are written down: their links
# must resolve.
echo "==> checking the docs (rustdoc warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

echo "==> Rust tests"
cargo test --workspace

echo "==> system tests (real clients)"
export CLOUD_BIN="$CARGO_TARGET_DIR/debug/cloud"
export EDGE_BIN="$CARGO_TARGET_DIR/debug/edge"
python3 -m pytest tests/python -q -p no:cacheprovider "$@"
