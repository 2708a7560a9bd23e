#!/usr/bin/env bash
# Data-parallel training on Orleans against one process: seconds per epoch (the run's timing.json,
# the epochs after the first) and the CPU time of the whole process tree, in interleaved rounds.
# Writes docs/results/distributed-speed.md. Usage: bash scripts/distributed-speed.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
dotnet build src/Lifting.Host -c Release --nologo -v quiet >/dev/null
lifting="dotnet src/Lifting.Host/bin/Release/net10.0/lifting.dll"
common="--data mnist-10k --net 784-256-10 --batch 128 --epochs 3 --plain --force"
work=$(mktemp -d)
out=docs/results/distributed-speed.md
declare -A rows
configs=("one process, 1 thread|--threads 1" "one process, 2 threads|--threads 2" "2 replicas in this process, 1 thread|--threads 1 --replicas 2" "2 local workers of 1 thread (--workers 2)|--threads 1 --workers 2")
for r in $(seq 1 "$rounds"); do
  for method in backprop pcn; do
    for c in "${configs[@]}"; do
      name=${c%%|*}; flags=${c#*|}
      dir="$work/run"
      /usr/bin/time -f "%e %U %S" -o "$work/time" $lifting train $common --method $method --out "$dir" $flags >/dev/null 2>&1 \
        || { echo "round $r  $method  $name: failed, once more"; /usr/bin/time -f "%e %U %S" -o "$work/time" $lifting train $common --method $method --out "$dir" $flags >/dev/null 2>&1; }
      read -r wall user sys < "$work/time"
      epoch=$(python3 -c "import json,statistics;t=json.load(open('$dir/timing.json'))['epoch_seconds'];print(f'{statistics.median(t[1:]):.2f}')")
      acc=$(python3 -c "import json;print(json.load(open('$dir/summary.json'))['test_accuracy'])")
      traffic=$(python3 -c "import json,os;p='$dir/cluster.json';print(json.load(open(p))['traffic']['bytes_sent_per_step']+json.load(open(p))['traffic']['bytes_received_per_step'] if os.path.exists(p) else '')")
      cpu=$(python3 -c "print(f'{$user+$sys:.1f}')")
      echo "round $r  $method  $name: ${epoch} s/epoch, process tree CPU ${cpu} s, wall ${wall} s, test ${acc}"
      rows["$method|$name"]+="$epoch $cpu $acc $traffic;"
    done
  done
done
{
  echo "<!-- produced by: bash scripts/distributed-speed.sh $rounds -->"
  echo "# Data-parallel training on Orleans against one process"
  echo
  echo "MNIST-10k, 784-256-10, batch 128, 3 epochs (LibTorch threads per process as the configuration says; a worker started by --workers takes the coordinator's --threads), $(nproc) cores shared with other jobs; $rounds interleaved rounds (every configuration once per round). Seconds per epoch: the median over rounds of each run's median epoch after the first (from timing.json, the coordinator's clock); CPU: user + system time of the whole process tree (coordinator and workers), median over rounds. Traffic: message payloads per step, both directions, all replicas (cluster.json)."
  echo
  echo "| method | configuration | s/epoch (median) | per round | × one process | CPU s per run (median) | test acc. (round 1) | bytes per step |"
  echo "|---|---|---:|---|---:|---:|---:|---:|"
  for method in backprop pcn; do
    base=""
    for c in "${configs[@]}"; do
      name=${c%%|*}
      python3 - "$method" "$name" "${rows[$method|$name]}" "${rows[$method|one process, 1 thread]}" <<'PY'
import sys, statistics
method, name, data, base = sys.argv[1:]
def parse(s): return [x.split() for x in s.strip(';').split(';')]
runs, ref = parse(data), parse(base)
e = [float(x[0]) for x in runs]; c = [float(x[1]) for x in runs]; b = [float(x[0]) for x in ref]
ratios = sorted(x / y for x, y in zip(e, b))
traffic = runs[0][3] if len(runs[0]) > 3 else "–"
print(f"| {method} | {name} | {statistics.median(e):.2f} | {' / '.join(f'{x:.2f}' for x in e)} | {ratios[len(ratios)//2]:.2f} | {statistics.median(c):.1f} | {float(runs[0][2]):.4f} | {traffic} |")
PY
    done
  done
} > "$out"
cat "$out"
rm -rf "$work"
