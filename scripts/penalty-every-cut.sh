#!/usr/bin/env bash
# Issue 25: why the penalty's default (MAC/BlockProp: μ from 1, ×1.5 per epoch, 5 Adam state steps
# per weight step) falls 9.5 points behind Adam on the carry-over network 784-256-256-10 cut after
# every hidden activation (MNIST-10k, 20 epochs, batch 128, three seeds, backprop in the same
# script), with the forward pass's training loss beside the loss at the stored states. Rows: the
# default; μ held at 1 (is it μ's growth?); μ capped at 10 (is it a large μ's conditioning?); 4x
# the state steps and a 10x state step (are the states under-solved when the weights move?).
# Then each batch's states started at the forward pass (restart-states), here and on the five
# carry-over networks. About an hour on one core.
# Usage: bash scripts/penalty-every-cut.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${LIFTING_EXAMPLES:-}" ] || dotnet build src/Lifting.Examples -c Release --nologo -v quiet >/dev/null
run() { ${LIFTING_EXAMPLES:-src/Lifting.Examples/bin/Release/net10.0/Lifting.Examples} "$@"; }
r=docs/results
net=flatten/dense:256/relu/cut/dense:256/relu/cut/dense:10

run distprop-table threads=1 seeds=0,1,2 epochs=20 batch=128 losses=true out=$r/penalty-every-cut-784-256-256-10.md rows="\
Backprop=backprop@$net,\
Penalty=penalty@$net,\
mu held at 1=penalty:mu-growth=1@$net,\
mu at most 10=penalty:mu-max=10@$net,\
20 state steps=penalty:state-steps=20@$net,\
state step 0.1=penalty:lr-states=0.1@$net"
# The same network with each batch's states started at the forward pass (restart-states): do the
# stored states drift? Then that setting on the five carry-over networks.
run distprop-table threads=1 seeds=0,1,2 epochs=20 batch=128 losses=true out=$r/penalty-every-cut-restart-784-256-256-10.md rows="\
Backprop=backprop@$net,\
restarted=penalty:restart-states=true@$net,\
restarted 20 state steps=penalty:restart-states=true;state-steps=20@$net"
# Restarted, with plain gradient steps on the states at a fixed μ = 1 (Adam's steps ignore μ's scale).
run distprop-table threads=1 seeds=0,1,2 epochs=20 batch=128 losses=true out=$r/penalty-every-cut-restart-gd-784-256-256-10.md rows="\
restarted GD 0.2 mu 1=penalty:restart-states=true;state-steps=20;optimizer-states=constant;lr-states=0.2;mu-growth=1@$net,\
restarted GD 0.5 mu 1=penalty:restart-states=true;state-steps=20;optimizer-states=constant;lr-states=0.5;mu-growth=1@$net"
run distprop-carry data=mnist-10k "methods=penalty:restart-states=true;state-steps=20" seeds=0,1,2 epochs=20 threads=1 out=$r/penalty-restart-carry-over-mnist-10k.md
rm -f $r/penalty-*.md.json
