module Lifting.Tests.TrainingTests

open System
open Expecto
open TorchSharp
open Lifting
open Lifting.Data
open Lifting.Programs
open Lifting.Training

let digits = lazy (DatasetCatalog.Load "digits")

let train (methodName: string) epochs seed =
    let data = digits.Force()
    let program = Net.Mlp(data.Train.ExampleShape, [| 64L; 128L; 10L |], Activations.ReLU, Losses.CrossEntropy)
    let m = Methods.Resolve(MethodSettings(Method = methodName))
    Trainer.Train(program, data, m.Formulation, m.Solver, m.StepRules, TrainingOptions(Epochs = epochs, BatchSize = 64, Seed = seed))

[<Tests>]
let tests =
    testList "TrainingTests" [
        test "backprop trains the digits MLP to >= 0.95 test accuracy (the default job)" {
            let result = train "backprop" 20 0
            use _ = result.Weights
            Expect.isGreaterThanOrEqual result.FinalTestAccuracy 0.95 $"test accuracy {result.FinalTestAccuracy}"
            Expect.equal result.Epochs.Count 20 "one metrics row per epoch"
            Expect.isTrue (result.Epochs |> Seq.forall (fun m -> Double.IsFinite m.TrainLoss)) "finite losses"
        }
        test "the same seed gives identical weights; another seed does not" {
            let a = train "backprop" 2 5
            let b = train "backprop" 2 5
            let c = train "backprop" 2 6
            use _ = a.Weights
            use _ = b.Weights
            use _ = c.Weights
            for (u, v) in Seq.zip a.Weights.Tensors b.Weights.Tensors do
                Expect.equal ((u - v).abs().max().ToDouble()) 0.0 "same seed, same weights"
            let differs = Seq.exists2 (fun (u: torch.Tensor) (v: torch.Tensor) -> (u - v).abs().max().ToDouble() > 0.0) a.Weights.Tensors c.Weights.Tensors
            Expect.isTrue differs "a different seed gives different weights"
        }
        test "a lifted run is deterministic for a seed too" {
            let a = train "extraprop" 2 1
            let b = train "extraprop" 2 1
            use _ = a.Weights
            use _ = b.Weights
            for (u, v) in Seq.zip a.Weights.Tensors b.Weights.Tensors do
                Expect.equal ((u - v).abs().max().ToDouble()) 0.0 "same seed, same weights"
            Expect.equal a.FinalDefect b.FinalDefect "same defect"
        }
        testSequenced <| test "training leaves no tensor behind: the live count returns to where it was" {
            // Every mini-batch and evaluation runs in a dispose scope; per-example state is freed
            // with the lifted problem. Only the returned weights outlive the run.
            let live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount
            for methodName in [ "backprop"; "extraprop"; "penalty" ] do
                train methodName 1 3 |> fun r -> r.Weights.Dispose()
                let before = live ()
                let result = train methodName 3 3
                result.Weights.Dispose()
                Expect.equal (live ()) before $"{methodName}: no tensor outlives the run"
        }
        test "settling holds the weights: the last epochs leave them as they were and lower the defect" {
            // 5 epochs settling the last 2 = the same 3 learning epochs as a 3-epoch run, then 2
            // epochs in which only the per-example rows move.
            let data = digits.Force()
            let program = Net.Mlp(data.Train.ExampleShape, [| 64L; 32L; 10L |], Activations.ReLU, Losses.CrossEntropy)
            let run epochs settle =
                let m = Methods.Resolve(MethodSettings(Method = "extraprop", Settle = settle))
                Trainer.Train(program, data, m.Formulation, m.Solver, m.StepRules, TrainingOptions(Epochs = epochs, BatchSize = 64, Seed = 4))
            let settled = run 5 (Nullable 0.4)
            let plain = run 3 (Nullable 0.0)
            use _ = settled.Weights
            use _ = plain.Weights
            for (u, v) in Seq.zip settled.Weights.Tensors plain.Weights.Tensors do
                Expect.equal ((u - v).abs().max().ToDouble()) 0.0 "held weights are bit-identical"
            Expect.equal [ for e in settled.Epochs -> e.Held.Count ] [ 0; 0; 0; 1; 1 ] "the weights are held in the last two epochs"
            Expect.isLessThan settled.FinalDefect (0.5 * plain.FinalDefect) $"settling lowers the defect: {plain.FinalDefect} → {settled.FinalDefect}"
        }
        test "MNIST-10k, 784-256-10: ExtraProp (both variants) within 1.5 points of backprop, final mean |defect| < 1e-3" {
            // Issue 3's criterion, at the defaults (docs/results/ has three seeds and every method).
            let data = DatasetCatalog.Load "mnist-10k"
            let program = Net.Mlp(data.Train.ExampleShape, [| 784L; 256L; 10L |], Activations.ReLU, Losses.CrossEntropy)
            let run (name: string) patience =
                let m = Methods.Resolve(MethodSettings(Method = name))
                let r = Trainer.Train(program, data, m.Formulation, m.Solver, m.StepRules, TrainingOptions(Epochs = 50, BatchSize = 128, Seed = 0, Patience = patience))
                r.Weights.Dispose()
                r
            let backprop = run "backprop" 5
            for name in [ "extraprop"; "extraprop-rows" ] do
                let extraprop = run name 0
                Expect.isGreaterThanOrEqual extraprop.BestTestAccuracy (backprop.BestTestAccuracy - 0.015)
                    $"{name} {extraprop.BestTestAccuracy} against backprop {backprop.BestTestAccuracy}"
                Expect.isLessThan extraprop.FinalDefect 1e-3 $"{name}: final mean |defect| over every training example"
                Expect.isGreaterThan extraprop.Epochs.[extraprop.Epochs.Count - 1].Held.Count 0 $"{name}: the last epoch settles (weights held)"
        }
        test "early stopping stops once the test accuracy stops improving" {
            let data = digits.Force()
            let program = Net.Mlp(data.Train.ExampleShape, [| 64L; 16L; 10L |], Activations.ReLU, Losses.CrossEntropy)
            let m = Methods.Resolve(MethodSettings(Method = "backprop", LearningRate = 0.05))
            let result = Trainer.Train(program, data, m.Formulation, m.Solver, m.StepRules, TrainingOptions(Epochs = 200, Patience = 2))
            use _ = result.Weights
            Expect.isLessThan result.Epochs.Count 200 "stopped before the budget"
            Expect.isTrue result.StoppedEarly "reported"
            Expect.equal result.Epochs.Count (result.BestEpoch + 2) "two epochs without improvement after the best"
        }
    ]
