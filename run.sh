#!/usr/bin/env bash
# Runs the appliance on this machine with the shipped configs: the cloud (Kafka on
# 127.0.0.1:9092) and, when built, an edge (MQTT in, replicating to that cloud).
# Installs the build prerequisites on a fresh Debian/Ubuntu machine. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-cloud-sync/target}"
. tests/libclang.sh
if ! have_libclang; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libclang-dev clang >/dev/null
fi
# The first build compiles RocksDB from source (about 30 minutes on two cores). Build
# exactly what ./tests/run.sh builds: another package selection unifies dependency
# features differently and would compile RocksDB a second time.
cargo build --workspace --all-targets
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
"$CARGO_TARGET_DIR/debug/cloud" --config configs/cloud.yaml &
pids+=($!)
if [ -f configs/edge.yaml ] && [ -x "$CARGO_TARGET_DIR/debug/edge" ]; then
  "$CARGO_TARGET_DIR/debug/edge" --config configs/edge.yaml &
  pids+=($!)
fi
wait
