module Lifting.Tests.BadInputTests

open System
open System.IO
open Expecto
open Lifting.Data
open Lifting.Host
open Lifting.Tests.HostTests

/// Every file of a folder (relative path → bytes), to show that a refused command changed nothing.
let snapshot (dir: string) =
    Directory.GetFiles(dir, "*", SearchOption.AllDirectories)
    |> Array.map (fun f -> Path.GetRelativePath(dir, f), File.ReadAllBytes f)
    |> Array.sortBy fst

/// An earlier, completed run (one epoch), and the files it holds.
let earlier =
    lazy (
        let dir = newDir ()
        let code, _, err = lifting [ "train"; "--net"; "64-16-10"; "--epochs"; "1"; "--out"; dir ]
        if code <> 0 then failwith $"the earlier run failed: {err}"
        dir)

let scratch = lazy (tempDir ())

let file (name: string) (text: string) =
    let path = Path.Combine(scratch.Force(), name)
    File.WriteAllText(path, text)
    path

/// An IDX folder whose test images (20×20) differ from its training images (28×28).
let mismatchedIdx =
    lazy (
        let dir = Path.Combine(scratch.Force(), "idx-mismatch")
        Directory.CreateDirectory dir |> ignore
        Idx.WriteImages(Path.Combine(dir, "train-images-idx3-ubyte"), IdxImages(30, 28, 28, Array.zeroCreate (30 * 28 * 28)), false)
        Idx.WriteLabels(Path.Combine(dir, "train-labels-idx1-ubyte"), Array.init 30 (fun i -> byte (i % 10)), false)
        Idx.WriteImages(Path.Combine(dir, "t10k-images-idx3-ubyte"), IdxImages(5, 20, 20, Array.zeroCreate (5 * 20 * 20)), false)
        Idx.WriteLabels(Path.Combine(dir, "t10k-labels-idx1-ubyte"), Array.init 5 byte, false)
        dir)

/// (what is wrong, the arguments, a fragment the one-line message must hold). Every case must
/// fail with exit code 2 before anything is written: the earlier run folder stays byte for byte.
let cases () : (string * string list * string) list =
    let e = earlier.Force()
    [ // The cases listed under "Why" in issue 11.
      "a network too large for memory (would crash LibTorch)", [ "train"; "--net"; "64-500000000-10" ], "memory is available"
      "IDX test images of another size than the training images", [ "train"; "--data"; mismatchedIdx.Force() ], "1×28×28 but test examples are 1×20×20"
      "a CSV too small to leave examples for every split", [ "train"; "--data"; file "tiny.csv" "a,b,y\n1,2,x\n3,4,z\n" ], "leave none for training"
      "/dev/zero as data (never ends)", [ "train"; "--data"; "/dev/zero" ], "not a text (CSV) file"
      "an invalid --config with --force into the earlier folder", [ "train"; "--config"; file "bad.json" "{ \"epochs\": \"many\" }"; "--out"; e; "--force" ], "'many' is not an integer"
      "a network that does not fit the data, with --force into the earlier folder", [ "train"; "--net"; "784-256-10"; "--out"; e; "--force" ], "784 inputs"
      "a truncated --config", [ "train"; "--config"; file "cut.json" "{ \"epochs\": 3" ], "malformed JSON"
      "a run's own config back into its own folder", [ "train"; "--config"; Path.Combine(e, "config.json"); "--out"; e ], "not empty"
      "reusing a non-empty run folder", [ "train"; "--out"; e ], "--force"
      // Names and values.
      "an unknown method", [ "train"; "--method"; "magic" ], "Unknown method 'magic'"
      "an unknown dataset", [ "train"; "--data"; "nonesuch" ], "unknown dataset 'nonesuch'"
      "an unknown activation", [ "train"; "--activation"; "swish" ], "swish"
      "an unknown solver", [ "train"; "--solver"; "newton" ], "newton"
      "a negative step size", [ "train"; "--lr"; "-1" ], "lr: '-1'"
      "a NaN step size", [ "train"; "--lr"; "NaN" ], "lr: 'NaN'"
      "zero epochs", [ "train"; "--epochs"; "0" ], "--epochs: 0 must be a positive integer"
      "zero threads", [ "train"; "--threads"; "0" ], "--threads: 0"
      "an unknown device", [ "train"; "--device"; "quantum" ], "quantum"
      "an unsupported dtype", [ "train"; "--dtype"; "float16" ], "Unknown dtype 'float16'"
      "a network for other inputs", [ "train"; "--net"; "784-256-10" ], "784 inputs but the data has 64"
      "a zoo network for larger images", [ "train"; "--net"; "lenet5" ], "at least 12×12"
      "a malformed layer list", [ "train"; "--net"; "conv:6,relu,dense:10" ], "conv:6"
      "a single block for a lifted method", [ "train"; "--method"; "extraprop"; "--net"; "64-10" ], "a single block"
      "an unknown option", [ "train"; "--frobnicate" ], "frobnicate"
      "another method's parameter", [ "train"; "--method"; "backprop"; "--settle"; "0.2" ], "no parameter 'settle'"
      "a stray argument", [ "train"; "extra" ], "unexpected argument 'extra'"
      "an unknown command", [ "frobnicate" ], "frobnicate"
      "a solver that cannot play a saddle point", [ "train"; "--method"; "extraprop"; "--solver"; "alternating" ], "saddle-point"
      "a settle fraction of 1", [ "train"; "--method"; "extraprop"; "--settle"; "1" ], "settle: '1'"
      "a validation fraction of 1", [ "train"; "--validation-fraction"; "1" ], "--validation-fraction"
      "early stopping without a validation split", [ "train"; "--validation-fraction"; "0"; "--patience"; "2" ], "validation split"
      "a max loss ratio of 1", [ "train"; "--max-loss-ratio"; "1" ], "--max-loss-ratio"
      // CSV data.
      "a CSV row with too few fields", [ "train"; "--data"; file "short.csv" "1,2,a\n3,b\n" ], "line 2 has 2 fields"
      "a CSV label column that does not exist", [ "train"; "--data"; file "named.csv" "x,y,label\n1,2,a\n3,4,b\n5,6,a\n7,8,b\n9,0,a\n"; "--label"; "kind" ], "no column 'kind'"
      "a CSV with a single class", [ "train"; "--data"; file "one.csv" "1,2,a\n3,4,a\n5,6,a\n" ], "single class"
      "a label column for data that is not CSV", [ "train"; "--label"; "3" ], "CSV data only"
      "a test fraction outside (0, 1)", [ "train"; "--test-fraction"; "1.5" ], "--test-fraction: 1.5 must be > 0 and < 1"
      // Other commands.
      "resuming a completed run", [ "resume"; e ], "completed; nothing to resume"
      "resuming a folder that is not a run", [ "resume"; scratch.Force() ], "not a run folder"
      "evaluating on data of another shape", [ "eval"; e; "--data"; "mnist-10k" ], "the network takes 1×8×8"
      "evaluating unknown weights", [ "eval"; e; "--weights"; "best" ], "--weights: 'best'"
      "comparing a folder that does not exist", [ "compare"; Path.Combine(e, "nope") ], "no such run folder"
      "--out naming a file", [ "train"; "--out"; Path.Combine(e, "config.json") ], "a file of that name exists"
      "a sweep axis with a bad value", [ "sweep"; file "grid.json" """{ "base": { "epochs": 1 }, "axes": { "batch": [32, -1] } }""" ], "batch: -1 must be a positive integer"
      "a sweep file without axes", [ "sweep"; file "noaxes.json" """{ "base": { "epochs": 1 } }""" ], "\"axes\""
      "a demo with zero seeds", [ "demo"; "--seeds"; "0" ], "--seeds: 0 must be a positive integer"
      "a bench method parameter without a value", [ "bench"; "--methods"; "backprop,distprop:samples" ], "Invalid parameter 'samples'"
      "a bench method parameter the method does not have", [ "bench"; "--methods"; "backprop:settle=0.2" ], "no parameter 'settle'"
      "a bench method parameter given twice", [ "bench"; "--methods"; "distprop:eps=0.1;eps=0.2" ], "'eps' given twice" ]

[<Tests>]
let tests =
    testList "BadInputTests" [
        test "every kind of bad input gets one line naming the problem, exit code 2, and leaves an earlier run folder unchanged" {
            let e = earlier.Force()
            let before = snapshot e
            let all = cases ()
            Expect.isGreaterThanOrEqual all.Length 20 "at least 20 kinds"
            for what, args, fragment in all do
                let code, _, err = lifting args
                Expect.equal code 2 $"{what}: exit code 2 for %A{args}; stderr: {err}"
                let lines = err.Trim().Split('\n')
                Expect.equal lines.Length 1 $"{what}: one line: {err}"
                Expect.stringContains err "lifting: error: " $"{what}: an error line"
                Expect.stringContains err fragment $"{what}: the message names the problem"
                let after = snapshot e
                Expect.equal (after |> Array.map fst) (before |> Array.map fst) $"{what}: the earlier run folder has the same files"
                for (name, a), (_, b) in Array.zip after before do
                    Expect.sequenceEqual a b $"{what}: {name} unchanged"
        }

        test "a run folder held by a training process is refused to train --force and to resume (one line, exit 2, its config untouched), and freed when that process is killed" {
            let dir = newDir ()
            let args = [ "train"; "--net"; "64-16-10"; "--epochs"; "100000"; "--plain"; "--out"; dir ]
            use running = match Diagnostics.Process.Start(startInfo args) with null -> failwith "could not start dotnet" | p -> p
            // The holder is killed however the checks end, so a failing check leaves no process behind.
            try
                let config = Path.Combine(dir, "config.json")
                let waited = Diagnostics.Stopwatch.StartNew()
                while not (File.Exists config) && not running.HasExited && waited.Elapsed < TimeSpan.FromMinutes 2.0 do
                    Threading.Thread.Sleep 100
                Expect.isFalse running.HasExited "the long run is training"
                Expect.isTrue (File.Exists config) "the long run has written its config"
                let before = File.ReadAllBytes config
                for what, refused in [ "train --force into it", [ "train"; "--net"; "64-16-10"; "--epochs"; "1"; "--out"; dir; "--force" ]
                                       "resume it", [ "resume"; dir ] ] do
                    let code, _, err = lifting refused
                    Expect.equal code 2 $"{what}: exit code 2; stderr: {err}"
                    Expect.equal (err.Trim().Split('\n').Length) 1 $"{what}: one line: {err}"
                    Expect.stringContains err "in use by another run" $"{what}: the message says the folder is in use"
                    Expect.sequenceEqual (File.ReadAllBytes config) before $"{what}: config.json unchanged"
            finally
                if not running.HasExited then running.Kill true
                running.WaitForExit()
            let code, _, err = lifting [ "train"; "--net"; "64-16-10"; "--epochs"; "1"; "--out"; dir; "--force" ]
            Expect.equal code 0 $"after the holder was killed the folder is free: {err}"
            Expect.isFalse (File.Exists(Path.Combine(dir, RunFolder.LockFile))) "the lock file is removed when a run ends"
        }

        test "two runs given the same numbered default folder (started in the same second) get two folders, and a held folder refuses a forced run" {
            let stem = Path.Combine(tempDir (), "run")
            use first = RunFolder.ForNumbered stem
            use second = RunFolder.ForNumbered stem
            Expect.equal second.Path first.Path "both pick the same free name before either is created"
            first.Create()
            second.Create()
            Expect.equal first.Path (Path.GetFullPath stem) "the first run takes the name"
            Expect.equal second.Path (Path.GetFullPath(stem + "-2")) "the second run moves on to the next number"
            let forced = RunFolder.ForNewRun(first.Path, true)
            let error = Expect.throwsC (fun () -> forced.Create()) id
            Expect.stringContains error.Message "in use by another run" "a forced run into a held folder is refused"
        }
    ]
