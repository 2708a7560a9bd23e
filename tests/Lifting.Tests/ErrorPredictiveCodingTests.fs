/// Error-based predictive coding, ePC (Goemaere et al. 2025; issue 27 item 6): PC's energy over
/// the errors ε_k, z_k = f_k(z_in(k)) + ε_k. One inference step of size 1 from ε = 0 is
/// back-propagation (error O(β)); many steps reach PC's own equilibrium (the same energy).
module Lifting.Tests.ErrorPredictiveCodingTests

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

let genProgram =
    Gen.choose (0, 100000) |> Gen.map (fun s -> if s % 2 = 0 then RandomPrograms.Mlp(s) else RandomPrograms.Graph(s / 2))

let direction (f: WeightDirectionFormulation) (rp: RandomProgram) (weights: Weights) =
    f.Direction(rp.Program, weights.Tensors, rp.Inputs, rp.Labels).Gradients

[<Tests>]
let tests =
    testList "ErrorPredictiveCodingTests" [
        testPropertyWithConfig config "ePC: one inference step equals backprop's gradient (relative error < 1e-4 at beta = 1e-6; random MLPs and graphs, float64)" <|
            Prop.forAll (Arb.fromGen genProgram) (fun rp ->
                use weights = rp.Initialise(rp.Seed)
                let err = relativeError (direction (ErrorPredictiveCoding(1e-6)) rp weights) (backpropGradient rp.Program weights rp.Inputs rp.Labels)
                err < 1e-4 |> Prop.label $"{rp}: relative error {err}")

        test "ePC with one step: the error to backprop falls as beta (log-log slope 0.8-1.3) on tanh MLPs and graphs" {
            let betas = [ 0.1; 0.05; 0.025; 0.0125 ]
            for rp in [ RandomPrograms.On(mlp 4L [ 5L; 4L ] 3L Activations.Tanh Losses.CrossEntropy, 3, 5, 3); RandomPrograms.ResidualGraph 8; RandomPrograms.RecurrentGraph 9 ] do
                use weights = rp.Initialise(rp.Seed)
                let reference = backpropGradient rp.Program weights rp.Inputs rp.Labels
                let errors = [ for beta in betas -> relativeError (direction (ErrorPredictiveCoding(beta)) rp weights) reference ]
                let slope = ContrastiveTests.logLogSlope betas errors
                Expect.isTrue (slope >= 0.8 && slope <= 1.3) $"{rp}: errors %A{errors}, slope {slope}"
        }

        test "ePC with many steps reaches PC's equilibrium: the same weight direction as pcn with inference to tolerance (relative difference < 1e-8; beta = 0.1, an MLP and graphs)" {
            for rp in [ RandomPrograms.On(mlp 4L [ 5L; 4L ] 3L Activations.Tanh Losses.CrossEntropy, 3, 5, 3); RandomPrograms.ResidualGraph 8; RandomPrograms.RecurrentGraph 9 ] do
                use weights = rp.Initialise(rp.Seed)
                let epc = direction (ErrorPredictiveCoding(0.1, 200, 0.8)) rp weights
                let pcn = ContrastiveTests.surrogateDirection (PredictiveCoding(ContrastiveOptions(Beta = [| 0.1 |]))) rp.Program weights rp.Inputs rp.Labels rp.Classes 0.9
                let d = relativeError epc pcn
                Expect.isLessThan d 1e-8 $"{rp}: ePC vs PCN {d}"
        }

        testPropertyWithConfig config "with the per-example line search one step never raises the energy (beyond 1e-5 of it, rounding), also at beta = 1 on weights scaled by 3 (random MLPs and graphs)" <|
            Prop.forAll (Arb.fromGen genProgram) (fun rp ->
                use weights = rp.Initialise(rp.Seed)
                using (torch.no_grad()) (fun _ -> for w in weights.Tensors do w.mul_(torch.tensor(3.0, dtype = f64)) |> ignore)
                let e = ErrorPredictiveCoding(1.0).Infer(rp.Program, weights.Tensors, rp.Inputs, rp.Labels).Energies
                e.[1] <= e.[0] * (1.0 + 1e-5) |> Prop.label $"{rp}: energy {e.[0]} -> {e.[1]}")

        test "a steep linear program: one plain step of 1 raises the energy, the line search lowers it" {
            let program = mlp 4L [ 6L; 6L; 6L ] 3L Activations.Identity Losses.CrossEntropy
            let x, y = randomBatch 11 6L 4L 3L
            use weights = program.Initialise(11, torch.CPU, f64)
            using (torch.no_grad()) (fun _ -> for w in weights.Tensors do w.mul_(torch.tensor(2.5, dtype = f64)) |> ignore)
            let plain = ErrorPredictiveCoding(1.0, lineSearch = false).Infer(program, weights.Tensors, x, y).Energies
            let searched = ErrorPredictiveCoding(1.0).Infer(program, weights.Tensors, x, y).Energies
            Expect.isGreaterThan plain.[1] plain.[0] $"plain step: energy {plain.[0]} -> {plain.[1]}"
            Expect.isLessThan searched.[1] searched.[0] $"line search: energy {searched.[0]} -> {searched.[1]}"
        }

        test "max-shift caps each example's output displacement at rho |z_out| (a linear program, where the cap is exact), and a cap that never binds changes nothing" {
            let program = mlp 4L [ 6L; 6L; 6L ] 3L Activations.Identity Losses.CrossEntropy
            let x, y = randomBatch 11 6L 4L 3L
            use weights = program.Initialise(11, torch.CPU, f64)
            using (torch.no_grad()) (fun _ -> for w in weights.Tensors do w.mul_(torch.tensor(2.5, dtype = f64)) |> ignore)
            let output = program.Forward(x, weights.Tensors)
            let norms (t: torch.Tensor) = t.square().sum(1L).sqrt().data<float>().ToArray()
            let rho = 0.01
            let capped = ErrorPredictiveCoding(1.0, maxShift = rho).Infer(program, weights.Tensors, x, y)
            let moved = norms (capped.States.[capped.States.Count - 1] - output)
            let size = norms output
            let uncapped = ErrorPredictiveCoding(1.0).Infer(program, weights.Tensors, x, y)
            let free = norms (uncapped.States.[uncapped.States.Count - 1] - output)
            for i in 0 .. moved.Length - 1 do
                Expect.isLessThanOrEqual moved.[i] (rho * size.[i] * (1.0 + 1e-9)) $"example {i}: output moved {moved.[i]}, cap {rho * size.[i]}"
            Expect.isTrue (Array.exists2 (fun f s -> f > rho * s * 1.5) free size) "the cap binds on this program (the uncapped step moves some output by more than 1.5 rho)"
            let loose = ErrorPredictiveCoding(1.0, maxShift = 1e6).Infer(program, weights.Tensors, x, y)
            for k in 0 .. loose.Errors.Count - 1 do
                Expect.equal ((loose.Errors.[k] - uncapped.Errors.[k]).abs().max().ToDouble()) 0.0 $"level {k}: a cap of 1e6 changed the errors"
        }

        test "closed-form local products and autograd give the same direction (1e-12), with 3 steps of 0.5" {
            for rp in [ RandomPrograms.Mlp 5; RandomPrograms.ResidualGraph 6; RandomPrograms.RecurrentGraph 7 ] do
                use weights = rp.Initialise(rp.Seed)
                let closed = direction (ErrorPredictiveCoding(0.5, 3, 0.5)) rp weights
                let auto = direction (ErrorPredictiveCoding(0.5, 3, 0.5, autograd = true)) rp weights
                let err = relativeError closed auto
                Expect.isLessThan err 1e-12 $"{rp}: {err}"
        }

        test "invalid beta, steps, step size and max-shift are refused, naming the value" {
            let message (f: unit -> unit) = try f (); "" with :? System.ArgumentOutOfRangeException as e -> e.Message
            Expect.stringContains (message (fun () -> ErrorPredictiveCoding(-1.0) |> ignore)) "Invalid beta: -1" "beta"
            Expect.stringContains (message (fun () -> ErrorPredictiveCoding(0.1, 0) |> ignore)) "Invalid inference steps: 0" "steps"
            Expect.stringContains (message (fun () -> ErrorPredictiveCoding(0.1, 1, nan) |> ignore)) "Invalid error step: NaN" "step"
            Expect.stringContains (message (fun () -> ErrorPredictiveCoding(0.1, maxShift = -0.5) |> ignore)) "Invalid max-shift: -0.5" "max-shift"
            let refusal = try ErrorPredictiveCoding(0.1, lineSearch = false, maxShift = 0.05) |> ignore; "" with :? System.ArgumentException as e -> e.Message
            Expect.stringContains refusal "needs line-search on" "max-shift without the line search"
        }

        test "epc trains: digits 64-32-32-10, 3 epochs, test accuracy within 2 points of backprop's" {
            let digits = Lifting.Data.DatasetCatalog.Load "digits"
            let run name =
                let program = Net.Mlp(digits.Train.ExampleShape, [| 64L; 32L; 32L; 10L |], Activations.ReLU, Losses.CrossEntropy)
                let m = Methods.Resolve(name: string)
                use r = Lifting.Training.Trainer.Train(program, digits, m.Formulation, m.Solver, m.StepRules, Lifting.Training.TrainingOptions(Epochs = 3, BatchSize = 32, Seed = 0))
                r.Selected.TestAccuracy
            let bp, e = run "backprop", run "epc"
            Expect.isGreaterThan e (bp - 0.02) $"epc {e} vs backprop {bp}"
        }
    ]
