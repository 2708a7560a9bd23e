module Lifting.Tests.HostTests

open System
open System.IO
open System.Text.Json
open System.Threading
open Expecto
open Lifting
open Lifting.Host

/// libc's kill(2): sends a signal to a process.
module Posix =
    [<System.Runtime.InteropServices.DllImport("libc", SetLastError = true)>]
    extern int kill(int pid, int signal)
    let SIGINT = 2
    let SIGTERM = 15

/// Runs the `lifting` command in-process; returns exit code, stdout and stderr.
let lifting (args: string list) =
    use out = new StringWriter()
    use err = new StringWriter()
    let code = Cli.Run(Array.ofList args, out, err)
    code, out.ToString(), err.ToString()

/// A writer that signals `cancel` once a line containing `fragment` has been written (the plain
/// progress prints one line per epoch, after the epoch's checkpoint).
type CancelOnLine(fragment: string, cancel: CancellationTokenSource) =
    inherit StringWriter()
    override this.WriteLine(value: string | null) =
        base.WriteLine(value)
        match value with
        | null -> ()
        | v -> if v.Contains(fragment) then cancel.Cancel()

/// Single shooting whose weights turn NaN at the end of epoch `at`: a run that diverges after good
/// epochs.
type PoisonedAt(at: int) =
    let inner = Lifting.Formulations.SingleShooting.Instance :> Lifting.Formulations.IFormulation
    interface Lifting.Formulations.IFormulation with
        member _.Name = "poisoned"
        member _.Description = "backprop whose weights turn NaN at the end of a given epoch (tests)"
        member _.PlayerNames = inner.PlayerNames
        member _.HasMaximisingPlayers = false
        member _.DefaultSchedule = inner.DefaultSchedule
        member this.Lift(context, weights) = new PoisonedProblem(this, inner.Lift(context, weights), at) :> Lifting.Formulations.ILiftedProblem

and PoisonedProblem(owner: Lifting.Formulations.IFormulation, inner: Lifting.Formulations.ILiftedProblem, at: int) =
    let state = inner :?> Lifting.Formulations.ICheckpointable
    interface Lifting.Formulations.ILiftedProblem with
        member _.Formulation = owner
        member _.Weights = inner.Weights
        member _.Store = inner.Store
        member _.StateBytes = inner.StateBytes
        member _.Batch(batch) = inner.Batch(batch)
        member _.EndEpoch(epoch) =
            inner.EndEpoch(epoch)
            if epoch = at then
                use _ = TorchSharp.torch.no_grad()
                inner.Weights.Tensors.[0].fill_(TorchSharp.Scalar.op_Implicit Double.NaN) |> ignore
        member _.Finish() = inner.Finish()
        member _.MeasureDefects(rows) = inner.MeasureDefects(rows)
        member _.Diagnostics = inner.Diagnostics
        member _.Dispose() = inner.Dispose()
    interface Lifting.Formulations.ICheckpointable with
        member _.StateTensors = state.StateTensors
        member _.StateScalars = state.StateScalars
        member _.RestoreScalars(scalars) = state.RestoreScalars(scalars)

/// A method in the catalog whose run diverges at the end of epoch 2 (registered once per process).
let poisonedMethod =
    lazy (
        let name = "test-nan-after-epoch-2"
        let parameters = Array.append [| PlayerRules.Solver("gda") |] (PlayerRules.StepRule("weights", "adam", 1e-3))
        let build (a: MethodArguments) =
            let f = PoisonedAt 2 :> Lifting.Formulations.IFormulation
            MethodParts(f, PlayerRules.Solver(a, f, null), PlayerRules.Build(a, f))
        Methods.Register(MethodDefinition(name, "backprop whose weights turn NaN at the end of epoch 2 (tests)", parameters, Func<MethodArguments, MethodParts> build, Family = "backprop"))
        name)

/// Runs `lifting` in-process under a cancellation token signalled by `cancelWhen`.
let liftingCancelled (args: string list) (cancelWhen: CancellationTokenSource -> TextWriter) =
    use cts = new CancellationTokenSource()
    use out = cancelWhen cts
    use err = new StringWriter()
    let code = Cli.Run(Array.ofList args, out, err, cts.Token, false)
    code, out.ToString(), err.ToString()

let lastLine (text: string) = text.TrimEnd().Split('\n') |> Array.last

let tempDir () = Lifting.Tests.Support.scratchDir "host"

/// A folder name that does not exist yet.
let newDir () = Path.Combine(tempDir (), "run")

let liftingDll = Path.Combine(AppContext.BaseDirectory, "lifting.dll")

let startInfo (args: string list) =
    let dotnet = match Environment.GetEnvironmentVariable "DOTNET_HOST_PATH" with null | "" -> "dotnet" | p -> p
    let info = Diagnostics.ProcessStartInfo(dotnet, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
    info.ArgumentList.Add liftingDll
    for a in args do info.ArgumentList.Add a
    info

/// Runs the `lifting` command in a separate process (the built host next to the tests).
let liftingProcess (args: string list) =
    use p = match Diagnostics.Process.Start(startInfo args) with null -> failwith "could not start dotnet" | p -> p
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    p.ExitCode, out.Result, err.Result

let expectUsageError args (fragment: string) =
    let code, _, err = lifting args
    Expect.equal code 2 $"exit code 2 for %A{args}: {err}"
    let lines = err.Trim().Split('\n')
    Expect.equal lines.Length 1 $"one line: {err}"
    Expect.stringContains err fragment $"message names the problem: {err}"

let readJson (path: string) = JsonDocument.Parse(File.ReadAllText path).RootElement.Clone()

/// A string property ("" when null).
let text (e: JsonElement) (key: string) = match e.GetProperty(key).GetString() with null -> "" | s -> s

let bytes (dir: string) (file: string) = File.ReadAllBytes(Path.Combine(dir, file))

/// Trains, interrupts, resumes and compares with an uninterrupted run of the same settings: the
/// weights (final and selected), the metrics and the summary must be identical byte for byte.
let resumeEquivalence (settings: string list) (interrupt: CancellationTokenSource -> TextWriter) =
    let whole, broken = newDir (), newDir ()
    let code, _, err = lifting ([ "train" ] @ settings @ [ "--out"; whole ])
    Expect.equal code 0 $"uninterrupted run: {err}"
    let code, _, err = liftingCancelled ([ "train" ] @ settings @ [ "--out"; broken ]) interrupt
    Expect.equal code 130 $"interrupted run exits 130: {err}"
    Expect.equal (text (readJson (Path.Combine(broken, "summary.json"))) "status") "interrupted" "summary says interrupted"
    Expect.isTrue (File.Exists(Path.Combine(broken, "checkpoint.safetensors"))) "a checkpoint is saved"
    Expect.isFalse (File.Exists(Path.Combine(broken, "weights.safetensors"))) "no final weights yet"
    let code, _, err = lifting [ "resume"; broken ]
    Expect.equal code 0 $"resume: {err}"
    for f in [ "weights.safetensors"; "weights-selected.safetensors"; "metrics.jsonl"; "summary.json"; "config.json" ] do
        Expect.sequenceEqual (bytes broken f) (bytes whole f) $"{f}: the resumed run ends bit for bit as the uninterrupted one"

let afterEpoch k = fun (cts: CancellationTokenSource) -> new CancelOnLine($"epoch   {k}/", cts) :> TextWriter
/// Cancelled before training starts: the trainer stops after the first mini-batch, mid-epoch.
let afterFirstBatch = fun (cts: CancellationTokenSource) -> cts.Cancel(); new StringWriter() :> TextWriter

/// Starts a 20-epoch run in a separate process, sends it `signal` once its first epoch is done,
/// and checks the interrupted run folder and its resume. The child starts with SIGINT at its
/// default disposition (`env --default-signal`): launched from a background job, it would inherit
/// SIGINT ignored, and .NET, like any Unix program, keeps a signal ignored at startup ignored.
let interruptedBySignal (signal: int) =
    let dir = newDir ()
    let info = startInfo [ "train"; "--method"; "extraprop"; "--net"; "64-32-32-10"; "--epochs"; "20"; "--plain"; "--out"; dir ]
    info.ArgumentList.Insert(0, info.FileName)
    info.ArgumentList.Insert(0, "--default-signal=INT")
    info.FileName <- "env"
    use p = match Diagnostics.Process.Start info with null -> failwith "could not start dotnet" | p -> p
    let err = p.StandardError.ReadToEndAsync()
    let mutable signalled = false
    while not signalled do
        match p.StandardOutput.ReadLine() with
        | null -> failwith $"the run ended before its first epoch: {err.Result}"
        | line when line.StartsWith("epoch   1/") ->
            Expect.equal (Posix.kill(p.Id, signal)) 0 $"signal {signal} sent"
            signalled <- true
        | _ -> ()
    p.StandardOutput.ReadToEnd() |> ignore
    p.WaitForExit()
    Expect.equal p.ExitCode 130 $"exit 130: {err.Result}"
    let summary = readJson (Path.Combine(dir, "summary.json"))
    Expect.equal (text summary "status") "interrupted" "status interrupted"
    Expect.stringContains (text summary "message") "resume" "the summary says how to continue"
    use checkpoint = Lifting.Storage.Checkpoint.Load(Path.Combine(dir, "checkpoint.safetensors"))
    Expect.isGreaterThanOrEqual checkpoint.State.CompletedEpochs 1 "the checkpoint is at or after the first epoch"
    Expect.equal (File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Length) checkpoint.State.CompletedEpochs "metrics hold exactly the epochs done"
    let code, _, err = liftingProcess [ "resume"; dir; "--plain" ]
    Expect.equal code 0 $"resume: {err}"
    Expect.equal (text (readJson (Path.Combine(dir, "summary.json"))) "status") "completed" "completed after resume"
    Expect.equal (File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Length) 20 "every epoch once in the metrics"

[<Tests>]
let tests =
    testList "HostTests" [
        test "lifting --help and every command's --help print usage and exit 0" {
            let code, out, _ = lifting [ "--help" ]
            Expect.equal code 0 "exit 0"
            for command in [ "train"; "resume"; "demo"; "sweep"; "compare"; "plot"; "eval"; "methods"; "bench" ] do
                Expect.stringContains out command $"root help lists {command}"
                let code, out, err = lifting [ command; "--help" ]
                Expect.equal code 0 $"{command} --help exits 0: {err}"
                Expect.stringContains out $"lifting {command}" $"{command} --help shows its usage"
            let _, out, _ = lifting [ "train"; "--method"; "extraprop"; "--help" ]
            for p in Methods.Find("extraprop").Parameters do
                Expect.stringContains out $"--{p.Name}" $"train --method extraprop --help lists --{p.Name}"
        }
        test "lifting methods lists every method on one line by family (under 60 lines), the solvers and the step rules; lifting methods NAME its parameters with their defaults" {
            let code, out, _ = lifting [ "methods" ]
            Expect.equal code 0 "exit 0"
            for name in [ "backprop"; "extraprop"; "gda"; "auglag"; "penalty"; "regularized"; "extragradient"; "adagrad" ] do
                Expect.stringContains out name $"lists {name}"
            let lines = out.TrimEnd().Split('\n')
            Expect.isLessThan lines.Length 60 $"one line per method: {lines.Length} lines"
            for family in [ "backprop:"; "lagrangian:"; "penalty:" ] do
                Expect.isTrue (lines |> Array.contains family) $"lists {family}"
            // Every name stands apart from its description, however long the name.
            for m in Methods.All do
                Expect.isTrue (lines |> Array.exists (fun l -> l.TrimStart(' ', '*').StartsWith(m.Name + " "))) $"{m.Name} is followed by a space"
            let code, details, _ = lifting [ "methods"; "extraprop" ]
            Expect.equal code 0 "exit 0"
            let lines = details.Split('\n')
            for parameter in Methods.Find("extraprop").Parameters do
                Expect.isTrue (lines |> Array.exists (fun l -> l.Contains($"--{parameter.Name} ") && l.Contains($" {parameter.Default} "))) $"lists extraprop's parameter {parameter.Name} with its default {parameter.Default}"
            expectUsageError [ "methods"; "nosuch" ] "Unknown method 'nosuch'"
        }
        test "the catalog names one representative per family, backprop first, the marked ones for the built-ins" {
            let reps = Methods.Representatives |> Seq.map (fun m -> m.Family, m.Name) |> List.ofSeq
            Expect.equal (List.head reps) ("backprop", "backprop") "backprop first"
            Expect.contains reps ("lagrangian", "extraprop") "extraprop stands for the Lagrangian family"
            Expect.contains reps ("penalty", "penalty") "penalty (MAC) stands for the penalty family"
            Expect.equal (reps |> List.map fst |> List.distinct |> List.length) reps.Length "one per family"
            let families = Methods.All |> Seq.map (fun m -> m.Family) |> Seq.distinct |> Seq.length
            Expect.equal reps.Length families "every family is represented"
        }
        test "train on digits with --json ends with a JSON summary and writes a complete run folder" {
            let dir = newDir ()
            let code, out, err = lifting [ "train"; "--epochs"; "2"; "--device"; "cpu"; "--json"; "--out"; dir ]
            Expect.equal code 0 $"exit 0: {err}"
            use doc = JsonDocument.Parse(lastLine out)
            let root = doc.RootElement
            for key in [ "status"; "validation_accuracy"; "test_accuracy"; "final_validation_accuracy"; "final_test_accuracy"; "selected_epoch"; "selected_by"; "train_loss"; "epochs"; "seconds_per_epoch"; "threads" ] do
                Expect.isTrue (root.TryGetProperty(key) |> fst) $"summary has {key}"
            Expect.equal (text root "status") "completed" "status"
            Expect.isGreaterThan (root.GetProperty("test_accuracy").GetDouble()) 0.8 "2 epochs on digits already learn"
            for f in [ "config.json"; "metrics.jsonl"; "summary.json"; "timing.json"; "checkpoint.safetensors"; "weights.safetensors"; "weights-selected.safetensors"; "plots/loss.png"; "plots/accuracy.png" ] do
                Expect.isTrue (File.Exists(Path.Combine(dir, f))) $"run folder has {f}"
            Expect.equal (File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Length) 2 "one metrics line per epoch"
            Expect.isEmpty (Directory.GetFiles(dir, "*.tmp", SearchOption.AllDirectories)) "no temporary files left"
        }
        test "two processes running one experiment write the same run files byte for byte (all but timing.json)" {
            let a, b = newDir (), newDir ()
            let args dir = [ "train"; "--data"; "digits"; "--net"; "64-32-10"; "--method"; "extraprop"; "--epochs"; "3"; "--threads"; "2"; "--device"; "cpu"; "--json"; "--out"; dir ]
            for dir in [ a; b ] do
                let code, _, err = liftingProcess (args dir)
                Expect.equal code 0 $"exit 0: {err}"
            for f in [ "weights.safetensors"; "weights-selected.safetensors"; "metrics.jsonl"; "summary.json"; "config.json" ] do
                Expect.sequenceEqual (bytes b f) (bytes a f) $"{f} identical"
            let root = readJson (Path.Combine(a, "config.json"))
            Expect.equal (root.GetProperty("threads").GetInt32()) 2 "the thread count is recorded"
            for key in [ "libtorch"; "torchsharp"; "device"; "cpu"; "vector-instructions" ] do
                Expect.isTrue (root.GetProperty("environment").TryGetProperty(key) |> fst) $"the environment records {key}"
            Expect.equal (root.GetProperty("settle").GetDouble()) 0.2 "the method's defaults are recorded"
            Expect.equal (text root "net") "64-32-10" "the network is recorded"
            Expect.isFalse (root.TryGetProperty("out") |> fst) "the config does not name its run folder"
        }
        test "a run's config.json repeats the run bit for bit into a new folder, resolved defaults included" {
            let a, b = newDir (), newDir ()
            // Separate processes: the config sets LibTorch's thread count, which is process-wide.
            // Two threads: before `VectorMath.Prepare`, this run repeated with other weights in about
            // one process in twelve (docs/engine.md, "Determinism").
            let code, _, err = liftingProcess [ "train"; "--data"; "digits"; "--method"; "auglag"; "--lr"; "0.003"; "--epochs"; "2"; "--threads"; "2"; "--out"; a ]
            Expect.equal code 0 $"first run: {err}"
            let config = readJson (Path.Combine(a, "config.json"))
            Expect.equal (text config "net") "64-128-10" "the default network is spelled out"
            Expect.equal (text config "device") "cpu" "the device is resolved"
            Expect.equal (config.GetProperty("c").GetDouble()) 1.0 "a method default is recorded"
            let code, _, err = liftingProcess [ "train"; "--config"; Path.Combine(a, "config.json"); "--out"; b ]
            Expect.equal code 0 $"repeat: {err}"
            for f in [ "weights.safetensors"; "config.json"; "metrics.jsonl"; "summary.json" ] do
                Expect.sequenceEqual (bytes b f) (bytes a f) $"{f}: same"
        }
        test "resume equivalence: backprop interrupted after epoch 1 ends bit for bit as the uninterrupted run" {
            resumeEquivalence [ "--net"; "64-16-10"; "--epochs"; "3"; "--device"; "cpu" ] (afterEpoch 1)
        }
        test "resume equivalence: extraprop (per-example states and multipliers, cosine schedule, settling) interrupted after epoch 2" {
            resumeEquivalence [ "--method"; "extraprop"; "--net"; "64-16-16-10"; "--epochs"; "4"; "--device"; "cpu" ] (afterEpoch 2)
        }
        test "resume equivalence: extraprop interrupted in the middle of its first epoch" {
            resumeEquivalence [ "--method"; "extraprop"; "--net"; "64-16-16-10"; "--epochs"; "2"; "--device"; "cpu" ] afterFirstBatch
        }
        test "resume equivalence: distprop with variates redrawn every step (the step count in the checkpoint) interrupted mid-epoch and after epoch 1" {
            let settings = [ "--method"; "distprop"; "--resample"; "true"; "--net"; "64-16-16-10"; "--epochs"; "2"; "--device"; "cpu" ]
            resumeEquivalence settings afterFirstBatch
            resumeEquivalence settings (afterEpoch 1)
        }
        test "resume equivalence: the penalty method with its growing μ interrupted after epoch 1" {
            resumeEquivalence [ "--method"; "penalty"; "--net"; "64-16-16-10"; "--epochs"; "3"; "--device"; "cpu" ] (afterEpoch 1)
            let dir = newDir ()
            let code, _, _ = liftingCancelled [ "train"; "--method"; "penalty"; "--net"; "64-16-16-10"; "--epochs"; "3"; "--out"; dir ] (afterEpoch 2)
            Expect.equal code 130 "interrupted"
            use checkpoint = Lifting.Storage.Checkpoint.Load(Path.Combine(dir, "checkpoint.safetensors"))
            Expect.floatClose Accuracy.veryHigh checkpoint.Scalars.["mu"] 2.25 "μ after two epochs (×1.5 each) is in the checkpoint"
        }
        test "Ctrl-C (SIGINT) in a separate process saves a checkpoint and an interrupted summary, exits 130; resume completes it" {
            interruptedBySignal Posix.SIGINT
        }
        test "SIGTERM (a scheduler's preemption) in a separate process saves a checkpoint and an interrupted summary, exits 130; resume completes it" {
            interruptedBySignal Posix.SIGTERM
        }
        test "a NaN stops the run as diverged: status, the block and variable named, exit 3, the last good checkpoint kept" {
            let dir = newDir ()
            let code, _, err = lifting [ "train"; "--method"; "extraprop"; "--net"; "64-16-16-10"; "--epochs"; "3"; "--lr-states"; "1e30"; "--out"; dir ]
            Expect.equal code 3 $"exit 3: {err}"
            let summary = readJson (Path.Combine(dir, "summary.json"))
            Expect.equal (text summary "status") "diverged" "status diverged"
            let message = text summary "message"
            Expect.stringContains message "non-finite" "says what"
            Expect.stringContains message "block " "names the block"
            Expect.isTrue (message.Contains "weight" || message.Contains "per-example variable") $"names the variable: {message}"
            Expect.stringContains err "diverged" "one line on stderr says it diverged"
        }
        test "a finite blow-up (Adam with lr 1e6, loss ~1e11) stops as diverged in its first epoch, naming the block and variable" {
            let dir = newDir ()
            let code, _, err = lifting [ "train"; "--lr"; "1e6"; "--epochs"; "3"; "--out"; dir ]
            Expect.equal code 3 $"exit 3: {err}"
            let summary = readJson (Path.Combine(dir, "summary.json"))
            Expect.equal (text summary "status") "diverged" "status diverged"
            let message = text summary "message"
            Expect.stringContains message "times its start" "a blow-up relative to the start"
            Expect.stringContains message "block 1 weight" "names the block and variable of largest magnitude"
            Expect.isFalse (File.Exists(Path.Combine(dir, "checkpoint.safetensors"))) "no checkpoint of a diverged state"
            Expect.equal (File.ReadAllText(Path.Combine(dir, "metrics.jsonl"))) "" "no metrics of the diverged epoch"
            expectUsageError [ "resume"; dir ] "diverged"
        }
        test "a run that diverges after good epochs keeps the last good checkpoint, whose epochs the metrics hold" {
            let dir = newDir ()
            let code, _, err = lifting [ "train"; "--method"; poisonedMethod.Force(); "--net"; "64-16-10"; "--epochs"; "4"; "--out"; dir ]
            Expect.equal code 3 $"exit 3: {err}"
            let summary = readJson (Path.Combine(dir, "summary.json"))
            Expect.equal (text summary "status") "diverged" "status diverged"
            Expect.stringContains (text summary "message") "epoch 2" "names the epoch"
            Expect.stringContains (text summary "message") "block 1 weight dense(64→16).weight holds non-finite values" "names the block and variable"
            use checkpoint = Lifting.Storage.Checkpoint.Load(Path.Combine(dir, "checkpoint.safetensors"))
            Expect.equal checkpoint.State.CompletedEpochs 1 "the checkpoint is the last good epoch"
            Expect.equal (File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Length) 1 "the metrics hold the good epoch only"
            Expect.isTrue (File.Exists(Path.Combine(dir, "plots", "loss.png"))) "the good epochs are plotted"
        }
        test "eval reads the weights back through the library and reproduces the run's accuracies; other data is standardised with the run's statistics" {
            let dir = newDir ()
            let code, out, err = lifting [ "train"; "--epochs"; "2"; "--net"; "64-32-10"; "--json"; "--out"; dir ]
            Expect.equal code 0 err
            let summary = readJson (Path.Combine(dir, "summary.json"))
            let code, out, err = lifting [ "eval"; dir; "--json" ]
            Expect.equal code 0 err
            use doc = JsonDocument.Parse(lastLine out)
            Expect.floatClose Accuracy.high (doc.RootElement.GetProperty("test").GetProperty("accuracy").GetDouble()) (summary.GetProperty("test_accuracy").GetDouble()) "selected weights: the summary's test accuracy"
            Expect.floatClose Accuracy.high (doc.RootElement.GetProperty("validation").GetProperty("accuracy").GetDouble()) (summary.GetProperty("validation_accuracy").GetDouble()) "and its validation accuracy"
            let code, out, err = lifting [ "eval"; dir; "--weights"; "final"; "--json" ]
            Expect.equal code 0 err
            use doc = JsonDocument.Parse(lastLine out)
            Expect.floatClose Accuracy.high (doc.RootElement.GetProperty("test").GetProperty("accuracy").GetDouble()) (summary.GetProperty("final_test_accuracy").GetDouble()) "final weights: the final test accuracy"
        }
        test "--dtype float64 trains in double precision: the config records it, the weights file holds F64 tensors, and eval reproduces the run's accuracies" {
            let dir = newDir ()
            let code, _, err = lifting [ "train"; "--epochs"; "2"; "--net"; "64-32-10"; "--method"; "am-adam"; "--dtype"; "float64"; "--out"; dir ]
            Expect.equal code 0 err
            Expect.equal (text (readJson (Path.Combine(dir, "config.json"))) "dtype") "float64" "config.json records the dtype"
            let program = Lifting.Programs.NetSpec.Build("64-32-10", [| 64L |], 10, Lifting.Programs.Activations.ReLU, Lifting.Programs.Losses.CrossEntropy)
            use weights = Lifting.Storage.WeightsFile.Load(Path.Combine(dir, "weights.safetensors"), program)
            for t in weights.Tensors do Expect.equal t.dtype TorchSharp.torch.ScalarType.Float64 "every weight is float64"
            let summary = readJson (Path.Combine(dir, "summary.json"))
            let code, out, err = lifting [ "eval"; dir; "--json" ]
            Expect.equal code 0 err
            use doc = JsonDocument.Parse(lastLine out)
            Expect.floatClose Accuracy.high (doc.RootElement.GetProperty("test").GetProperty("accuracy").GetDouble()) (summary.GetProperty("test_accuracy").GetDouble()) "the summary's test accuracy"
        }
        test "a user's CSV trains end to end: header, string labels, per-feature standardisation; eval maps the labels by the run's classes" {
            let dir = tempDir ()
            let csv = Path.Combine(dir, "flowers.csv")
            let rng = Random(3)
            let lines =
                [ yield "petal,sepal,noise,species"
                  for i in 0 .. 299 do
                      let k = i % 3
                      let name = [| "setosa"; "versicolor"; "virginica" |].[k]
                      yield String.Format(Globalization.CultureInfo.InvariantCulture, "{0},{1},{2},{3}", 100.0 * float k + rng.NextDouble(), 0.01 * float k + 0.001 * rng.NextDouble(), rng.NextDouble(), name) ]
            File.WriteAllLines(csv, lines)
            let run = newDir ()
            let code, out, err = lifting [ "train"; "--data"; csv; "--label"; "species"; "--net"; "3-16-3"; "--epochs"; "15"; "--json"; "--out"; run ]
            Expect.equal code 0 err
            use doc = JsonDocument.Parse(lastLine out)
            Expect.isGreaterThan (doc.RootElement.GetProperty("test_accuracy").GetDouble()) 0.95 "separable classes are learnt"
            let config = readJson (Path.Combine(run, "config.json"))
            Expect.equal (config.GetProperty("test-fraction").GetDouble()) 0.2 "the CSV test fraction is resolved into the config"
            let code, out, err = lifting [ "eval"; run; "--data"; csv; "--label"; "species"; "--json" ]
            Expect.equal code 0 err
            use e = JsonDocument.Parse(lastLine out)
            Expect.isGreaterThan (e.RootElement.GetProperty("test").GetProperty("accuracy").GetDouble()) 0.95 "evaluated with the run's classes and statistics"
        }
        test "compare writes a Markdown table with one row per run and overlaid PNG curves" {
            let a, b, target = newDir (), newDir (), newDir ()
            for dir, m in [ a, "backprop"; b, "regularized" ] do
                let code, _, err = lifting [ "train"; "--method"; m; "--net"; "64-16-10"; "--epochs"; "2"; "--out"; dir ]
                Expect.equal code 0 err
            let code, out, err = lifting [ "compare"; a; b; "--out"; target ]
            Expect.equal code 0 err
            Expect.stringContains out "| run | method |" "a Markdown table"
            Expect.stringContains out "| backprop |" "backprop's row"
            Expect.stringContains out "| regularized |" "regularized's row"
            for f in [ "comparison.md"; "comparison.json"; "accuracy.png"; "loss.png"; "defect.png" ] do
                Expect.isTrue (File.Exists(Path.Combine(target, f))) $"writes {f}"
        }
        test "sweep runs the grid, seeds outermost, and writes one results table with mean ± sd over the seeds" {
            let dir = tempDir ()
            let file = Path.Combine(dir, "grid.json")
            File.WriteAllText(file, """{ "base": { "net": "64-16-16-10", "epochs": 2 }, "axes": { "method": ["backprop", "regularized"], "seed": [0, 1] } }""")
            let out = newDir ()
            let code, stdout, err = lifting [ "sweep"; file; "--out"; out; "--json" ]
            Expect.equal code 0 err
            let runs = Directory.GetDirectories(Path.Combine(out, "runs")) |> Array.map Path.GetFileName |> Array.sort
            Expect.sequenceEqual runs [| "001-seed-0_method-backprop"; "002-seed-0_method-regularized"; "003-seed-1_method-backprop"; "004-seed-1_method-regularized" |] "seed rounds, methods interleaved"
            let md = File.ReadAllText(Path.Combine(out, "results.md"))
            Expect.stringContains md "| backprop | backprop | 2/2 |" "one row per method over both seeds"
            Expect.stringContains md " ± " "mean ± sd"
            use rows = JsonDocument.Parse(lastLine stdout)
            Expect.equal (rows.RootElement.GetArrayLength()) 2 "two rows"
            Expect.equal (rows.RootElement.[0].GetProperty("ratio_to_backprop").GetDouble()) 1.0 "backprop is the time reference"
            Expect.isTrue (File.Exists(Path.Combine(out, "results.json"))) "results.json"
            Expect.isTrue (File.Exists(Path.Combine(out, "plots", "accuracy.png"))) "overlaid curves"
        }
        test "demo (README command 1) compares backprop with one method per family in a run folder" {
            let out = newDir ()
            // A separate process: the demo sets one LibTorch thread.
            let code, stdout, err = liftingProcess [ "demo"; "--epochs"; "1"; "--seeds"; "1"; "--plain"; "--out"; out ]
            Expect.equal code 0 err
            // The built-in families (a method a test registers in this process is not the demo's).
            for name, family in [ "backprop", "backprop"; "extraprop", "lagrangian"; "penalty", "penalty"; "fenchel-bp", "contrastive"
                                  "distprop", "distprop"; "am-adam", "alternating-minimisation" ] do
                Expect.stringContains stdout $"| {name} | {family} |" $"a row for {name}"
            Expect.isTrue (File.Exists(Path.Combine(out, "results.md"))) "the table"
            Expect.isTrue (File.Exists(Path.Combine(out, "plots", "accuracy.png"))) "the plots"
        }
        test "lifting bench runs methods side by side and reports ratios" {
            let code, out, err = lifting [ "bench"; "--data"; "digits"; "--net"; "64-32-10"; "--epochs"; "2"; "--repeats"; "2"; "--methods"; "backprop,extraprop"; "--device"; "cpu"; "--json" ]
            Expect.equal code 0 $"exit 0: {err}"
            use doc = JsonDocument.Parse(lastLine out)
            let rows = doc.RootElement.EnumerateArray() |> Array.ofSeq
            Expect.equal rows.Length 3 "one row per method, and the engine floor's last"
            Expect.equal (rows.[2].GetProperty("method").GetString()) Lifting.Host.Bench.FloorLabel "the floor row"
            Expect.equal (rows.[0].GetProperty("ratio").GetDouble()) 1.0 "the first method is the reference"
            Expect.isGreaterThan (rows.[1].GetProperty("per_example_bytes").GetInt64()) 0L "extraprop keeps per-example state"
            Expect.equal (rows.[0].GetProperty("per_example_bytes").GetInt64()) 0L "backprop keeps none"
        }
        test "lifting bench takes a method with changed parameters (NAME:PARAM=VALUE;...) and labels its row with them" {
            let code, out, err = lifting [ "bench"; "--data"; "digits"; "--net"; "64-32-10"; "--epochs"; "2"; "--repeats"; "1"; "--methods"; "extraprop,extraprop:inner=0;lr-states=0.25"; "--device"; "cpu"; "--json" ]
            Expect.equal code 0 $"exit 0: {err}"
            use doc = JsonDocument.Parse(lastLine out)
            let rows = doc.RootElement.EnumerateArray() |> Array.ofSeq
            Expect.equal [ for r in rows -> r.GetProperty("method").GetString() ] [ "extraprop"; "extraprop (inner=0, lr-states=0.25)"; Lifting.Host.Bench.FloorLabel ] "one row per entry, labelled with its parameters (the floor last)"
            Expect.notEqual (rows.[0].GetProperty("test_accuracy").GetDouble()) (rows.[1].GetProperty("test_accuracy").GetDouble()) "the parameters reach the run"
        }
        test "the config file is read and flags override it" {
            let dir = tempDir ()
            let cfg = Path.Combine(dir, "exp.json")
            File.WriteAllText(cfg, "{ \"epochs\": 1, \"method\": \"backprop\", \"batch\": 128 }")
            let code, out, err = lifting [ "train"; "--config"; cfg; "--device"; "cpu"; "--json"; "--epochs"; "2"; "--out"; newDir () ]
            Expect.equal code 0 $"exit 0: {err}"
            use doc = JsonDocument.Parse(lastLine out)
            Expect.equal (doc.RootElement.GetProperty("epochs").GetInt32()) 2 "the flag overrides the file"
        }
        test "any architecture: a layer list with a convolution and an explicit cut trains by a lifted method" {
            let dir = newDir ()
            let code, _, err = lifting [ "train"; "--method"; "extraprop"; "--net"; "conv:4:3:1:1,relu,maxpool:2,cut,dense:16,relu,dense:10"; "--epochs"; "1"; "--out"; dir ]
            Expect.equal code 0 err
            let summary = readJson (Path.Combine(dir, "summary.json"))
            Expect.equal (text summary "net") "conv:4:3:1:1,relu,maxpool:2,cut,dense:16,relu,dense:10" "the layer list is recorded"
            Expect.isGreaterThan (summary.GetProperty("per_example_bytes").GetInt64()) 0L "lifted at the cuts"
        }
    ]
