/// Dual propagation (Høier, Staudt & Zach 2023; issue 27 item 6): dyadic neurons z± = σ(a ± c/2),
/// one nudged phase, weights from the pair difference. Its β → 0 limit is back-propagation, with
/// an error O(β²) (symmetric nudges); on graphs a value's nudge sums its consumers'.
module Lifting.Tests.DualPropagationTests

open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
open Lifting
open Lifting.Programs
open Lifting.Formulations
open Lifting.Testing
open Lifting.Tests.Support

let config = { FsCheckConfig.defaultConfig with maxTest = 30; arbitrary = [] }

/// Random MLPs (RandomPrograms.Mlp: tanh, sigmoid, ReLU or identity) and random graphs (residual
/// MLPs with skips across cuts, Elman RNNs with tied weights), in turn.
let genProgram =
    Gen.choose (0, 100000) |> Gen.map (fun s -> if s % 2 = 0 then RandomPrograms.Mlp(s) else RandomPrograms.Graph(s / 2))

let direction (f: WeightDirectionFormulation) (rp: RandomProgram) (weights: Weights) =
    f.Direction(rp.Program, weights.Tensors, rp.Inputs, rp.Labels).Gradients

let cosines (rp: RandomProgram) sweeps (betas: float list) =
    use weights = rp.Initialise(rp.Seed)
    let reference = backpropGradient rp.Program weights rp.Inputs rp.Labels
    [ for beta in betas -> cosine (direction (DualPropagation(beta, sweeps)) rp weights) reference ]

[<Tests>]
let tests =
    testList "DualPropagationTests" [
        testPropertyWithConfig config "dual propagation: as beta goes 1, 0.1, 0.01, 0.001 the cosine to backprop reaches 0.999 at 1e-3 (one sweep and three sweeps; random MLPs and graphs, float64)" <|
            Prop.forAll (Arb.fromGen genProgram) (fun rp ->
                let one = cosines rp 1 [ 1.0; 0.1; 0.01; 0.001 ]
                let three = cosines rp 3 [ 0.001 ]
                (List.last one >= 0.999 && List.head three >= 0.999) |> Prop.label $"{rp}: one sweep %A{one}, three sweeps %A{three}")

        test "symmetric nudges: the relative error to backprop falls as beta^2 (log-log slope >= 1.8) on tanh MLPs and graphs" {
            let betas = [ 0.2; 0.1; 0.05; 0.025 ]
            for rp in [ RandomPrograms.On(mlp 4L [ 5L; 4L ] 3L Activations.Tanh Losses.CrossEntropy, 3, 5, 3); RandomPrograms.ResidualGraph 8; RandomPrograms.RecurrentGraph 9 ] do
                use weights = rp.Initialise(rp.Seed)
                let reference = backpropGradient rp.Program weights rp.Inputs rp.Labels
                let errors = [ for beta in betas -> relativeError (direction (DualPropagation(beta)) rp weights) reference ]
                let slope = ContrastiveTests.logLogSlope betas errors
                Expect.isGreaterThanOrEqual slope 1.8 $"{rp}: errors %A{errors}, slope {slope}"
        }

        test "closed-form local products and autograd give the same direction (1e-12), on an MLP and on graphs, with 2 sweeps" {
            for rp in [ RandomPrograms.Mlp 5; RandomPrograms.ResidualGraph 6; RandomPrograms.RecurrentGraph 7 ] do
                use weights = rp.Initialise(rp.Seed)
                let closed = direction (DualPropagation(0.5, 2)) rp weights
                let auto = direction (DualPropagation(0.5, 2, autograd = true)) rp weights
                let err = relativeError closed auto
                Expect.isLessThan err 1e-12 $"{rp}: {err}"
        }

        test "invalid beta and sweeps are refused, naming the value" {
            let m1 = try DualPropagation(0.0) |> ignore; "" with :? System.ArgumentOutOfRangeException as e -> e.Message
            Expect.stringContains m1 "Invalid beta: 0" "beta"
            let m2 = try DualPropagation(0.1, 0) |> ignore; "" with :? System.ArgumentOutOfRangeException as e -> e.Message
            Expect.stringContains m2 "Invalid sweeps: 0" "sweeps"
        }

        test "dual-prop trains: digits 64-32-32-10, 3 epochs, test accuracy within 2 points of backprop's" {
            let digits = Lifting.Data.DatasetCatalog.Load "digits"
            let run name =
                let program = Net.Mlp(digits.Train.ExampleShape, [| 64L; 32L; 32L; 10L |], Activations.ReLU, Losses.CrossEntropy)
                let m = Methods.Resolve(name: string)
                use r = Lifting.Training.Trainer.Train(program, digits, m.Formulation, m.Solver, m.StepRules, Lifting.Training.TrainingOptions(Epochs = 3, BatchSize = 32, Seed = 0))
                r.Selected.TestAccuracy
            let bp, dp = run "backprop", run "dual-prop"
            Expect.isGreaterThan dp (bp - 0.02) $"dual-prop {dp} vs backprop {bp}"
        }
    ]
