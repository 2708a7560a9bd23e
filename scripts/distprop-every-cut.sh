#!/usr/bin/env bash
# Issue 25: why DistProp's default does not carry over to MLPs cut after every hidden activation.
# (1) The default's diagnostics per epoch on MNIST-10k 784-256-256-10 (seed 0, 10 epochs): the
# defaults, the means held fixed (scales learned), and the augmented term c = 1; lines of epochs 1,
# 5 and 10 into distprop-every-cut-probe.md. (2) The default against c = 1 on the five carry-over
# networks, three seeds, 20 epochs, Adam beside them. About 20 minutes on one core.
# Usage: bash scripts/distprop-every-cut.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build src/Lifting.Host -c Release --nologo -v quiet >/dev/null
dotnet build src/Lifting.Examples -c Release --nologo -v quiet >/dev/null
r=docs/results
out=$r/distprop-every-cut-probe.md
tmp=$(mktemp -d)
{
  echo "# DistProp cut after every hidden activation: diagnostics per epoch (MNIST-10k, 784-256-256-10, seed 0)"
  echo
  echo "Produced by \`bash scripts/distprop-every-cut.sh\`; each block is \`lifting train --method distprop --data mnist-10k --net 784-256-256-10 --epochs 10 --threads 1 --seed 0 SETTINGS\`, epochs 1, 5 and 10 of its output. Defects and |λ|² per cut (first/second); the diagnostics are described in \`lifting methods distprop\` and docs/methods.md (gap2: distance between the mean of block 2's output on cut 1's synthetic samples and μ_2(c); mean-distance: between two classes' means; radius1 / synthetic-radius1: root mean square distance of the real / synthetic cut-1 features to their class mean)."
  for settings in "" "--fixed-means true --fixed-scales false" "--c 1"; do
    echo
    echo "## ${settings:-defaults}"
    echo
    echo '```'
    # shellcheck disable=SC2086
    src/Lifting.Host/bin/Release/net10.0/lifting train --method distprop --data mnist-10k --net 784-256-256-10 --epochs 10 --threads 1 --seed 0 $settings --out "$tmp/run" \
      | grep -E "^epoch +(1|5|10)/" | sed -E 's/  +/ /g'
    rm -rf "$tmp/run"
    echo '```'
  done
} > $out
rm -rf "$tmp"
src/Lifting.Examples/bin/Release/net10.0/Lifting.Examples distprop-carry data=mnist-10k methods=distprop,distprop:c=1 seeds=0,1,2 epochs=20 threads=1 out=$r/distprop-augmented-carry-over-mnist-10k.md
