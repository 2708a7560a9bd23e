module Lifting.Tests.DistributedTests

open System
open System.IO
open System.Text.Json
open Expecto
open Lifting.Storage
open Lifting.Tests.Support
open Lifting.Tests.HostTests

/// The weights file of a run folder as (name, values) pairs.
let weightsOf (dir: string) =
    use file = SafeTensors.Load(Path.Combine(dir, "weights.safetensors"))
    [ for t in file.Tensors -> t.Name, t.Value.to_type(TorchSharp.torch.ScalarType.Float64).data<float>().ToArray() ]

/// The largest |a − b| over every weight of two runs.
let largestDifference (a: string) (b: string) =
    List.zip (weightsOf a) (weightsOf b)
    |> List.map (fun ((n1, x), (n2, y)) ->
        if n1 <> n2 || x.Length <> y.Length then failwith $"different weights {n1} / {n2}"
        Array.map2 (fun u v -> abs (u - v)) x y |> Array.fold max 0.0)
    |> List.fold max 0.0

let sameBytes (a: string) (b: string) =
    File.ReadAllBytes(Path.Combine(a, "weights.safetensors")) = File.ReadAllBytes(Path.Combine(b, "weights.safetensors"))

let run (args: string list) (dir: string) =
    let code, out, err = lifting ([ "train"; "--data"; "digits"; "--threads"; "1"; "--plain"; "--out"; dir ] @ args)
    if code <> 0 then failwith $"lifting train {String.Join(' ', args)} exited {code}: {err} {out}"
    out

let clusterJson (dir: string) = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "cluster.json"))).RootElement

/// cluster.json's events as (epoch, text).
let clusterEvents (dir: string) =
    [ for e in (clusterJson dir).GetProperty("events").EnumerateArray() -> e.GetProperty("epoch").GetInt32(), string (e.GetProperty("text").GetString()) ]

/// The process ids of cluster.json's layout (one per replica or segment).
let layoutPids (dir: string) = [ for r in (clusterJson dir).GetProperty("layout").EnumerateArray() -> r.GetProperty("pid").GetInt32() ]

/// Trains `flags` in one process and with each of `segments` in-process segments (layer-parallel);
/// `check single split k` compares the run folders.
let againstSegments (flags: string list) (segments: string list) (check: string -> string -> string -> unit) =
    let single = scratchDir "single"
    run flags single |> ignore
    for k in segments do
        let split = scratchDir "segments"
        let out = run (flags @ [ "--segments"; k ]) split
        Expect.stringContains out $"layer-parallel, {k} segments in this process" "the header names the split"
        check single split k

let sameWeights (single: string) (split: string) (k: string) =
    Expect.isTrue (sameBytes single split) $"{k} segments: the one-process weights, byte for byte"

/// cluster.json's plan: each segment's blocks.
let planBlocks (dir: string) = [ for b in (clusterJson dir).GetProperty("plan").GetProperty("blocks").EnumerateArray() -> b.GetString() ]

let bytesBetween (dir: string) = (clusterJson dir).GetProperty("traffic").GetProperty("bytes_between_segments_per_step").GetInt64()

/// The bytes between segments per step are `payload` (full batches) plus at most `headers`, and
/// more than 90 % of `payload` (the epoch's last batch is smaller).
let crossPerStep (dir: string) (payload: int64) (headers: int64) (what: string) =
    let between = bytesBetween dir
    Expect.isLessThan between (payload + headers) $"only {what} cross ({between} bytes per step)"
    Expect.isGreaterThan between (payload * 9L / 10L) $"{what} cross ({between} bytes per step)"

/// The methods data-parallel training covers, with the flags they need (docs/distributed.md).
let covered =
    [ "backprop", []; "fa", []; "dfa", []; "sign-symmetric", []; "dsn", []; "fenchel-bp", []
      "pcn", []; "lpom", []; "chl", []; "eqprop", []; "distprop", [ "--multipliers"; "class" ] ]

[<Tests>]
let tests =
    testList "DistributedTests" [
        test "one in-process replica equals the one-process run byte for byte for every covered method; two differ only at rounding (float64: largest weight difference < 1e-9 after one epoch)" {
            for (methodName, flags) in covered do
                let args = [ "--method"; methodName; "--net"; "64-32-32-10"; "--epochs"; "1" ] @ flags
                let single, one = scratchDir "single", scratchDir "one"
                run args single |> ignore
                run (args @ [ "--replicas"; "1" ]) one |> ignore
                Expect.isTrue (sameBytes single one) $"{methodName}: one replica writes the one-process weights"
                // Two replicas sum the batch's examples in two groups: a rounding difference, which
                // CHL's and EqProp's inference amplifies to about 3e-3 in float32 after one epoch
                // (3.8e-12 in float64), so the comparison is made in float64.
                let single64, two64 = scratchDir "single64", scratchDir "two64"
                run (args @ [ "--dtype"; "float64" ]) single64 |> ignore
                run (args @ [ "--dtype"; "float64"; "--replicas"; "2" ]) two64 |> ignore
                let d = largestDifference single64 two64
                printfn "  %s: two replicas vs one process (float64), largest weight difference %.3g" methodName d
                Expect.isLessThan d 1e-9 $"{methodName}: two replicas differ from one process by rounding only"
        }

        test "methods that keep per-example rows or alternate sub-problems are refused in one line, exit 2, nothing written" {
            for (methodName, what) in [ "extraprop", "keeps per-example rows"; "penalty", "keeps per-example rows"; "distprop", "keeps per-example rows across steps (store/lambda1)"; "am-adam", "moves per-batch variables (codes)"; "dtp", "draws the inverses' reconstruction noise over each mini-batch" ] do
                let dir = Path.Combine(scratchDir "refused", "run")
                let code, _, err = lifting [ "train"; "--data"; "digits"; "--method"; methodName; "--epochs"; "1"; "--replicas"; "2"; "--out"; dir; "--plain" ]
                Expect.equal code 2 $"{methodName}: exit code"
                Expect.stringContains err what $"{methodName}: says why"
                Expect.equal (err.Trim().Split('\n').Length) 1 "one line"
                Expect.isFalse (Directory.Exists dir) "nothing written"
        }

        test "layer-parallel DistProp (--segments 2 and 3, in-process segments): the one-process weights byte for byte with sigma held at 1 (the default, per-class multipliers, extrapolated weights); learned sigma differs at rounding only (float64 < 1e-9)" {
            let net = [ "--net"; "64-32-32-10"; "--epochs"; "2" ]
            for flags in [ [ "--method"; "distprop" ]; [ "--method"; "distprop"; "--multipliers"; "class" ]; [ "--method"; "distprop"; "--extrapolate-weights"; "true" ] ] do
                againstSegments (flags @ net) [ "2"; "3" ] sameWeights
            // A learned sigma: the softplus derivative multiplies each segment's part of a boundary
            // sigma's gradient instead of their sum.
            againstSegments ([ "--method"; "distprop-seed001"; "--dtype"; "float64" ] @ net) [ "2" ] (fun single split _ ->
                let d = largestDifference single split
                printfn "  distprop-seed001 (learned sigma), 2 segments vs one process (float64): largest weight difference %.3g" d
                Expect.isLessThan d 1e-9 "learned sigma: rounding only"
                Expect.equal ((clusterJson split).GetProperty("mode").GetString()) "layer-parallel, synchronous" "cluster.json: the mode"
                Expect.equal (planBlocks split) [ "block 1"; "blocks 2-3" ] "cluster.json: the split balances the cost model"
                Expect.isGreaterThan (bytesBetween split) 0L "cluster.json: the exchange is counted")
        }

        test "layer-parallel online AM (--segments 2 and 3, in-process segments): the one-process weights byte for byte for am-adam (with seed 004's 5 code and 5 weight steps, weights in parallel, a residual net), am-mem and the offline variants; the forward codes go up and the updated codes come down, B·H numbers each way per cut" {
            let net = [ "--net"; "64-32-32-10"; "--epochs"; "2" ]
            againstSegments ([ "--method"; "am-adam" ] @ net) [ "2"; "3" ] (fun single split k ->
                sameWeights single split k
                if k = "2" then
                    Expect.equal (planBlocks split) [ "block 1"; "blocks 2-3" ] "cluster.json: the plan"
                    // Cut 1 (32 units): the batch's forward codes up, its updated codes down,
                    // float32, plus two safetensors headers; the epoch's last batch is smaller.
                    crossPerStep split (2L * 64L * 32L * 4L) 512L "the cut's codes"
                    let bySegment = [ for b in (clusterJson split).GetProperty("traffic").GetProperty("bytes_sent_per_step_by_segment").EnumerateArray() -> b.GetInt64() ]
                    Expect.isTrue (bySegment |> List.forall (fun b -> b > 0L)) $"each segment sends ({bySegment})")
            for flags, ks in [ [ "--method"; "am-adam"; "--code-steps"; "5"; "--weight-steps"; "5"; "--parallel"; "true" ] @ net, [ "3" ]
                               [ "--method"; "am-adam"; "--net"; "dense:32, relu, res:32:3, dense:10"; "--epochs"; "2" ], [ "3" ]
                               [ "--method"; "am-mem" ] @ net, [ "2" ]
                               [ "--method"; "am-adam-off"; "--net"; "64-32-32-10"; "--epochs"; "3" ], [ "2" ]
                               [ "--method"; "am-mem-off"; "--net"; "64-32-32-10"; "--epochs"; "3" ], [ "3" ] ] do
                againstSegments flags ks sameWeights
        }

        test "layer-parallel multiple shooting and quadratic penalty (--segments 2 and 3, in-process segments): the one-process weights byte for byte for extraprop (also reparametrised, projected, reduced, adjoint-initialised), extraprop-rows, gda, auglag, penalty and regularized; the batch's rows of the boundary state's gradient cross, B·H numbers each way per evaluation" {
            let net = [ "--net"; "64-32-32-10"; "--epochs"; "3" ]
            againstSegments ([ "--method"; "extraprop" ] @ net) [ "2"; "3" ] (fun single split k ->
                sameWeights single split k
                if k = "2" then
                    Expect.equal (planBlocks split) [ "block 1"; "blocks 2-3" ] "cluster.json: the plan"
                    // Cut 1 (32 units), float32, each way, at four evaluations per step (an inner
                    // extragradient iteration on the rows, then the outer one), plus headers; the
                    // epoch's last batch is smaller.
                    crossPerStep split (4L * 2L * 64L * 32L * 4L) 2048L "the boundary rows")
            for flags, ks in [ [ "--method"; "extraprop"; "--project-states"; "true" ], [ "3" ]
                               [ "--method"; "extraprop"; "--reduced"; "true"; "--eps"; "0.01" ], [ "2" ]
                               [ "--method"; "extraprop"; "--adjoint-init"; "true" ], [ "2" ]
                               [ "--method"; "extraprop-rows" ], [ "3" ]
                               [ "--method"; "gda" ], [ "2" ]
                               [ "--method"; "auglag" ], [ "3" ]
                               [ "--method"; "penalty" ], [ "2"; "3" ]
                               [ "--method"; "regularized" ], [ "3" ] ] do
                againstSegments (flags @ net) ks sameWeights
            // States reparametrised through tanh: its derivative multiplies each segment's part
            // instead of their sum.
            againstSegments [ "--method"; "extraprop"; "--reparametrise"; "true"; "--net"; "64-32-32-32-10"; "--activation"; "tanh"; "--dtype"; "float64"; "--epochs"; "3" ] [ "3" ] (fun single split k ->
                let d = largestDifference single split
                printfn "  extraprop reparametrised through tanh, %s segments vs one process (float64): largest weight difference %.3g" k d
                Expect.isLessThan d 1e-9 "reparametrised through tanh: rounding only")
        }

        test "a layer-parallel run resumed from its checkpoint (lifting resume --segments 2) ends with the weights of the one-process run resumed the same way, byte for byte (distprop; am-adam and am-mem, whose mu, Adam state and memory counters continue; extraprop and penalty, whose segments read their own cuts' rows)" {
            for methodName in [ "distprop"; "am-adam"; "am-mem"; "extraprop"; "penalty" ] do
                let args = [ "--method"; methodName; "--net"; "64-32-32-10"; "--epochs"; "1" ]
                let single, split = scratchDir "single", scratchDir "segments"
                run args single |> ignore
                run (args @ [ "--segments"; "2" ]) split |> ignore
                for (dir, extra) in [ single, []; split, [ "--segments"; "2" ] ] do
                    let code, out, err = lifting ([ "resume"; dir; "--epochs"; "3"; "--plain" ] @ extra)
                    Expect.equal code 0 $"resume {extra}: {err} {out}"
                Expect.isTrue (sameBytes single split) $"{methodName}: the same weights after the resumed epochs"
        }

        test "layer-parallel training refuses what it does not cover in one line, exit 2, nothing written" {
            for (args, what) in [ [ "--method"; "backprop"; "--segments"; "2" ], "backprop does not split by blocks"
                                  [ "--method"; "distprop"; "--net"; "64-32-10"; "--segments"; "3" ], "3 segments for a program of 2 blocks"
                                  [ "--method"; "distprop"; "--clip-norm"; "1"; "--segments"; "2" ], "transforms all of the player's variables together"
                                  [ "--method"; "distprop"; "--segments"; "2"; "--replicas"; "2" ], "give one of them"
                                  [ "--method"; "penalty"; "--restart-states"; "true"; "--segments"; "2" ], "restarts the batch's states by a forward pass" ] do
                let dir = Path.Combine(scratchDir "refused", "run")
                let code, _, err = lifting ([ "train"; "--data"; "digits"; "--epochs"; "1"; "--out"; dir; "--plain" ] @ args)
                Expect.equal code 2 $"{args}: exit code ({err})"
                Expect.stringContains err what $"{args}: says why"
                Expect.equal (err.Trim().Split('\n').Length) 1 "one line"
                Expect.isFalse (Directory.Exists dir) "nothing written"
        }

        test "two local workers (--workers 2, two processes, Orleans localhost clustering) train backprop on the digits to the weights of two in-process replicas byte for byte; cluster.json records the layout and the traffic" {
            let args = [ "--method"; "backprop"; "--epochs"; "2" ]
            let local, workers = scratchDir "inproc", scratchDir "workers"
            run (args @ [ "--replicas"; "2" ]) local |> ignore
            let out = run (args @ [ "--workers"; "2" ]) workers
            Expect.stringContains out "2 replicas on 2 local workers" "the header names the cluster"
            Expect.isTrue (sameBytes local workers) "the same weights, byte for byte"
            let c = clusterJson workers
            let layout = [ for r in c.GetProperty("layout").EnumerateArray() -> r.GetProperty("silo").GetString(), r.GetProperty("pid").GetInt32() ]
            Expect.equal layout.Length 2 "two replicas"
            Expect.notEqual (fst layout.[0]) (fst layout.[1]) "on two silos"
            Expect.notEqual (snd layout.[0]) Environment.ProcessId "in other processes"
            Expect.isGreaterThan (c.GetProperty("traffic").GetProperty("bytes_sent_per_step").GetInt64()) 0L "traffic counted"
            Expect.isTrue (c.GetProperty("final").GetBoolean()) "written at the end"
            for pid in c.GetProperty("worker_pids").EnumerateArray() do
                let alive = try not (Diagnostics.Process.GetProcessById(pid.GetInt32()).HasExited) with _ -> false
                Expect.isFalse alive "the workers end with the run"
        }
    ]

/// A `lifting` process (dotnet lifting.dll ARGS) in `cwd` with extra environment variables; its
/// output is drained into a buffer.
let startLifting (args: string list) (cwd: string) (env: (string * string) list) =
    let dotnet = match Environment.GetEnvironmentVariable "DOTNET_HOST_PATH" with null | "" -> "dotnet" | p -> p
    let info = Diagnostics.ProcessStartInfo(dotnet, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = cwd)
    info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "lifting.dll"))
    for a in args do info.ArgumentList.Add a
    for (k, v) in env do info.Environment.[k] <- v
    let p = match Diagnostics.Process.Start info with null -> failwith "could not start dotnet" | p -> p
    let output = Text.StringBuilder()
    p.OutputDataReceived.Add(fun e -> if not (isNull e.Data) then lock output (fun () -> output.AppendLine e.Data |> ignore))
    p.ErrorDataReceived.Add(fun e -> if not (isNull e.Data) then lock output (fun () -> output.AppendLine e.Data |> ignore))
    p.BeginOutputReadLine()
    p.BeginErrorReadLine()
    p, output

let stop (p: Diagnostics.Process) =
    try
        if not p.HasExited then p.Kill(true)
        p.WaitForExit(10000) |> ignore
    with _ -> ()

/// A Redis server for the test: LIFTING_REDIS (redis://HOST:PORT, .ci/run starts one) or one
/// started here on a free loopback port when redis-server is installed; None otherwise.
let redis () =
    match Environment.GetEnvironmentVariable "LIFTING_REDIS" with
    | null | "" ->
        let port = Lifting.Distributed.ClusterHosting.FreePort()
        try
            let info = Diagnostics.ProcessStartInfo("redis-server", $"--port {port} --bind 127.0.0.1 --save \"\" --appendonly no", UseShellExecute = false, RedirectStandardOutput = true)
            match Diagnostics.Process.Start info with
            | null -> None
            | p ->
                p.BeginOutputReadLine()
                Threading.Thread.Sleep 500
                Some($"redis://127.0.0.1:{port}", Some p)
        with :? ComponentModel.Win32Exception -> None
    | url -> Some(url, None)

/// Waits until `check` holds (polling), failing after `seconds`.
let waitFor (seconds: float) (what: string) (check: unit -> bool) =
    let timer = Diagnostics.Stopwatch.StartNew()
    while not (check ()) do
        if timer.Elapsed.TotalSeconds > seconds then failwith $"timed out waiting for {what}"
        Threading.Thread.Sleep 200

/// Starts `n` workers on the Redis cluster `url` with cluster id `id`; waits for their ready lines.
let redisWorkers (url: string) (id: string) (n: int) (cwd: string) (env: (string * string) list) =
    [ for _ in 1 .. n ->
        let silo, gateway = Lifting.Distributed.ClusterHosting.FreePort(), Lifting.Distributed.ClusterHosting.FreePort()
        startLifting [ "worker"; "--cluster"; url; "--cluster-id"; id; "--silo-port"; string silo; "--gateway-port"; string gateway; "--threads"; "1" ] cwd env ]
    |> fun workers ->
        for (p, output) in workers do
            waitFor 60.0 "a worker's ready line" (fun () -> p.HasExited || (lock output (fun () -> output.ToString())).Contains("lifting worker: silo"))
            if p.HasExited then failwith $"a worker exited: {output}"
        workers

let metricsLines (dir: string) =
    let f = Path.Combine(dir, "metrics.jsonl")
    if File.Exists f then (try File.ReadAllLines(f).Length with _ -> 0) else 0

/// A layer-parallel run (`args`) on three local workers with two segments, the worker holding
/// a segment killed (kill -9) once epoch 1 is written: the run completes with the one-process
/// weights byte for byte, its cluster.json records the loss and the recovery, and no segment is
/// left on the killed worker. The run folder, for more checks.
let survivesLostSegment (args: string list) =
    let single, faulty = scratchDir "single", scratchDir "faulty"
    run args single |> ignore
    let coordinator = Threading.Tasks.Task.Run(fun () -> lifting ([ "train"; "--data"; "digits"; "--threads"; "1"; "--plain"; "--out"; faulty; "--force"; "--workers"; "3"; "--segments"; "2" ] @ args))
    try
        waitFor 180.0 "epoch 1" (fun () -> coordinator.IsCompleted || metricsLines faulty >= 1)
        Expect.isFalse coordinator.IsCompleted "the run is still going after epoch 1"
        let c = clusterJson faulty
        let silos = [ for r in c.GetProperty("layout").EnumerateArray() -> r.GetProperty("silo").GetString() ]
        Expect.equal (List.distinct silos).Length 2 "one segment on each of two silos"
        let primary = c.GetProperty("worker_pids").[0].GetInt32()
        // The worker holding segment 1, unless it holds the membership table (then segment 0's).
        let holders = [ for r in c.GetProperty("layout").EnumerateArray() -> r.GetProperty("pid").GetInt32() ]
        let killed = holders |> List.rev |> List.find (fun p -> p <> primary)
        Posix.kill(killed, 9) |> ignore
        let code, out, err = coordinator.Result
        Expect.equal code 0 $"the run completes ({err} {out})"
        Expect.stringContains out "layer-parallel, 2 segments on 3 local workers" "the header names the split"
        Expect.isTrue (sameBytes single faulty) "the uninterrupted run's weights, byte for byte"
        let events = clusterEvents faulty
        Expect.isTrue (events |> List.exists (fun (epoch, t) -> epoch >= 2 && t.Contains "a segment was lost")) $"the loss is recorded: {events}"
        Expect.isTrue (events |> List.exists (fun (_, t) -> t.Contains "recovered in")) $"the recovery is recorded: {events}"
        Expect.isFalse (List.contains killed (layoutPids faulty)) "no segment is left on the killed worker"
        faulty
    finally
        if not coordinator.IsCompleted then coordinator.Wait(TimeSpan.FromSeconds 300.0) |> ignore

[<Tests>]
let clusterTests =
    testList "DistributedTests" [
        test "two silos through a real Redis server (lifting worker --cluster redis://…) train backprop on the digits to the weights of two in-process replicas byte for byte, and DistProp, online AM and ExtraProp layer-parallel (--segments 2, a segment on each silo) to the one-process weights byte for byte" {
            match redis () with
            | None -> skiptest "no Redis: set LIFTING_REDIS or install redis-server (.ci/run does)"
            | Some(url, server) ->
                let id = "test-" + Guid.NewGuid().ToString("N").[..7]
                let workers = redisWorkers url id 2 (scratchDir "cwd") []
                try
                    let local, remote = scratchDir "inproc", scratchDir "redis"
                    run [ "--epochs"; "2"; "--replicas"; "2" ] local |> ignore
                    let out = run [ "--epochs"; "2"; "--cluster"; url; "--cluster-id"; id ] remote
                    Expect.stringContains out "2 replicas on the 2 workers of redis://" "the header names the cluster"
                    Expect.isTrue (sameBytes local remote) "the same weights, byte for byte"
                    let silos (dir: string) = [ for r in (clusterJson dir).GetProperty("layout").EnumerateArray() -> r.GetProperty("silo").GetString() ]
                    Expect.equal (List.distinct (silos remote)).Length 2 "one replica on each silo"
                    for methodName in [ "distprop"; "am-adam"; "extraprop" ] do
                        let args = [ "--method"; methodName; "--net"; "64-32-32-10"; "--epochs"; "2" ]
                        let single, layers = scratchDir "single", scratchDir "segments"
                        run args single |> ignore
                        let out = run (args @ [ "--cluster"; url; "--cluster-id"; id; "--segments"; "2" ]) layers
                        Expect.stringContains out "layer-parallel, 2 segments on the 2 workers of redis://" $"{methodName}: the header names the cluster"
                        Expect.isTrue (sameBytes single layers) $"{methodName}: the one-process weights, byte for byte"
                        Expect.equal (List.distinct (silos layers)).Length 2 $"{methodName}: one segment on each silo"
                finally
                    for (p, _) in workers do stop p
                    server |> Option.iter stop
        }

        test "a silo of another build, a worker reading other data, an unreachable cluster, a non-loopback endpoint without TLS: one line each, exit 2, nothing written" {
            // Unreachable: nothing listens on port 1.
            let dir = Path.Combine(scratchDir "unreachable", "run")
            let code, _, err = lifting [ "train"; "--data"; "digits"; "--epochs"; "1"; "--cluster"; "redis://127.0.0.1:1"; "--out"; dir; "--plain" ]
            Expect.equal code 2 "unreachable: exit code"
            Expect.stringContains err "cannot reach the cluster" "unreachable: says so"
            Expect.equal (err.Trim().Split('\n').Length) 1 "unreachable: one line"
            Expect.isFalse (Directory.Exists dir) "unreachable: nothing written"
            // A silo off loopback without a certificate.
            let code, _, err = lifting [ "worker"; "--endpoint"; "10.11.12.13"; "--cluster"; "redis://127.0.0.1:1" ]
            Expect.equal code 2 "endpoint: exit code"
            Expect.stringContains err "--endpoint 10.11.12.13: not a loopback address; a silo reachable from other machines needs --tls-cert FILE" "endpoint: says so"
            Expect.equal (err.Trim().Split('\n').Length) 1 "endpoint: one line"
            match redis () with
            | None -> skiptest "no Redis for the build and data checks: set LIFTING_REDIS or install redis-server (.ci/run does)"
            | Some(url, server) ->
                try
                    // Another build (LIFTING_BUILD_ID stands in for other assemblies).
                    let id = "test-" + Guid.NewGuid().ToString("N").[..7]
                    let workers = redisWorkers url id 1 (scratchDir "cwd") [ "LIFTING_BUILD_ID", "another-build" ]
                    try
                        let dir = Path.Combine(scratchDir "build", "run")
                        let code, _, err = lifting [ "train"; "--data"; "digits"; "--epochs"; "1"; "--cluster"; url; "--cluster-id"; id; "--out"; dir; "--plain" ]
                        Expect.equal code 2 "build: exit code"
                        Expect.stringContains err "runs another build of lifting (another-build;" "build: names both builds"
                        Expect.equal (err.Trim().Split('\n').Length) 1 "build: one line"
                        Expect.isFalse (Directory.Exists dir) "build: nothing written"
                    finally
                        for (p, _) in workers do stop p
                    // Other data: the same relative --data names another file in the worker's folder.
                    let id = "test-" + Guid.NewGuid().ToString("N").[..7]
                    let mine, theirs = scratchDir "mine", scratchDir "theirs"
                    // Files that differ after standardisation (a shifted column would not: the inputs
                    // are standardised on the training split).
                    let rows (period: int) = "a,b,label\n" + String.Join("\n", [ for i in 0 .. 199 -> $"{float i},{float (i % period)},{i % 2}" ])
                    File.WriteAllText(Path.Combine(mine, "data.csv"), rows 7)
                    File.WriteAllText(Path.Combine(theirs, "data.csv"), rows 5)
                    let workers = redisWorkers url id 1 theirs []
                    try
                        let coordinator, output = startLifting [ "train"; "--data"; "data.csv"; "--epochs"; "1"; "--cluster"; url; "--cluster-id"; id; "--out"; "run"; "--plain" ] mine []
                        Expect.isTrue (coordinator.WaitForExit 120000) "data: the coordinator ends"
                        let text = lock output (fun () -> output.ToString())
                        Expect.equal coordinator.ExitCode 2 $"data: exit code ({text})"
                        Expect.stringContains text "mismatched data: the worker on silo" "data: says so"
                        Expect.isFalse (Directory.Exists(Path.Combine(mine, "run"))) "data: nothing written"
                    finally
                        for (p, _) in workers do stop p
                finally
                    server |> Option.iter stop
        }

        test "kill -9 of one of three local workers during epoch 2: its replica is activated on a surviving silo and the run completes with the weights of an uninterrupted run (three in-process replicas) byte for byte; cluster.json says what happened" {
            let args = [ "--net"; "64-128-128-10"; "--batch"; "16"; "--epochs"; "4" ]
            let reference, faulty = scratchDir "reference", scratchDir "faulty"
            run (args @ [ "--replicas"; "3" ]) reference |> ignore
            let coordinator = Threading.Tasks.Task.Run(fun () -> lifting ([ "train"; "--data"; "digits"; "--threads"; "1"; "--plain"; "--out"; faulty; "--force"; "--workers"; "3" ] @ args))
            let mutable killed = 0
            try
                waitFor 180.0 "epoch 1" (fun () -> coordinator.IsCompleted || metricsLines faulty >= 1)
                Expect.isFalse coordinator.IsCompleted "the run is still going after epoch 1"
                let pids = [ for p in (clusterJson faulty).GetProperty("worker_pids").EnumerateArray() -> p.GetInt32() ]
                // The third worker (the first holds the localhost clustering's membership table).
                killed <- pids.[2]
                Posix.kill(killed, 9) |> ignore
                let code, out, err = coordinator.Result
                Expect.equal code 0 $"the run completes ({err} {out})"
                Expect.isTrue (sameBytes reference faulty) "the weights of an uninterrupted run, byte for byte"
                let events = clusterEvents faulty
                Expect.isTrue (events |> List.exists (fun (epoch, t) -> epoch >= 2 && t.Contains "did not answer")) $"the loss is recorded: {events}"
                Expect.isTrue (events |> List.exists (fun (_, t) -> t.Contains "re-joined on silo")) $"the re-activation is recorded: {events}"
                Expect.isFalse (List.contains killed (layoutPids faulty)) "no replica is left on the killed worker"
            finally
                if not coordinator.IsCompleted then coordinator.Wait(TimeSpan.FromSeconds 300.0) |> ignore
        }

        test "layer-parallel DistProp on three local workers (--workers 3 --segments 2), one segment on each of two silos with only the boundary means crossing; kill -9 of the worker holding a segment in epoch 2: the segments join again, replay the epoch and the run ends with the one-process weights byte for byte; every worker killed: one line, exit 1, the checkpoint kept" {
            let faulty = survivesLostSegment [ "--method"; "distprop"; "--net"; "64-128-128-10"; "--batch"; "16"; "--epochs"; "4" ]
            let between = (clusterJson faulty).GetProperty("traffic").GetProperty("bytes_between_segments_per_step").GetInt64()
            // The cut's class means, 10 x 128 float32, each way at both of extragradient's
            // evaluations, plus the safetensors headers: independent of the batch.
            Expect.isLessThan between (2L * 2L * 10L * 128L * 4L + 1024L) $"only the boundary means cross ({between} bytes per step)"
            Expect.isGreaterThan between (2L * 2L * 10L * 128L * 4L) "the boundary means cross"
            let gone = scratchDir "gone"
            // Every worker gone.
            let coordinator = Threading.Tasks.Task.Run(fun () -> lifting ([ "train"; "--data"; "digits"; "--threads"; "1"; "--plain"; "--out"; gone; "--force"; "--workers"; "2"; "--segments"; "2"; "--worker-timeout"; "5" ] @ [ "--method"; "distprop"; "--net"; "64-128-128-10"; "--batch"; "16"; "--epochs"; "20" ]))
            try
                waitFor 180.0 "epoch 1" (fun () -> coordinator.IsCompleted || metricsLines gone >= 1)
                for p in (clusterJson gone).GetProperty("worker_pids").EnumerateArray() do Posix.kill(p.GetInt32(), 9) |> ignore
                let code, _, err = coordinator.Result
                Expect.equal code 1 $"exit code: failed ({err})"
                Expect.equal (err.Trim().Split('\n').Length) 1 $"one line: {err}"
                Expect.stringContains err "lifting resume" "says how to go on"
                Expect.isTrue (File.Exists(Path.Combine(gone, "checkpoint.safetensors"))) "the checkpoint stays"
            finally
                if not coordinator.IsCompleted then coordinator.Wait(TimeSpan.FromSeconds 300.0) |> ignore
        }

        test "layer-parallel online AM (am-adam) on three local workers (--workers 3 --segments 2): the one-process weights byte for byte; kill -9 of the worker holding a segment in epoch 2: the run recovers and ends with them still" {
            survivesLostSegment [ "--method"; "am-adam"; "--net"; "64-128-128-10"; "--batch"; "16"; "--epochs"; "4" ] |> ignore
        }

        test "layer-parallel ExtraProp on three local workers (--workers 3 --segments 2): the one-process weights byte for byte; kill -9 of the worker holding a segment in epoch 2: the run recovers and ends with them still" {
            survivesLostSegment [ "--method"; "extraprop"; "--net"; "64-128-128-10"; "--batch"; "16"; "--epochs"; "4" ] |> ignore
        }

        test "a worker that leaves for good (every local worker killed after epoch 1): one line, the run stops as failed (exit 1), the checkpoint of epoch 1 kept" {
            let dir = scratchDir "gone"
            let coordinator = Threading.Tasks.Task.Run(fun () ->
                lifting [ "train"; "--data"; "digits"; "--threads"; "1"; "--plain"; "--out"; dir; "--force"; "--workers"; "2"; "--worker-timeout"; "5"
                          "--net"; "64-128-128-10"; "--batch"; "16"; "--epochs"; "20" ])
            try
                waitFor 180.0 "epoch 1" (fun () -> coordinator.IsCompleted || metricsLines dir >= 1)
                for p in (clusterJson dir).GetProperty("worker_pids").EnumerateArray() do Posix.kill(p.GetInt32(), 9) |> ignore
                let code, _, err = coordinator.Result
                Expect.equal code 1 "exit code: failed"
                Expect.stringContains err "its worker left and no other took its place within 5 s" "says so"
                Expect.equal (err.Trim().Split('\n').Length) 1 "one line"
                let summary = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "summary.json"))).RootElement
                Expect.equal (summary.GetProperty("status").GetString()) "failed" "summary: failed"
                Expect.isTrue (File.Exists(Path.Combine(dir, "checkpoint.safetensors"))) "the checkpoint stays (lifting resume continues)"
            finally
                if not coordinator.IsCompleted then coordinator.Wait(TimeSpan.FromSeconds 300.0) |> ignore
        }
    ]
