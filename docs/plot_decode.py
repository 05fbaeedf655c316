#!/usr/bin/python3
"""Plot decode-attention time against context length, per cache storage type.

Reads the JSON that bench_attention writes and draws, for each thread count,
the time of one decode step (GQA, 32 query heads, 8 KV heads, head_dim 128)
for every storage type and the plain Eigen baseline, with the bandwidth floor
of each storage type (bytes read / read bandwidth measured in the same run)
as a dashed line. With --benchmark_repetitions, each point is the median of
the repetitions (aggregate rows are ignored).

    ./build/bench/bench_attention --benchmark_repetitions=3 \
        --benchmark_enable_random_interleaving=true \
        --benchmark_out=bench.json --benchmark_out_format=json
    /usr/bin/python3 docs/plot_decode.py bench.json docs/decode_attention.png

Needs Debian's python3-matplotlib.
"""
import json
import re
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAME = re.compile(r"BM_(Attention(?:Baseline)?)(?:<([^>]+)>)?/kv:(\d+)/ctx:(\d+)/threads:(\d+)")
LABEL = {"float": "fp32", "Eigen::bfloat16": "bf16", "Eigen::half": "f16", "std::int8_t": "int8",
         None: "plain Eigen baseline (fp32)"}


def main(src, dst):
    runs = [b for b in json.load(open(src))["benchmarks"] if b.get("run_type") != "aggregate"]
    bandwidths = defaultdict(list)  # threads -> bytes/s of each repetition
    times = defaultdict(list)  # (threads, label, ctx) -> ms of each repetition
    step_bytes = {}
    for b in runs:
        name = b["name"]
        m = re.match(r"BM_ReadBandwidth/threads:(\d+)", name)
        if m:
            bandwidths[int(m.group(1))].append(b["bytes_per_second"])
            continue
        m = NAME.match(name)
        if not m or int(m.group(3)) != 8:
            continue
        kind, storage, _, ctx, threads = m.groups()
        key = (int(threads), LABEL[storage if kind == "Attention" else None], int(ctx))
        times[key].append(b["real_time"] if b.get("time_unit") == "ms" else b["real_time"] / 1e6)
        step_bytes[key] = b.get("bytes_per_step", 0.0)
    bandwidth = {t: statistics.median(v) for t, v in bandwidths.items()}
    series = defaultdict(dict)  # (threads, label) -> {ctx: (ms, bytes)}
    for (threads, label, ctx), ms in times.items():
        series[(threads, label)][ctx] = (statistics.median(ms), step_bytes[(threads, label, ctx)])

    thread_counts = sorted({t for t, _ in series})
    fig, axes = plt.subplots(1, len(thread_counts), figsize=(6 * len(thread_counts), 4.5), squeeze=False)
    for ax, threads in zip(axes[0], thread_counts):
        for (t, label), points in sorted(series.items()):
            if t != threads:
                continue
            ctxs = sorted(points)
            line, = ax.plot(ctxs, [points[c][0] for c in ctxs], marker="o", label=label)
            if label.startswith("plain") or threads not in bandwidth:
                continue
            floor = [points[c][1] / bandwidth[threads] * 1e3 for c in ctxs]
            ax.plot(ctxs, floor, linestyle="--", color=line.get_color(), alpha=0.6)
        bw = bandwidth.get(threads, 0) / 1e9
        ax.set_title(f"{threads} thread(s); read bandwidth {bw:.1f} GB/s (dashed: floor)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("cached positions")
        ax.set_ylabel("decode attention step (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("kvattn decode attention: GQA 32/8 heads, head_dim 128")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
