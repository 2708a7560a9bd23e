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
            for (methodName, what) in [ "extraprop", "keeps per-example rows"; "penalty", "keeps per-example rows"; "distprop", "keeps per-example rows across steps (store/lambda1)"; "am-adam", "moves per-batch variables (codes)" ] do
                let dir = Path.Combine(scratchDir "refused", "run")
                let code, _, err = lifting [ "train"; "--data"; "digits"; "--method"; methodName; "--epochs"; "1"; "--replicas"; "2"; "--out"; dir; "--plain" ]
                Expect.equal code 2 $"{methodName}: exit code"
                Expect.stringContains err what $"{methodName}: says why"
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
