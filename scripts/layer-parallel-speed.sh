#!/usr/bin/env bash
# Layer-parallel training (--segments 2) against one process on full Fashion-MNIST: seconds per
# epoch (the run's timing.json, the epochs after the first), CPU time of the whole process tree,
# and each segment's step and exchange-wait seconds (cluster.json), in interleaved rounds.
# Usage: bash scripts/layer-parallel-speed.sh [ROUNDS] [METHOD NET...]
#   distprop (the default) on seed001-conv-distprop and 784-500-500-10: docs/results/layer-parallel-speed.md
#   bash scripts/layer-parallel-speed.sh 2 am-adam 784-500-500-10: docs/results/layer-parallel-speed-am-adam.md
# (needs Fashion-MNIST: apt-get install -y dataset-fashion-mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
method=${2:-distprop}
if [ $# -ge 3 ]; then nets=("${@:3}"); else nets=("seed001-conv-distprop" "784-500-500-10"); fi
dotnet build src/Lifting.Host -c Release --nologo -v quiet >/dev/null
lifting="dotnet src/Lifting.Host/bin/Release/net10.0/lifting.dll"
common="--data fashion-mnist --method $method --batch 128 --epochs 2 --plain --force"
work=$(mktemp -d)
if [ "$method" = distprop ]; then out=docs/results/layer-parallel-speed.md; else out=docs/results/layer-parallel-speed-$method.md; fi
configs=("one process, 1 thread|--threads 1" "one process, 2 threads|--threads 2" "2 segments in this process (threads), 1 LibTorch thread|--threads 1 --segments 2" "2 local workers of 1 thread (--workers 2 --segments 2)|--threads 1 --workers 2 --segments 2")
: > "$work/rows"
for r in $(seq 1 "$rounds"); do
  for net in "${nets[@]}"; do
    for c in "${configs[@]}"; do
      name=${c%%|*}; flags=${c#*|}
      dir="$work/run"
      /usr/bin/time -f "%e %U %S" -o "$work/time" $lifting train $common --net "$net" --out "$dir" $flags >/dev/null 2>&1
      read -r wall user sys < "$work/time"
      python3 - "$dir" "$net" "$name" "$user" "$sys" >> "$work/rows" <<'PY'
import json, os, sys
d, net, name, user, sys_ = sys.argv[1:]
t = json.load(open(f"{d}/timing.json"))["epoch_seconds"]
acc = json.load(open(f"{d}/summary.json"))["test_accuracy"]
c = json.load(open(f"{d}/cluster.json")) if os.path.exists(f"{d}/cluster.json") else None
tr = c["traffic"] if c else {}
print(json.dumps({"net": net, "config": name, "epoch": t[-1], "cpu": float(user) + float(sys_), "acc": acc,
                  "between": tr.get("bytes_between_segments_per_step"), "to": tr.get("bytes_to_segments_per_step"),
                  "steps": tr.get("steps"), "step_s": tr.get("step_seconds_by_segment"), "wait_s": tr.get("exchange_wait_seconds_by_segment"),
                  "blocks": c["plan"]["blocks"] if c else None}))
PY
      tail -1 "$work/rows"
    done
  done
done
python3 - "$work/rows" "$rounds" "$method" "${nets[@]}" > "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rounds, method, nets = sys.argv[2], sys.argv[3], sys.argv[4:]
args = "" if method == "distprop" and nets == ["seed001-conv-distprop", "784-500-500-10"] else " " + method + " " + " ".join(nets)
print(f"<!-- produced by: bash scripts/layer-parallel-speed.sh {rounds}{args} -->")
print(f"# Layer-parallel {method} against one process (full Fashion-MNIST)")
print()
exchanged = "the neighbour's codes" if method.startswith("am") else "the neighbour's gradient part"
print(f"`{method}` (its family's default settings), batch 128, 2 epochs, {rounds} interleaved rounds on a 2-core machine shared with other jobs. "
      "s/epoch: the second epoch (timing.json, the coordinator's clock, training only); CPU: user + system seconds of the whole process tree per run; "
      "ratio: one process of 1 thread over the configuration, per round, median (above 1 = faster). Segment columns from cluster.json: each segment's step seconds "
      f"over the run and, of them, the seconds spent waiting for {exchanged}. The weights of every configuration are byte-identical "
      "(tests/Lifting.Tests/DistributedTests.fs), so the test accuracy is one number per network.")
print()
print("| network | configuration | s/epoch (median) | per round | throughput × one process of 1 thread | CPU s per run | segments: blocks | segment step s (wait s) | bytes per step between segments | test acc. |")
print("|---|---|---:|---|---:|---:|---|---|---:|---:|")
for net in nets:
    base = [r for r in rows if r["net"] == net and r["config"].startswith("one process, 1 thread")]
    for config in dict.fromkeys(r["config"] for r in rows if r["net"] == net):
        rs = [r for r in rows if r["net"] == net and r["config"] == config]
        e = [r["epoch"] for r in rs]
        ratio = statistics.median(b["epoch"] / r["epoch"] for b, r in zip(base, rs))
        last = rs[-1]
        seg = " / ".join(f"{s:.1f} ({w:.1f})" for s, w in zip(last["step_s"], last["wait_s"])) if last["step_s"] else "–"
        blocks = " · ".join(last["blocks"]) if last["blocks"] else "–"
        print(f"| {net} | {config} | {statistics.median(e):.2f} | {' / '.join(f'{x:.2f}' for x in e)} | {ratio:.2f} | {statistics.median(r['cpu'] for r in rs):.1f} | {blocks} | {seg} | {last['between'] if last['between'] is not None else '–'} | {last['acc']:.4f} |")
PY
cat "$out"
rm -rf "$work"
