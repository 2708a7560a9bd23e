#!/usr/bin/env bash
# Issue 25 item 3: does every family's default carry over to networks nobody tuned it for?
# Each family's representative (the * of `lifting methods`) at its catalog defaults beside
# back-propagation (Adam) on the five carry-over networks on MNIST-10k (two and three hidden
# layers of 256, ReLU and tanh, the builder's default cut after every hidden activation, and seed
# 001's conv net) and on the UCI digits (the four MLPs), three seeds, at most 20 epochs,
# validation-selected test accuracy. About an hour on one core. (With one cut before the last
# layer, ExtraProp's and DistProp's defaults were measured earlier: extraprop-carry-over-late-cut.md,
# distprop-fixed-scale-adam-carry-over-late-cut.md.)
# Usage: bash scripts/carry-over.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build src/Lifting.Examples -c Release --nologo -v quiet >/dev/null
run() { src/Lifting.Examples/bin/Release/net10.0/Lifting.Examples "$@"; }
r=docs/results
defaults=extraprop,penalty,fenchel-bp,distprop,am-adam,fa,dsn,dtp
mlps=dense:256/relu/dense:256/relu/dense:10,dense:256/tanh/dense:256/tanh/dense:10,dense:256/relu/dense:256/relu/dense:256/relu/dense:10,dense:256/tanh/dense:256/tanh/dense:256/tanh/dense:10

run distprop-carry data=mnist-10k methods=$defaults seeds=0,1,2 epochs=20 threads=1 out=$r/carry-over-defaults-mnist-10k.md
run distprop-carry data=digits nets=$mlps methods=$defaults seeds=0,1,2 epochs=20 threads=1 out=$r/carry-over-defaults-digits.md
# The penalty with one cut before the last layer (ExtraProp's and DistProp's were measured before).
late=dense:256/relu/dense:256/relu/cut/dense:10,dense:256/tanh/dense:256/tanh/cut/dense:10,dense:256/relu/dense:256/relu/dense:256/relu/cut/dense:10,dense:256/tanh/dense:256/tanh/dense:256/tanh/cut/dense:10,conv:6:5:1:2/relu/maxpool:2/conv:16:5/relu/maxpool:2/flatten/dense:120/relu/dense:84/relu/cut/dense:10
run distprop-carry data=mnist-10k nets=$late methods=penalty seeds=0,1,2 epochs=20 threads=1 out=$r/penalty-carry-over-late-cut.md
