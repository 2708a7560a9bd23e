module Lifting.Tests.HostTests

open System
open System.IO
open System.Text.Json
open Expecto
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
        test "lifting methods lists methods, solvers and step rules one per line" {
            let code, out, _ = lifting [ "methods" ]
            Expect.equal code 0 "exit 0"
            for name in [ "backprop"; "extraprop"; "gda"; "auglag"; "penalty"; "regularized"; "extragradient"; "adagrad" ] do
                Expect.stringContains out name $"lists {name}"
        }
        test "train on digits with --json ends with a JSON summary and writes a run folder" {
            let dir = tempDir ()
            let code, out, err = lifting [ "train"; "--epochs"; "2"; "--device"; "cpu"; "--json"; "--out"; dir ]
            Expect.equal code 0 $"exit 0: {err}"
            use doc = JsonDocument.Parse(lastLine out)
            let root = doc.RootElement
            for key in [ "test_accuracy"; "train_loss"; "epochs"; "seconds_per_epoch" ] do
                Expect.isTrue (root.TryGetProperty(key) |> fst) $"summary has {key}"
            Expect.isGreaterThan (root.GetProperty("test_accuracy").GetDouble()) 0.8 "2 epochs on digits already learn"
            for f in [ "config.json"; "metrics.jsonl"; "summary.json"; "weights.bin" ] do
                Expect.isTrue (File.Exists(Path.Combine(dir, f))) $"run folder has {f}"
            Expect.equal (File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Length) 2 "one metrics line per epoch"
            Expect.isEmpty (Directory.GetFiles(dir, "*.tmp")) "no temporary files left"
        }
        test "unknown names and bad values give one line and exit code 2" {
            expectUsageError [ "train"; "--method"; "magic" ] "magic"
            expectUsageError [ "train"; "--data"; "nonesuch" ] "nonesuch"
            expectUsageError [ "train"; "--activation"; "swish" ] "swish"
            expectUsageError [ "train"; "--solver"; "newton" ] "newton"
            expectUsageError [ "train"; "--lr"; "-1" ] "--lr"
            expectUsageError [ "train"; "--lr"; "NaN" ] "--lr"
            expectUsageError [ "train"; "--epochs"; "0" ] "--epochs"
            expectUsageError [ "train"; "--net"; "784-256-10" ] "64"
            expectUsageError [ "train"; "--frobnicate" ] "frobnicate"
            expectUsageError [ "train"; "--schedule"; "linear" ] "linear"
            expectUsageError [ "train"; "--settle"; "1" ] "--settle"
            expectUsageError [ "train"; "--method"; "extraprop"; "--settle-states"; "0" ] "--settle-states"
            expectUsageError [ "train"; "--method"; "backprop"; "--settle"; "0.2" ] "per-example"
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
