/// Behaviours that once could be broken with every test green (issue 25, "some tests let bugs
/// through"): each test here fails when its behaviour breaks.
module Lifting.Tests.RegressionTests

open System
open Expecto
open TorchSharp
open type TorchSharp.torch
type Tensor = torch.Tensor
open Lifting
open Lifting.Programs
open Lifting.Formulations
open Lifting.Solvers
open Lifting.Training
open Lifting.Tests.Support
open Lifting.Testing
type F = TorchSharp.torch.nn.functional

let digits = lazy (Lifting.Data.DatasetCatalog.Load "digits")

[<Tests>]
let tests =
    testList "RegressionTests" [
        test "DistProp's first-cut defect is the mean |g_ε(z)| per example and feature, z = (f_1(x) − μ_1(y)) / σ_1(y)" {
            let program = Net.Mlp([| 6L |], [| 6L; 5L; 3L |], Activations.Tanh, Losses.CrossEntropy)
            let x, y = randomBatch 4 9L 6L 3L
            use w = program.Initialise(2, CPU, f64)
            let options = DistPropOptions(Epsilon = 0.2, Multipliers = MultiplierPlacement.Class)
            let problem, game, _ = liftAll (DistProp(options)) program w x y 3 0 (constantRules 0.1)
            use _p = problem
            use _g = game
            let mu, sigma = DistPropTests.shared problem "mu1", DistPropTests.shared problem "sigma1"
            // Move the Gaussians off their start so the constraint is active somewhere and not everywhere.
            using (no_grad()) (fun _ -> mu.mul_(Scalars.Of 3.0) |> ignore; sigma.add_(Scalars.Of -0.4) |> ignore)
            // Pre-activation states: block 1's state is the dense layer's output, before the tanh.
            let f1 = F.linear(x, w.Tensors.[0], w.Tensors.[1])
            let z = (f1 - mu.index_select(0L, y)) / F.softplus(sigma).index_select(0L, y)
            let expected = F.softshrink(z, 0.2).abs().mean().ToDouble()
            let measured = problem.MeasureDefects().[0]
            Expect.floatClose Accuracy.veryHigh measured expected $"mean over examples and features ({measured} against {expected})"
            Expect.isGreaterThan expected 0.0 "an active constraint"
        }

        test "PCN's weight direction weights each level by ω_k (per-level β list): (1/β_L) Σ_k ω_k ∇_θ E_k at the clamped solution" {
            let program = Net.Mlp([| 4L |], [| 4L; 5L; 5L; 3L |], Activations.Tanh, Losses.CrossEntropy)
            let x, y = randomBatch 7 6L 4L 3L
            use w = program.Initialise(3, CPU, f64)
            let betas = [| 0.5; 0.25; 0.1 |]
            let options = ContrastiveOptions(Beta = betas, Preconditioned = false)
            let problem, game, _ = liftAll (PredictiveCoding(options)) program w x y 3 0 (constantRules 0.5)
            use _p = problem
            use _g = game
            ContrastiveTests.inferToTolerance game |> ignore
            let direction = game.Operator([| ContrastiveTests.player game PlayerNames.Weights |]).[0] |> Array.ofSeq
            let z = (game :?> ContrastiveSurrogate).ClampedSolution |> Seq.map (fun t -> t.detach()) |> Array.ofSeq
            let omega = ContrastiveOptions.LevelWeights(betas)
            Expect.isGreaterThan (Math.Abs(omega.[0] - 1.0)) 0.5 "the levels' weights differ from 1"
            let expected =
                use _ = enable_grad()
                let mutable below = x
                let mutable total = zeros([| 1L |], dtype = ScalarType.Float64).squeeze()
                for k in 0 .. 2 do
                    let f = program.Segments.[k].Forward([| below |], w.Tensors)
                    total <- total + omega.[k] * 0.5 * (z.[k] - f).square().sum()
                    below <- z.[k]
                autograd.grad([| total / (betas.[2] * System.Convert.ToDouble(x.shape.[0])) |], w.Tensors |> Array.ofSeq) |> Array.ofSeq
            Expect.isLessThan (relativeError direction expected) 1e-10 "ω_k in the weight gradient"
        }

        test "InnerSolve runs exactly the inference steps it reports (tolerance 0: every one of maxIterations)" {
            let calls = ref 0
            let rg = RandomGames.StronglyConvex(5, (fun () -> StepRules.Constant 0.05))
            let counting =
                { new IGame with
                    member _.Players = rg.Game.Players
                    member _.Operator(players) = calls.Value <- calls.Value + 1; rg.Game.Operator(players)
                    member _.Objective() = rg.Game.Objective() }
            let iterations = InnerSolve.Solve(Solvers.GradientDescentAscent(), counting, 7, 0.0)
            Expect.equal iterations 7 "reports 7"
            Expect.equal calls.Value 7 "one operator evaluation per gradient step, 7 of them"
            let solver = InnerSolve(Solvers.GradientDescentAscent(), [| rg.X.Name |], 5, 0.0, Solvers.GradientDescentAscent())
            calls.Value <- 0
            solver.Step(counting)
            Expect.equal solver.LastIterations 5 "the step's inner count"
            Expect.equal calls.Value 6 "five inner evaluations and one for the outer player"
        }

        test "a tie in validation accuracy keeps the earlier epoch" {
            // A step of 1e-30 leaves every weight where it is: every epoch has the same validation accuracy.
            let m = Methods.Resolve(MethodSettings("backprop").With("optimizer", "constant").With("lr", 1e-30))
            let program = Net.Mlp([| 1L; 8L; 8L |], [| 64L; 16L; 10L |], Activations.ReLU, Losses.CrossEntropy)
            use r = Trainer.Train(program, digits.Force(), m, TrainingOptions(Epochs = 3, BatchSize = 256))
            Expect.equal (r.Epochs |> Seq.map (fun e -> (nonNull e.Validation).Accuracy) |> Seq.distinct |> Seq.length) 1 "equal validation accuracies"
            Expect.equal r.SelectedEpoch 1 "the earliest of the tied epochs"
        }
    ]
