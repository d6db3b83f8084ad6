#!/usr/bin/env bash
# Fetches the Linux kernel that the power-cut test boots under QEMU: Debian's cloud
# kernel image and the virtio modules the guest needs (disk and network), unpacked from
# the Debian package into $EDGE_VM_DIR (default ~/.cache/edge-cloud-sync/vm). Nothing is
# installed on the host. Called by tests/run.sh; a second call is a no-op.
set -euo pipefail
dir="${EDGE_VM_DIR:-$HOME/.cache/edge-cloud-sync/vm}"
[ -f "$dir/vmlinuz" ] && [ -f "$dir/mod/virtio_net.ko" ] && exit 0
[ "$(uname -m)" = x86_64 ] || { echo "vm kernel: only x86_64 hosts are supported" >&2; exit 0; }

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
name=$(pkg)
if [ -z "$name" ]; then
  $SUDO apt-get update -qq
  name=$(pkg)
fi
[ -n "$name" ] || { echo "vm kernel: no linux-image-cloud-amd64 package found" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q "$name" 2>&1 | grep -v "unsandboxed" || true)
dpkg-deb -x "$tmp"/*.deb "$tmp/x"
mkdir -p "$dir/mod"
cp "$tmp"/x/boot/vmlinuz-* "$dir/vmlinuz"
# Load order: each module after the ones it needs (the guest has no modprobe data).
for m in drivers/virtio/virtio_ring drivers/virtio/virtio \
         drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev \
         drivers/virtio/virtio_pci drivers/block/virtio_blk net/core/failover \
         drivers/net/net_failover drivers/net/virtio_net; do
  cp "$tmp"/x/lib/modules/*/kernel/$m.ko "$dir/mod/"
  basename "$m" >> "$dir/mod/order.tmp"
done
mv "$dir/mod/order.tmp" "$dir/mod/order"
echo "vm kernel: $name in $dir"
