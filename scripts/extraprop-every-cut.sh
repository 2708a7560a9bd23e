#!/usr/bin/env bash
# Issue 30: why ExtraProp fails on the depth ladder's 5-layer plain ReLU net cut after every layer
# (MNIST-10k, width 128, 5 epochs, batch 64, the ladder's settings), three seeds, backprop in the
# same script. Table 1: the default against smaller state and multiplier steps, the augmented
# Lagrangian and AdaGrad on the rows (is it the steps?). Table 2: 20 epochs at halved steps, with
# the forward pass's training loss beside the loss at the stored states (is it biased once stable?).
# Then the augmented Lagrangian (c = 1) on the carry-over networks, the home network and the
# ladder. About 45 minutes on one core.
# Usage: bash scripts/extraprop-every-cut.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build src/Lifting.Examples -c Release --nologo -v quiet >/dev/null
run() { src/Lifting.Examples/bin/Release/net10.0/Lifting.Examples "$@"; }
r=docs/results
net=flatten/dense:128/relu/cut/dense:128/relu/cut/dense:128/relu/cut/dense:128/relu/cut/dense:128/relu/cut/dense:10
halved="lr-states=0.25;lr-multipliers=0.5"

run distprop-table threads=1 seeds=0,1,2 epochs=5 batch=64 losses=true out=$r/extraprop-every-cut-5-layers.md rows="\
Backprop=backprop@$net,\
ExtraProp=extraprop@$net,\
halved steps=extraprop:$halved@$net,\
quartered steps=extraprop:lr-states=0.125;lr-multipliers=0.25@$net,\
augmented c 1=extraprop:c=1@$net,\
augmented c 1 halved=extraprop:c=1;$halved@$net,\
augmented c 10=extraprop:c=10@$net,\
AdaGrad rows=extraprop:optimizer-states=adagrad;optimizer-multipliers=adagrad@$net"

run distprop-table threads=1 seeds=0,1,2 epochs=20 batch=64 losses=true out=$r/extraprop-every-cut-5-layers-20-epochs.md rows="\
Backprop=backprop@$net,\
halved steps=extraprop:$halved@$net"

# The augmented Lagrangian's term (c = 1) at ExtraProp's other defaults: on the five carry-over
# networks (cut after every hidden activation), on ExtraProp's home network, and on the ladder.
run distprop-carry data=mnist-10k methods=extraprop,extraprop:c=1 seeds=0,1,2 epochs=20 threads=1 out=$r/extraprop-augmented-carry-over-mnist-10k.md
run distprop-table threads=1 seeds=0,1,2 epochs=50 batch=128 losses=true out=$r/extraprop-augmented-784-256-10-mnist-10k.md \
  "rows=Adam (backprop)=backprop@784-256-10,ExtraProp=extraprop@784-256-10,ExtraProp c 1=extraprop:c=1@784-256-10"
run depth ladder methods=backprop,extraprop,extraprop:c=1 cuts=every plain=5,10,20 residual=8,32 activations=relu seeds=0 threads=1 \
  state=$r/depth-ladder-extraprop-augmented.jsonl out=$r/depth-ladder-extraprop-augmented.md
rm -f $r/extraprop-*.md.json
