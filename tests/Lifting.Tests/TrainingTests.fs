module Lifting.Tests.TrainingTests

open System
open Expecto
open TorchSharp
open Lifting
open Lifting.Data
open Lifting.Programs
open Lifting.Formulations
open Lifting.Training
open Lifting.Tests.Support

let digits = lazy (DatasetCatalog.Load "digits")

let digitsMlp hidden = Net.Mlp(digits.Force().Train.ExampleShape, [| 64L; hidden; 10L |], Activations.ReLU, Losses.CrossEntropy)

let trainWith (settings: MethodSettings) (program: NestedProgram) (options: TrainingOptions) =
    let m = Methods.Resolve(settings)
    Trainer.Train(program, digits.Force(), m.Formulation, m.Solver, m.StepRules, options)

let train (methodName: string) epochs seed =
    trainWith (MethodSettings methodName) (digitsMlp 128L) (TrainingOptions(Epochs = epochs, BatchSize = 64, Seed = seed))

let sameWeights (a: Weights) (b: Weights) =
    Seq.forall2 (fun (u: torch.Tensor) (v: torch.Tensor) -> (u - v).abs().max().ToDouble() = 0.0) a.Tensors b.Tensors

/// Trains with the method's formulation wrapped in a `Recording`.
let record (settings: MethodSettings) (program: NestedProgram) (options: TrainingOptions) =
    let m = Methods.Resolve(settings)
    let log = Log()
    let result = Trainer.Train(program, digits.Force(), Recording(m.Formulation, log), m.Solver, m.StepRules, options)
    result, log

[<Tests>]
let tests =
    testList "TrainingTests" [
        test "ExtraProp's defaults carry over to a three-hidden-layer ReLU net cut once before its last layer: within 2 points of backprop on digits, final defect below 1e-2" {
            // docs/methods.md, "Other networks": the same defaults diverge with a cut after every
            // hidden layer (a constraint with a state on both sides); one cut carries over.
            let net cut = NetSpec.Build($"dense:64, relu, dense:64, relu, dense:64, relu, {cut} dense:10", digits.Force().Train.ExampleShape, 10, Activations.ReLU, Losses.CrossEntropy)
            let options () = TrainingOptions(Epochs = 30, BatchSize = 64, Seed = 0)
            use lifted = trainWith (MethodSettings "extraprop") (net "cut,") (options ())
            use reference = trainWith (MethodSettings "backprop") (net "") (options ())
            let accuracy (r: TrainingResult) = r.Selected.TestAccuracy
            Expect.isGreaterThanOrEqual (accuracy lifted) (accuracy reference - 0.02) $"ExtraProp {accuracy lifted:F4} against backprop {accuracy reference:F4}"
            Expect.isLessThan lifted.FinalDefect 1e-2 "the constraints hold at the end"
        }
        test "backprop trains the digits MLP to >= 0.95 test accuracy at the epoch selected on validation (the default job)" {
            use result = train "backprop" 20 0
            Expect.isGreaterThanOrEqual result.Selected.TestAccuracy 0.95 $"test accuracy {result.Selected.TestAccuracy}"
            Expect.equal result.Epochs.Count 20 "one metrics row per epoch"
            Expect.isTrue (result.Epochs |> Seq.forall (fun m -> Double.IsFinite m.TrainLoss)) "finite losses"
        }
        test "the selected epoch is the one with the best validation accuracy, and its test accuracy is the one reported" {
            use result = train "backprop" 8 1
            let validation = [ for e in result.Epochs -> e.ValidationAccuracy.Value ]
            let best = List.max validation
            Expect.equal result.SelectedBy Selection.ValidationAccuracy "selected on validation"
            Expect.equal result.SelectedEpoch (1 + List.findIndex ((=) best) validation) "the first epoch with the best validation accuracy"
            Expect.equal result.Selected.TestAccuracy result.Epochs.[result.SelectedEpoch - 1].TestAccuracy "its test accuracy, whatever the other epochs' test accuracies"
        }
        test "the selected weights are the weights at the end of the selected epoch" {
            use result = train "backprop" 6 2
            use again = train "backprop" result.SelectedEpoch 2
            Expect.isTrue (sameWeights result.SelectedWeights again.Weights) "a run stopped at the selected epoch ends with the selected weights"
        }
        test "without a validation split the last epoch is selected and early stopping is refused" {
            use data = DatasetCatalog.Load("digits", DataOptions(ValidationFraction = 0.0))
            Expect.equal data.Validation.Count 0 "no validation examples"
            let m = Methods.Resolve "backprop"
            let program = digitsMlp 32L
            use result = Trainer.Train(program, data, m.Formulation, m.Solver, m.StepRules, TrainingOptions(Epochs = 3))
            Expect.equal result.SelectedBy Selection.LastEpoch "nothing to select on"
            Expect.equal result.SelectedEpoch 3 "the last epoch"
            Expect.isNone (Option.ofNullable result.Selected.ValidationAccuracy) "no validation accuracy"
            let ex = Expect.throwsC (fun () -> Trainer.Train(program, data, m.Formulation, m.Solver, m.StepRules, TrainingOptions(Epochs = 3, Patience = 2)) |> ignore) id
            Expect.stringContains ex.Message "validation" "the message says what is missing"
        }
        test "early stopping stops once the validation accuracy has not improved for `patience` epochs" {
            let settings = MethodSettings("backprop").With("lr", 0.05)
            use result = trainWith settings (digitsMlp 16L) (TrainingOptions(Epochs = 200, Patience = 2))
            Expect.isLessThan result.Epochs.Count 200 "stopped before the budget"
            Expect.isTrue result.StoppedEarly "reported"
            Expect.equal result.Epochs.Count (result.SelectedEpoch + 2) "two epochs without a better validation accuracy after the selected one"
            let validation = [ for e in result.Epochs -> e.ValidationAccuracy.Value ]
            Expect.isTrue (validation |> List.skip result.SelectedEpoch |> List.forall (fun v -> v <= validation.[result.SelectedEpoch - 1])) "no later epoch is better on validation"
        }
        test "the same seed gives identical weights; another seed does not" {
            use a = train "backprop" 2 5
            use b = train "backprop" 2 5
            use c = train "backprop" 2 6
            Expect.isTrue (sameWeights a.Weights b.Weights) "same seed, same weights"
            Expect.isFalse (sameWeights a.Weights c.Weights) "a different seed gives different weights"
        }
        test "a lifted run is deterministic for a seed too" {
            use a = train "extraprop" 2 1
            use b = train "extraprop" 2 1
            Expect.isTrue (sameWeights a.Weights b.Weights) "same seed, same weights"
            Expect.equal a.FinalDefect b.FinalDefect "same defect"
        }
        testSequenced <| test "training leaves no tensor behind: the live count returns to where it was" {
            // Every mini-batch and evaluation runs in a dispose scope; per-example state is freed
            // with the lifted problem. Only the returned weights outlive the run.
            let live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount
            for methodName in [ "backprop"; "extraprop"; "penalty" ] do
                (train methodName 1 3).Dispose()
                let before = live ()
                let result = train methodName 3 3
                result.Dispose()
                Expect.equal (live ()) before $"{methodName}: no tensor outlives the run"
        }
        test "every epoch visits every training example exactly once; every mini-batch, the last smaller one included, is stepped alike and committed" {
            let n = digits.Force().Train.Count
            let result, log = record (MethodSettings "extraprop") (digitsMlp 16L) (TrainingOptions(Epochs = 2, BatchSize = 100))
            use _ = result
            for epoch in 1 .. 2 do
                let batches = [ for (e, rows) in log.Batches do if e = epoch then rows ]
                Expect.equal batches.Length ((n + 99) / 100) $"epoch {epoch}: ceil(N / B) mini-batches"
                Expect.equal (List.last batches).Length (n % 100) $"epoch {epoch}: the last mini-batch holds the remainder"
                Expect.sequenceEqual (batches |> Array.concat |> Array.sort) [| 0L .. int64 n - 1L |] $"epoch {epoch}: a permutation of the training examples"
            // ExtraProp: one inner extragradient iteration on the rows and one outer one, 4 evaluations.
            Expect.sequenceEqual log.Evaluations (Array.create log.Batches.Count 4) "every mini-batch's game is stepped with the same evaluations"
            Expect.isTrue (Seq.forall id log.Committed) "every mini-batch's rows are written back"
        }
        test "while a schedule holds the weights, the trainer restricts the game to the moving players" {
            // 5 epochs, the last 2 settling: no operator evaluation asks for the weights then.
            let settings = MethodSettings("extraprop").With("settle", 0.4)
            let result, log = record settings (digitsMlp 16L) (TrainingOptions(Epochs = 5, BatchSize = 128))
            use _ = result
            let asksWeights epoch = log.Requests |> Seq.exists (fun (e, players) -> e = epoch && Array.contains PlayerNames.Weights players)
            Expect.isTrue (asksWeights 3) "the weights learn in the last learning epoch"
            Expect.isFalse (asksWeights 4 || asksWeights 5) "the settling epochs never evaluate the weights' operator"
            Expect.isTrue (log.Requests |> Seq.exists (fun (e, _) -> e = 5)) "the rows still iterate while settling"
        }
        test "settling holds the weights: the last epochs leave them as they were and lower the defect" {
            // 5 epochs settling the last 2 = the same 3 learning epochs as a 3-epoch run, then 2
            // epochs in which only the per-example rows move.
            let program = digitsMlp 32L
            let run epochs (settle: float) =
                trainWith (MethodSettings("extraprop").With("settle", settle)) program (TrainingOptions(Epochs = epochs, BatchSize = 64, Seed = 4))
            use settled = run 5 0.4
            use plain = run 3 0.0
            Expect.isTrue (sameWeights settled.Weights plain.Weights) "held weights are bit-identical"
            Expect.equal [ for e in settled.Epochs -> e.Held.Count ] [ 0; 0; 0; 1; 1 ] "the weights are held in the last two epochs"
            Expect.isLessThan settled.FinalDefect (0.5 * plain.FinalDefect) $"settling lowers the defect: {plain.FinalDefect} → {settled.FinalDefect}"
        }
        test "the penalty's μ grows by its factor after every epoch and stops at its cap" {
            let settings = MethodSettings("penalty").With("mu", 1.0).With("mu-growth", 2.0).With("mu-max", 5.0)
            use result = trainWith settings (digitsMlp 16L) (TrainingOptions(Epochs = 5))
            Expect.equal [ for e in result.Epochs -> e.Diagnostics.["mu"] ] [ 2.0; 4.0; 5.0; 5.0; 5.0 ] "μ after each epoch"
        }
        test "the epoch's objective is the lifted objective; the loss term is its own field" {
            use bp = train "backprop" 1 0
            Expect.floatClose Accuracy.veryHigh bp.Final.Objective bp.Final.LossTerm "nothing lifted: the objective is the loss"
            // From the second epoch on, each visited row's state lags the weights that moved since its
            // last visit, so the penalty term is clearly positive.
            use penalty = trainWith (MethodSettings("regularized").With("mu", 50.0)) (digitsMlp 16L) (TrainingOptions(Epochs = 2))
            Expect.isGreaterThan penalty.Final.Objective (penalty.Final.LossTerm + 1e-3) "the penalty adds (μ/2)‖g‖² > 0 to the loss term"
        }
        test "MAC's feasibility pass runs before the final measurement: the defect before it is reported, after it is zero" {
            use result = trainWith (MethodSettings "penalty") (digitsMlp 16L) (TrainingOptions(Epochs = 2))
            Expect.isGreaterThan result.DefectBeforeFinish 1e-4 "infeasible before the pass"
            Expect.isLessThan result.FinalDefect 1e-7 "feasible after it"
            use lagrangian = train "auglag" 2 0
            Expect.equal lagrangian.FinalDefect lagrangian.DefectBeforeFinish "a formulation without an end-of-training pass reports one defect"
        }
        test "MNIST-10k, 784-256-10: ExtraProp (both variants) within 1.5 points of backprop at the validation-selected epoch, final mean |defect| < 1e-3" {
            // Issue 3's criterion, at the defaults (docs/results/ has three seeds and every method).
            use data = DatasetCatalog.Load "mnist-10k"
            let program = Net.Mlp(data.Train.ExampleShape, [| 784L; 256L; 10L |], Activations.ReLU, Losses.CrossEntropy)
            let run (name: string) patience =
                let m = Methods.Resolve name
                Trainer.Train(program, data, m.Formulation, m.Solver, m.StepRules, TrainingOptions(Epochs = 50, BatchSize = 128, Seed = 0, Patience = patience))
            use backprop = run "backprop" 5
            for name in [ "extraprop"; "extraprop-rows" ] do
                use extraprop = run name 0
                Expect.isGreaterThanOrEqual extraprop.Selected.TestAccuracy (backprop.Selected.TestAccuracy - 0.015)
                    $"{name} {extraprop.Selected.TestAccuracy} against backprop {backprop.Selected.TestAccuracy}"
                Expect.isLessThan extraprop.FinalDefect 1e-3 $"{name}: final mean |defect| over every training example"
                Expect.isGreaterThan extraprop.Final.Held.Count 0 $"{name}: the last epoch settles (weights held)"
        }
    ]
