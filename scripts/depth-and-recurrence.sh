#!/usr/bin/env bash
# Issue 30's experiments, exactly as run for docs/results/depth-ladder*.md and rnn-seqmnist-*.md
# (and docs/methods.md, "Depth and recurrence"). Every command appends its cells to a JSON-lines
# state file and skips the cells already there, so the script resumes where it stopped; the last
# commands only render the tables and plots from the state files. About 4 hours on 2 cores.
# Usage: bash scripts/depth-and-recurrence.sh   (Fashion-MNIST: apt-get install -y dataset-fashion-mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build src/Lifting.Examples -c Release --nologo -v quiet >/dev/null
run() { src/Lifting.Examples/bin/Release/net10.0/Lifting.Examples "$@"; }
r=docs/results

# The depth ladder on MNIST-10k: one seed everywhere, three where docs/methods.md quotes ± .
mnist="activations=relu threads=1 state=$r/depth-ladder.jsonl out=$r/depth-ladder.md"
run depth ladder plain=none residual=32 $mnist methods=backprop,backprop:init=he,pcn,am-adam,distprop,lpom,fenchel-bp,extraprop cuts=last,every seeds=0
run depth ladder plain=none residual=128 $mnist methods=backprop,backprop:init=he,pcn,am-adam,distprop,lpom,fenchel-bp,extraprop cuts=last seeds=0
run depth ladder plain=none residual=8 $mnist methods=backprop,backprop:init=he,pcn,am-adam,distprop,lpom,fenchel-bp,extraprop cuts=last,every,every5 seeds=0
run depth ladder plain=none residual=32 $mnist methods=extraprop,distprop,am-adam,pcn,lpom cuts=every5 seeds=0
run depth ladder plain=none residual=32 $mnist methods=backprop,pcn,am-adam,distprop,lpom,fenchel-bp,extraprop cuts=last seeds=1,2
run depth ladder plain=none residual=32,128 $mnist "methods=epc,dual-prop" cuts=last,every seeds=0
run depth ladder plain=5,10,20 residual=none $mnist methods=backprop,backprop:init=he,extraprop,distprop,am-adam,pcn,lpom,fenchel-bp cuts=last,every seeds=0
run depth ladder plain=5,10,20 residual=none $mnist methods=extraprop,distprop,am-adam,pcn,lpom cuts=every5 seeds=0
run depth ladder plain=20 residual=none $mnist "methods=pcn:init=he,lpom:init=he,distprop:init=he,am-adam:init=he,fenchel-bp:init=he,extraprop:init=he" cuts=last,every seeds=0
run depth ladder plain=50 residual=none $mnist "methods=backprop,backprop:init=he,pcn:init=he,am-adam:init=he,distprop:init=he,lpom:init=he,fenchel-bp:init=he,extraprop:init=he" cuts=last seeds=0
run depth ladder plain=50 residual=none $mnist "methods=backprop:init=he;lr=0.0003,backprop:init=he;lr=0.0001,pcn:init=he,lpom:init=he,distprop:init=he,am-adam:init=he,fenchel-bp:init=he,extraprop:init=he" cuts=every5,every seeds=0
run depth ladder plain=100 residual=none $mnist "methods=backprop,backprop:init=he,backprop:init=he;lr=0.0001,pcn:init=he,lpom:init=he,distprop:init=he,am-adam:init=he,fenchel-bp:init=he,extraprop:init=he" cuts=last seeds=0
run depth ladder plain=50,100 residual=none $mnist "methods=backprop:init=he;lr=0.00003,pcn:init=he;lr=0.0001,lpom:init=he;lr=0.0001,fenchel-bp:init=he;lr=0.0001,am-adam:init=he;lr=0.0001,distprop:init=he;lr=0.0001" cuts=last seeds=0
run depth ladder plain=20,50 residual=none $mnist "methods=epc:init=he,dual-prop:init=he" cuts=every,last seeds=0
run depth ladder plain=20 residual=none $mnist "methods=pcn:init=he;inference-steps=100" cuts=every seeds=0
run depth ladder plain=100 residual=none $mnist "methods=pcn:init=he;lr=0.0001;beta=0.01,pcn:init=he;lr=0.0001;beta=1,backprop:init=he;lr=0.0003,pcn:init=he;lr=0.0003" cuts=last seeds=0
run depth ladder plain=100 residual=none $mnist "methods=backprop:init=he;lr=0.0001,pcn:init=he;lr=0.0001,lpom:init=he;lr=0.0001" cuts=last seeds=1,2
run depth ladder plain=50 residual=none $mnist "methods=backprop:init=he;lr=0.0001,fenchel-bp:init=he;lr=0.0001,pcn:init=he;lr=0.0001" cuts=last seeds=1,2
run depth ladder plain=5,10,20,50 residual=none activations=tanh methods=backprop,backprop:init=glorot,extraprop,distprop,am-adam,pcn,lpom,fenchel-bp cuts=last,every seeds=0 threads=1 state=$r/depth-ladder.jsonl out=$r/depth-ladder.md
# ExtraProp: multipliers started at the adjoint, and its weight schedule, where it misses.
adjoint="activations=relu threads=1 state=$r/depth-ladder.jsonl out=$r/depth-ladder.md"
run depth ladder plain=none residual=32 $adjoint "methods=extraprop:adjoint-init=true" cuts=last seeds=0,1,2
run depth ladder plain=none residual=8,128 $adjoint "methods=extraprop:adjoint-init=true" cuts=last seeds=0
run depth ladder plain=10 residual=none $adjoint "methods=extraprop:adjoint-init=true" cuts=last,every seeds=0
run depth ladder plain=20 residual=none $adjoint "methods=extraprop:init=he;adjoint-init=true" cuts=last seeds=0
run depth ladder plain=5 residual=none $adjoint "methods=extraprop:adjoint-init=true" cuts=every seeds=0
run depth ladder plain=none residual=32 $adjoint "methods=extraprop:settle=0,extraprop:lr=0.001;schedule=constant;settle=0,extraprop:lr-states=0.25;lr-multipliers=0.5" cuts=last seeds=0
# ePC with its output-displacement cap (max-shift 0.01, the default since it was added); the epc
# cells of depth-ladder.jsonl ran before it (max-shift=0).
epc="activations=relu threads=1 state=$r/depth-ladder-epc-max-shift.jsonl out=$r/depth-ladder-epc-max-shift.md"
run depth ladder plain=20,50 residual=none $epc "methods=epc:init=he" cuts=every,last seeds=0
run depth ladder plain=none residual=32,128 $epc "methods=epc" cuts=last,every seeds=0
run depth ladder train=false state=$r/depth-ladder-epc-max-shift.jsonl out=$r/depth-ladder-epc-max-shift.md

run depth ladder train=false state=$r/depth-ladder.jsonl out=$r/depth-ladder.md

# ExtraProp on the 32-block residual MLP for 20 epochs instead of 5.
run depth ladder plain=none residual=32 activations=relu methods=backprop,extraprop cuts=last epochs=20 seeds=0 threads=1 state=$r/depth-ladder-20-epochs.jsonl out=$r/depth-ladder-20-epochs.md

# The 32-block residual and 20-layer plain rows on full Fashion-MNIST.
fashion="data=fashion-mnist activations=relu seeds=0 threads=1 state=$r/depth-ladder-fashion.jsonl out=$r/depth-ladder-fashion.md"
run depth ladder plain=none residual=32 $fashion methods=backprop,pcn,am-adam,distprop,lpom,fenchel-bp,extraprop cuts=last
run depth ladder plain=20 residual=none $fashion "methods=backprop,backprop:init=he,pcn:init=he,am-adam:init=he,distprop:init=he,lpom:init=he,fenchel-bp:init=he,extraprop:init=he" cuts=last
for seed in 1 2; do
  fashion="data=fashion-mnist activations=relu seeds=$seed threads=1 state=$r/depth-ladder-fashion.jsonl out=$r/depth-ladder-fashion.md"
  run depth ladder plain=none residual=32 $fashion methods=backprop,pcn,am-adam,distprop,lpom,fenchel-bp,extraprop cuts=last
  run depth ladder plain=20 residual=none $fashion "methods=backprop:init=he,pcn:init=he,am-adam:init=he,distprop:init=he,lpom:init=he,fenchel-bp:init=he,extraprop:init=he" cuts=last
done

# Seed 004 appendix C: the Elman RNN row by row (28 steps) and pixel by pixel (784 steps), batch 128.
rows="values=28 batch=128 epochs=10 threads=1 state=$r/rnn-seqmnist-rows.jsonl out=$r/rnn-seqmnist-rows.md"
run rnn seqmnist $rows hidden=15,50 seeds=0,1,2 methods=sgd,adam,am-adam cuts=1
run rnn seqmnist $rows hidden=50 seeds=0,1,2 methods=am-adam cuts=7,0
run rnn seqmnist $rows hidden=50 seeds=0 methods=backprop,pcn,lpom,fenchel-bp cuts=1,0
run rnn seqmnist $rows hidden=50 seeds=0 methods=distprop cuts=0
run rnn seqmnist $rows hidden=50 seeds=0 methods=extraprop cuts=1,0
run rnn seqmnist train=false values=28 batch=128 state=$r/rnn-seqmnist-rows.jsonl out=$r/rnn-seqmnist-rows.md
run rnn seqmnist values=28 batch=128 hidden=50 seeds=0,1,2 methods=adam epochs=50 threads=1 state=$r/rnn-seqmnist-rows-adam-50-epochs.jsonl out=$r/rnn-seqmnist-rows-adam-50-epochs.md
pixels="values=1 batch=128 hidden=50 epochs=10 threads=1 state=$r/rnn-seqmnist-pixels.jsonl out=$r/rnn-seqmnist-pixels.md"
run rnn seqmnist $pixels seeds=0 methods=adam,am-adam,sgd cuts=1
run rnn seqmnist $pixels seeds=0 "methods=backprop:lr=0.05,backprop:lr=0.0005,backprop:lr=0.00005,backprop:optimizer=constant;lr=0.5,backprop:optimizer=constant;lr=0.005"
run rnn seqmnist $pixels seeds=1,2 methods=adam,sgd
# Gradient clipping (the step rules' clip-norm), and the RNN lifted at every 28th pixel (a code per image row).
run rnn seqmnist $pixels seeds=0 "methods=backprop:lr=0.001;clip-norm=1,backprop:lr=0.005;clip-norm=1"
run rnn seqmnist $pixels seeds=0 methods=am-adam cuts=28
run rnn seqmnist train=false values=1 batch=128 state=$r/rnn-seqmnist-pixels.jsonl out=$r/rnn-seqmnist-pixels.md
