module Lifting.Tests.HostTests

open System
open System.IO
open System.Text.Json
open Expecto
open Lifting
open Lifting.Host

/// Runs the `lifting` command in-process; returns exit code, stdout and stderr.
let lifting (args: string list) =
    use out = new StringWriter()
    use err = new StringWriter()
    let code = Cli.Run(Array.ofList args, out, err)
    code, out.ToString(), err.ToString()

let lastLine (text: string) = text.TrimEnd().Split('\n') |> Array.last

let tempDir () =
    let d = Path.Combine(Path.GetTempPath(), "lifting-tests-" + Guid.NewGuid().ToString("N"))
    Directory.CreateDirectory(d) |> ignore
    d

/// Runs the `lifting` command in a separate process (the built host next to the tests).
let liftingProcess (args: string list) =
    let dotnet = match Environment.GetEnvironmentVariable "DOTNET_HOST_PATH" with null | "" -> "dotnet" | p -> p
    let info = Diagnostics.ProcessStartInfo(dotnet, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
    info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "lifting.dll"))
    for a in args do info.ArgumentList.Add a
    use p = match Diagnostics.Process.Start info with null -> failwith $"could not start {dotnet}" | p -> p
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    p.ExitCode, out.Result, err.Result

let expectUsageError args (fragment: string) =
    let code, _, err = lifting args
    Expect.equal code 2 $"exit code 2 for %A{args}"
    let lines = err.Trim().Split('\n')
    Expect.equal lines.Length 1 $"one line: {err}"
    Expect.stringContains err fragment $"message names the problem: {err}"

[<Tests>]
let tests =
    testList "HostTests" [
        test "lifting --help prints usage" {
            let code, out, _ = lifting [ "--help" ]
            Expect.equal code 0 "exit 0"
            Expect.stringContains out "lifting train" "usage text"
        }
        test "lifting methods lists methods with their parameters and defaults, solvers and step rules" {
            let code, out, _ = lifting [ "methods" ]
            Expect.equal code 0 "exit 0"
            for name in [ "backprop"; "extraprop"; "gda"; "auglag"; "penalty"; "regularized"; "extragradient"; "adagrad" ] do
                Expect.stringContains out name $"lists {name}"
            let lines = out.Split('\n')
            for parameter in Methods.Find("extraprop").Parameters do
                Expect.isTrue (lines |> Array.exists (fun l -> l.Contains($"--{parameter.Name} ") && l.Contains($" {parameter.Default} "))) $"lists extraprop's parameter {parameter.Name} with its default {parameter.Default}"
        }
        test "train on digits with --json ends with a JSON summary and writes a run folder" {
            let dir = tempDir ()
            let code, out, err = lifting [ "train"; "--epochs"; "2"; "--device"; "cpu"; "--json"; "--out"; dir ]
            Expect.equal code 0 $"exit 0: {err}"
            use doc = JsonDocument.Parse(lastLine out)
            let root = doc.RootElement
            for key in [ "validation_accuracy"; "test_accuracy"; "final_validation_accuracy"; "final_test_accuracy"; "selected_epoch"; "selected_by"; "train_loss"; "epochs"; "seconds_per_epoch"; "threads" ] do
                Expect.isTrue (root.TryGetProperty(key) |> fst) $"summary has {key}"
            Expect.isGreaterThan (root.GetProperty("test_accuracy").GetDouble()) 0.8 "2 epochs on digits already learn"
            for f in [ "config.json"; "metrics.jsonl"; "summary.json"; "timing.json"; "weights.bin"; "weights-selected.bin" ] do
                Expect.isTrue (File.Exists(Path.Combine(dir, f))) $"run folder has {f}"
            Expect.equal (File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Length) 2 "one metrics line per epoch"
            Expect.isEmpty (Directory.GetFiles(dir, "*.tmp")) "no temporary files left"
        }
        test "two processes running one experiment write the same run files byte for byte (all but timing.json)" {
            let a, b = tempDir (), tempDir ()
            let args dir = [ "train"; "--data"; "digits"; "--net"; "64-32-10"; "--method"; "extraprop"; "--epochs"; "3"; "--threads"; "2"; "--device"; "cpu"; "--json"; "--out"; dir ]
            for dir in [ a; b ] do
                let code, _, err = liftingProcess (args dir)
                Expect.equal code 0 $"exit 0: {err}"
            for f in [ "weights.bin"; "weights-selected.bin"; "metrics.jsonl"; "summary.json"; "config.json" ] do
                Expect.sequenceEqual (File.ReadAllBytes(Path.Combine(b, f))) (File.ReadAllBytes(Path.Combine(a, f))) $"{f} identical"
            use config = JsonDocument.Parse(File.ReadAllText(Path.Combine(a, "config.json")))
            let root = config.RootElement
            Expect.equal (root.GetProperty("threads").GetInt32()) 2 "the thread count is recorded"
            for key in [ "libtorch"; "torchsharp"; "device"; "cpu"; "vector-instructions" ] do
                Expect.isTrue (root.GetProperty("environment").TryGetProperty(key) |> fst) $"the environment records {key}"
            Expect.equal (root.GetProperty("settle").GetDouble()) 0.2 "the method's defaults are recorded"
            Expect.isFalse (root.TryGetProperty("out") |> fst) "the config does not name its run folder"
        }
        test "a run's config.json repeats the run bit for bit into a new folder" {
            let a, b = tempDir (), tempDir ()
            // Separate processes: the config sets LibTorch's thread count, which is process-wide.
            let code, _, err = liftingProcess [ "train"; "--data"; "digits"; "--net"; "64-16-10"; "--method"; "auglag"; "--lr"; "0.003"; "--epochs"; "2"; "--device"; "cpu"; "--out"; a ]
            Expect.equal code 0 $"first run: {err}"
            let code, _, err = liftingProcess [ "train"; "--config"; Path.Combine(a, "config.json"); "--out"; b ]
            Expect.equal code 0 $"repeat: {err}"
            Expect.sequenceEqual (File.ReadAllBytes(Path.Combine(b, "weights.bin"))) (File.ReadAllBytes(Path.Combine(a, "weights.bin"))) "same weights"
            Expect.sequenceEqual (File.ReadAllBytes(Path.Combine(b, "config.json"))) (File.ReadAllBytes(Path.Combine(a, "config.json"))) "same config"
        }
        test "early stopping without a validation split is refused" {
            expectUsageError [ "train"; "--validation-fraction"; "0"; "--patience"; "2" ] "validation"
            expectUsageError [ "train"; "--validation-fraction"; "1" ] "--validation-fraction"
        }
        test "unknown names and bad values give one line and exit code 2" {
            expectUsageError [ "train"; "--method"; "magic" ] "magic"
            expectUsageError [ "train"; "--data"; "nonesuch" ] "nonesuch"
            expectUsageError [ "train"; "--activation"; "swish" ] "swish"
            expectUsageError [ "train"; "--solver"; "newton" ] "newton"
            expectUsageError [ "train"; "--lr"; "-1" ] "lr: '-1'"
            expectUsageError [ "train"; "--lr"; "NaN" ] "lr: 'NaN'"
            expectUsageError [ "train"; "--epochs"; "0" ] "--epochs"
            expectUsageError [ "train"; "--net"; "784-256-10" ] "64"
            expectUsageError [ "train"; "--frobnicate" ] "frobnicate"
            expectUsageError [ "train"; "--schedule"; "linear" ] "linear"
            expectUsageError [ "train"; "--method"; "extraprop"; "--settle"; "1" ] "settle: '1'"
            expectUsageError [ "train"; "--method"; "extraprop"; "--settle-states"; "0" ] "settle-states: '0'"
            expectUsageError [ "train"; "--method"; "backprop"; "--settle"; "0.2" ] "no parameter 'settle'"
            expectUsageError [ "frobnicate" ] "frobnicate"
            expectUsageError [ "train"; "--method"; "extraprop"; "--solver"; "alternating" ] "saddle-point"
        }
        test "a malformed data file gives one line naming the file and exit code 2" {
            let dir = tempDir ()
            let bad = Path.Combine(dir, "bad.csv")
            File.WriteAllText(bad, "1,2,3\nnot,a,row\n")
            expectUsageError [ "train"; "--data"; bad ] "bad.csv"
        }
        test "a malformed config file gives one line and exit code 2" {
            let dir = tempDir ()
            let cfg = Path.Combine(dir, "x.json")
            File.WriteAllText(cfg, "{ \"epochs\": \"many\" ")
            expectUsageError [ "train"; "--config"; cfg ] "x.json"
        }
        test "lifting bench runs methods side by side and reports ratios" {
            let code, out, err = lifting [ "bench"; "--data"; "digits"; "--net"; "64-32-10"; "--epochs"; "2"; "--repeats"; "2"; "--methods"; "backprop,extraprop"; "--device"; "cpu"; "--json" ]
            Expect.equal code 0 $"exit 0: {err}"
            use doc = JsonDocument.Parse(lastLine out)
            let rows = doc.RootElement.EnumerateArray() |> Array.ofSeq
            Expect.equal rows.Length 2 "one row per method"
            Expect.equal (rows.[0].GetProperty("ratio").GetDouble()) 1.0 "the first method is the reference"
            Expect.isGreaterThan (rows.[1].GetProperty("per_example_bytes").GetInt64()) 0L "extraprop keeps per-example state"
            Expect.equal (rows.[0].GetProperty("per_example_bytes").GetInt64()) 0L "backprop keeps none"
            expectUsageError [ "bench"; "--methods"; "backprop,nonesuch" ] "nonesuch"
        }
        test "the config file is read and flags override it" {
            let dir = tempDir ()
            let cfg = Path.Combine(dir, "exp.json")
            File.WriteAllText(cfg, "{ \"epochs\": 1, \"method\": \"backprop\", \"batch\": 128 }")
            let code, out, err = lifting [ "train"; "--config"; cfg; "--device"; "cpu"; "--json"; "--epochs"; "2" ]
            Expect.equal code 0 $"exit 0: {err}"
            use doc = JsonDocument.Parse(lastLine out)
            Expect.equal (doc.RootElement.GetProperty("epochs").GetInt32()) 2 "the flag overrides the file"
        }
    ]
