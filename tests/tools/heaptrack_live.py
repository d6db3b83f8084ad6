#!/usr/bin/env python3
"""Live heap of a heaptrack trace at chosen moments, and what changed between them.

heaptrack_print reports peaks and what was alive at exit, not what was alive at a given
time; this reads the trace itself (heaptrack's interpreted format, zstd-compressed, as
`heaptrack_interpret | zstd` writes it) and counts live bytes per allocation stack at
each requested second since the program started.

    heaptrack_live.py TRACE.zst T1 T2            # what grew or shrank from T1 to T2
    heaptrack_live.py TRACE.zst T1 --vs OTHER.zst T0   # TRACE at T1 against OTHER at T0
    heaptrack_live.py TRACE.zst --rss            # the RSS samples, to pick the moments

Stacks are compared by their first few frames outside the allocator, so two traces of
the same binary can be compared. Recording the edge under edge-bench without changing
its pid (the `heaptrack` script would run it as a child), as an EDGE_BIN wrapper:

    mkfifo /tmp/ht/fifo
    (/usr/lib/heaptrack/libexec/heaptrack_interpret < /tmp/ht/fifo | zstd -q > TRACE.zst) &
    export MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=131072   # the edge's own settings
    exec env LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so \\
        DUMP_HEAPTRACK_OUTPUT=/tmp/ht/fifo path/to/edge "$@"
"""

import collections
import subprocess
import sys

# Frames that only say "an allocation happened".
ALLOCATOR = ("alloc::", "RawVec", "grow", "__rust", "malloc", "realloc", "with_capacity",
             "reserve", "sys5alloc")


def read(path, moments, rss=False):
    """Live allocation counts per allocation-info index at each moment (seconds)."""
    infos, strings, ips, traces = [], [], {}, {}
    live = collections.Counter()
    snaps, t = {}, 0.0
    pending = sorted(moments)
    with subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE,
                          bufsize=1 << 20) as p:
        for line in p.stdout:
            c = line[0]
            if c == 43:  # "+ <info>": an allocation
                live[int(line[2:], 16)] += 1
            elif c == 45:  # "- <info>": a free
                live[int(line[2:], 16)] -= 1
            elif c == 97:  # "a <size> <trace>"
                _, size, trace = line.split()
                infos.append((int(size, 16), int(trace, 16)))
            elif c == 99:  # "c <ms>": time
                t = int(line[2:], 16) / 1000
                while pending and t >= pending[0]:
                    snaps[pending.pop(0)] = +live
            elif c == 82 and rss:  # "R <pages>"
                print(f"{t:8.1f} s  rss {int(line[2:], 16) * 4096 / 1048576:6.1f} MB")
            elif c == 115:  # "s <len> <string>"
                parts = line[2:].rstrip(b"\n").split(b" ", 1)
                strings.append(parts[1] if len(parts) > 1 else b"")
            elif c == 105:  # "i <ip> <module> [<function> <file> <line>]..."
                ips[len(ips) + 1] = line.split()
            elif c == 116:  # "t <ip> <parent trace>"
                _, ip, parent = line.split()
                traces[len(traces) + 1] = (int(ip, 16), int(parent, 16))
    for m in pending:
        snaps[m] = +live

    def text(i):
        return strings[i - 1].decode(errors="replace") if 0 < i <= len(strings) else "?"

    names = {}

    def stack(trace):
        if trace in names:
            return names[trace]
        frames, x = [], trace
        while x and len(frames) < 5:
            ip, x = traces[x]
            fields = ips.get(ip, [])[3:]
            # One function/file/line triple, then those of the functions inlined into it.
            for f in reversed([fields[i:i + 3] for i in range(0, len(fields), 3)]):
                if len(f) == 3:
                    name = text(int(f[0], 16))
                    if not any(a in name for a in ALLOCATOR):
                        where = text(int(f[1], 16)).rsplit("/", 1)[-1]
                        frames.append(f"{name[:60]} ({where}:{int(f[2], 16)})")
        names[trace] = "\n      < ".join(frames[:5])
        return names[trace]

    out = {}
    for m, counts in snaps.items():
        by_stack = collections.Counter()
        for info, n in counts.items():
            size, trace = infos[info]
            by_stack[stack(trace)] += size * n
        out[m] = by_stack
    return out


def report(a, b, label):
    print(f"{label}: live heap {sum(a.values()) / 1e6:.2f} -> {sum(b.values()) / 1e6:.2f} MB")
    diff = {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)}
    for k, v in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:12]:
        print(f"\n{v / 1e6:+7.2f} MB ({a.get(k, 0) / 1e6:.2f} -> {b.get(k, 0) / 1e6:.2f})\n      {k}")


def main(args):
    if len(args) == 2 and args[1] == "--rss":
        read(args[0], [], rss=True)
    elif len(args) == 5 and args[2] == "--vs":
        here = read(args[0], [float(args[1])])[float(args[1])]
        there = read(args[3], [float(args[4])])[float(args[4])]
        report(there, here, f"{args[3]} at {args[4]} s -> {args[0]} at {args[1]} s")
    elif len(args) == 3:
        t1, t2 = float(args[1]), float(args[2])
        snaps = read(args[0], [t1, t2])
        report(snaps[t1], snaps[t2], f"{args[0]}, {t1} -> {t2} s")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
