/// `lifting bench`'s output: the lines printed as runs finish, the table's columns, the floor row,
/// bench.md and bench.json, and the scaling mode's plot (formats only, never timings).
module Lifting.Tests.BenchTests

open System
open System.IO
open System.Text.Json
open Expecto
open Lifting.Host
open Lifting.Tests.HostTests

let private rowsOf (json: string) =
    use doc = JsonDocument.Parse(json)
    doc.RootElement.EnumerateArray() |> Seq.map (fun r -> r.Clone()) |> Array.ofSeq

[<Tests>]
let tests =
    testList "BenchTests" [
        test "bench prints a line per run as it finishes, then the table; JSON rows carry wall, CPU, faults and ratios to the floor and the first method; bench.md and bench.json are written" {
            let dir = tempDir ()
            let code, out, err = lifting [ "bench"; "--data"; "digits"; "--net"; "64-32-10"; "--epochs"; "2"; "--repeats"; "2"; "--methods"; "backprop,extraprop"; "--threads"; "1"; "--out"; dir; "--json" ]
            Expect.equal code 0 $"exit 0: {err}"
            let lines = out.Split('\n') |> Array.map (fun l -> l.TrimEnd('\r'))
            Expect.stringContains lines.[0] "C heap:" "the header says how the C heap is configured"
            let runLines = lines |> Array.filter (fun l -> l.TrimStart().StartsWith "round ")
            Expect.equal runLines.Length 6 "a line per run: floor, backprop and extraprop in each of 2 rounds"
            Expect.stringContains runLines.[0] Bench.FloorLabel "the floor runs first in every round"
            for l in runLines.[1..] do
                if not (l.Contains Bench.FloorLabel) then Expect.stringContains l "floor (CPU)" "each method's line has its ratio to the floor"
            for l in runLines do
                for unit in [ "s/epoch wall"; "s/epoch CPU"; "K faults/epoch" ] do Expect.stringContains l unit "wall, CPU and faults on every line"
            let lastRun = Array.findIndexBack (fun (l: string) -> l.TrimStart().StartsWith "round ") lines
            let table = Array.findIndex (fun (l: string) -> l.TrimStart().StartsWith "backprop ") lines
            Expect.isGreaterThan table lastRun "the table after the runs"
            let rows = rowsOf (lastLine out)
            Expect.equal [ for r in rows -> r.GetProperty("method").GetString() ] [ "backprop"; "extraprop"; Bench.FloorLabel ] "the methods in order, the floor last"
            for r in rows do
                for key in [ "seconds_per_epoch"; "cpu_seconds_per_epoch"; "minor_faults_per_epoch"; "cpu_ratio_to_floor"; "wall_ratio_to_floor"; "ratio"; "cpu_ratio"; "cpu_ratio_min"; "cpu_ratio_max"; "peak_rss_mib" ] do
                    Expect.isTrue (r.GetProperty(key).ValueKind = JsonValueKind.Number) $"{key} is a number"
            Expect.equal (rows.[2].GetProperty("cpu_ratio_to_floor").GetDouble()) 1.0 "the floor is 1x itself"
            Expect.equal (rows.[0].GetProperty("cpu_ratio").GetDouble()) 1.0 "the first method is the reference"
            Expect.equal (rows.[2].GetProperty("test_accuracy").ValueKind) JsonValueKind.Null "the floor reports no accuracy"
            let md = File.ReadAllLines(Path.Combine(dir, "bench.md"))
            let tableLines = md |> Array.filter (fun l -> l.StartsWith "|")
            Expect.equal tableLines.Length 5 "header, rule and three rows"
            let columns (l: string) = l.Split('|').Length - 2
            for l in tableLines do Expect.equal (columns l) 11 $"11 columns: {l}"
            Expect.stringContains tableLines.[0] "CPU × floor" "a CPU ratio to the floor column"
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "bench.json")))
            Expect.equal (doc.RootElement.GetProperty("rows").GetArrayLength()) 3 "bench.json has the rows"
            Expect.equal (doc.RootElement.GetProperty("net").GetString()) "64-32-10" "and the settings"
        }

        test "bench --no-floor leaves the floor out; a net the floor cannot mirror (a residual block) says why" {
            let code, out, err = lifting [ "bench"; "--data"; "digits"; "--net"; "64-32-10"; "--epochs"; "2"; "--repeats"; "1"; "--methods"; "backprop"; "--no-floor"; "--json" ]
            Expect.equal code 0 $"exit 0: {err}"
            Expect.equal [ for r in rowsOf (lastLine out) -> r.GetProperty("method").GetString() ] [ "backprop" ] "no floor row"
            Expect.stringContains out "no floor row: left out (--no-floor)" "it says so"
            let residual = Lifting.Programs.Net.Input([| 8L |]).Dense(8).ReLU().Residual(fun b -> b.Dense(8).ReLU()).Dense(3).CrossEntropy()
            Expect.isSome (Option.ofObj (Bench.FloorUnavailable residual)) "a residual block has no nn.Sequential mirror"
            let chain = Lifting.Programs.Net.Input([| 8L |]).Dense(8).Tanh().Dense(3).CrossEntropy()
            Expect.isNone (Option.ofObj (Bench.FloorUnavailable chain)) "a dense tanh chain has"
        }

        test "training configures the C heap once (mmap threshold 32 MiB, trim threshold 1 GiB) unless the environment sets it" {
            use digits = Lifting.Data.DatasetCatalog.Load "digits"
            let program = Lifting.Programs.Net.Input(digits.Train.ExampleShape).Flatten().Dense(8).ReLU().Dense(10).CrossEntropy()
            let m = Lifting.Methods.Resolve(Lifting.MethodSettings("backprop"))
            use _ = Lifting.Training.Trainer.Train(program, digits, m.Formulation, m.Solver, m.StepRules, Lifting.Training.TrainingOptions(Epochs = 1, BatchSize = 256))
            let set = [ "MALLOC_MMAP_THRESHOLD_"; "MALLOC_TRIM_THRESHOLD_"; "GLIBC_TUNABLES"; "LIFTING_HEAP" ] |> List.exists (Environment.GetEnvironmentVariable >> String.IsNullOrEmpty >> not)
            if OperatingSystem.IsLinux() && not set then
                Expect.equal Lifting.NativeMemory.HeapConfiguration "mmap 32 MiB, trim 1024 MiB" "set by the trainer"
            else Expect.stringStarts Lifting.NativeMemory.HeapConfiguration "default" "left alone"
        }

        test "the end-of-epoch trim hands back a heap holding more than 64 MiB free and leaves a smaller one alone" {
            // The decision is taken on the heap's free bytes alone. (Asking "nothing to hand back right
            // after a trim" of the process's heap failed in CI: pages released in place stay counted
            // as free, and what earlier tests left in the heap is not this test's to control.)
            Expect.isFalse (Lifting.NativeMemory.WorthTrimming Lifting.NativeMemory.FreeBytesBeforeTrim) "64 MiB free or less: left alone"
            Expect.isTrue (Lifting.NativeMemory.WorthTrimming (Lifting.NativeMemory.FreeBytesBeforeTrim + 1L)) "more: trimmed"
            Expect.isTrue (Lifting.NativeMemory.WorthTrimming -1L) "unknown: trimmed"
            Lifting.NativeMemory.Configure()
            if OperatingSystem.IsLinux() && Lifting.NativeMemory.HeapConfiguration.StartsWith "mmap" then
                // 12 blocks of 16 MiB (below the 32 MiB mmap threshold: from the heap), then freed.
                let blocks = [ for _ in 1 .. 12 -> TorchSharp.torch.ones([| 4L * 1024L * 1024L |]) ]
                for b in blocks do b.Dispose()
                let free = Lifting.NativeMemory.FreeHeapBytes()
                Expect.isGreaterThan free Lifting.NativeMemory.FreeBytesBeforeTrim $"192 MiB freed into the heap ({free} B free)"
                Expect.isTrue (Lifting.NativeMemory.ReleaseFreePages()) "trimmed"
                // glibc hands the pages back from the heap's top (free bytes fall) or, when something
                // allocated since sits above them, releases them in place (free bytes stay, the pages
                // are unbacked: CI saw this); other threads allocate and free meanwhile, so the free
                // bytes are no measure here: malloc_trim says whether it released any.
                Expect.isTrue Lifting.NativeMemory.LastTrimReleased "memory handed back to the operating system"
        }

        test "bench --scale: width and depth rewrite the MLP, bad axes are refused before training; the ratio curves are drawn as a PNG" {
            Expect.equal (Bench.Scaled("784-256-10", "depth", 3L)) "784-256-256-256-10" "depth: hidden layers of the first's width"
            Expect.equal (Bench.Scaled("784-256-128-10", "width", 64L)) "784-64-64-10" "width: every hidden layer"
            Expect.equal (Bench.ParseScale "batch=32,64") ("batch", [| 32L; 64L |]) "batch"
            for bad in [ "height=1,2"; "depth=1"; "depth=1,x" ] do
                Expect.throwsT<UsageException> (fun () -> Bench.ParseScale bad |> ignore) $"{bad} refused"
            Expect.throwsT<UsageException> (fun () -> Bench.Scaled("lenet5", "depth", 2L) |> ignore) "an MLP only"
            let dir = tempDir ()
            let code, out, err = lifting [ "bench"; "--data"; "digits"; "--net"; "64-16-10"; "--epochs"; "2"; "--repeats"; "1"; "--methods"; "backprop"; "--scale"; "width=8,16"; "--out"; dir; "--json" ]
            Expect.equal code 0 $"exit 0: {err}"
            Expect.stringContains out "-- width = 8" "a section per value"
            Expect.stringContains out "-- width = 16" "a section per value"
            let png = File.ReadAllBytes(Path.Combine(dir, "scaling.png"))
            Expect.equal png.[1..3] "PNG"B "scaling.png is a PNG"
            use doc = JsonDocument.Parse(lastLine out)
            let curve = doc.RootElement.[0]
            Expect.equal (curve.GetProperty("method").GetString()) "backprop" "a curve per method"
            Expect.equal (curve.GetProperty("cpu_ratio_to_floor").GetArrayLength()) 2 "a point per value"
        }
    ]
