/// Formulations written as equations (issue 29): the equation-built Lagrangian, augmented
/// Lagrangian, ε-insensitive Lagrangian, fixed and growing quadratic penalties train bit for bit
/// as the hand-written classes do (same method settings, solver and step rules, through the
/// trainer: inner iterations, cosine schedule, settling, μ's growth, the feasibility pass); a
/// malformed equation is refused in one line naming the term.
module Lifting.Tests.EquationTests

open System
open Expecto
open TorchSharp
type Tensor = torch.Tensor
open Lifting
open Lifting.Formulations
open Lifting.Programs
open Lifting.Solvers
open Lifting.Training
open Lifting.FSharp
open Lifting.FSharp.Equation

let digits = lazy (Lifting.Data.DatasetCatalog.Load "digits")

/// Trains `settings`' method on digits with the formulation replaced by `formulation` (when given):
/// the solver and step rules are the method's own.
let trainWith (settings: MethodSettings) (formulation: IFormulation option) (program: NestedProgram) epochs seed =
    let m = Methods.Resolve settings
    let options = TrainingOptions(Epochs = epochs, BatchSize = 64, Seed = seed)
    Trainer.Train(program, digits.Force(), defaultArg formulation m.Formulation, m.Solver, m.StepRules, options)

let identical (a: TrainingResult) (b: TrainingResult) =
    Seq.forall2 (fun (u: Tensor) (v: Tensor) -> u.eq(v).all().ToBoolean()) a.Weights.Tensors b.Weights.Tensors
    && Seq.forall2 (fun (u: Tensor) (v: Tensor) -> u.eq(v).all().ToBoolean()) a.SelectedWeights.Tensors b.SelectedWeights.Tensors

let lagrangian = loss + sumConstraints (inner lambda g)
let penaltySchedule = [| SubProblem([| PlayerNames.States |], 5); SubProblem([| PlayerNames.Weights |], 1) |]

/// (method settings, the same objective as an equation) pairs.
let pairs : (string * MethodSettings * IFormulation) list = [
    "extraprop (the Lagrangian: inner iterations, cosine schedule, settling)",
    MethodSettings "extraprop", formulation "lagrangian" lagrangian
    "auglag (the augmented Lagrangian, c = 0.7)",
    MethodSettings("auglag").With("c", 0.7), formulation "auglag" (loss + sumConstraints (inner lambda g + 0.7 / 2.0 * sqnorm g))
    "extraprop with ε = 0.01 (the ε-insensitive defect)",
    MethodSettings("extraprop").With("eps", 0.01), formulation "extraprop-eps" (loss + sumConstraints (inner lambda (shrink 0.01 g)))
    "regularized (the fixed quadratic penalty, μ = 10, the feasibility pass)",
    MethodSettings "regularized",
    formulationWith (EquationOptions(FeasibilityPass = true)) "regularized" (loss + 10.0 / 2.0 * sumConstraints (sqnorm g))
    "penalty (μ from 1 × 1.5 per epoch, 5 state steps per weight step, the feasibility pass)",
    MethodSettings "penalty",
    formulationWith (EquationOptions(Schedule = penaltySchedule, FeasibilityPass = true)) "penalty"
        (loss + growing "mu" 1.0 1.5 1e4 / 2.0 * sumConstraints (sqnorm g))
]

/// A random ReLU or tanh MLP on digits, cut after every hidden layer.
let randomMlp (hidden: int64[]) (tanh: bool) =
    Net.Mlp(digits.Force().Train.ExampleShape, Array.concat [ [| 64L |]; hidden; [| 10L |] ], (if tanh then Activations.Tanh else Activations.ReLU), Losses.CrossEntropy)

/// The message of the ArgumentException `make` throws.
let refusal (make: unit -> IFormulation) =
    let ex = Expect.throwsC (fun () -> make () |> ignore) id
    Expect.isTrue (ex :? ArgumentException) $"an ArgumentException, not {ex.GetType().Name}"
    ex.Message

[<Tests>]
let tests =
    testList "EquationTests" [
        for label, settings, equation in pairs do
            test $"{label}: trains bit for bit as the hand-written formulation (digits, 64-16-16-10, 3 epochs)" {
                let program = Net.Mlp(digits.Force().Train.ExampleShape, [| 64L; 16L; 16L; 10L |], Activations.ReLU, Losses.CrossEntropy)
                use hand = trainWith settings None program 3 1
                use eq = trainWith settings (Some equation) program 3 1
                Expect.isTrue (identical hand eq) $"{label}: final and selected weights identical"
                Expect.equal eq.SelectedEpoch hand.SelectedEpoch "the same epoch selected"
                Expect.sequenceEqual [ for e in eq.Epochs -> e.MeanDefect ] [ for e in hand.Epochs -> e.MeanDefect ] "the same defects per epoch"
                Expect.equal eq.FinalDefect hand.FinalDefect "the same final defect"
            }

        testPropertyWithConfig { FsCheckConfig.defaultConfig with maxTest = 6 } "random MLPs (1-3 hidden layers of 4-24, ReLU or tanh): the Lagrangian and the growing penalty as equations train bit for bit as the classes" <|
            fun (sizes: FsCheck.PositiveInt list) (tanh: bool) (seed: FsCheck.PositiveInt) ->
                let hidden = sizes |> List.truncate 3 |> List.map (fun s -> 4L + int64 (s.Get % 21)) |> Array.ofList
                let hidden = if hidden.Length = 0 then [| 12L |] else hidden
                let program = randomMlp hidden tanh
                for _, settings, equation in [ pairs.[0]; pairs.[4] ] do
                    use hand = trainWith settings None program 2 seed.Get
                    use eq = trainWith settings (Some equation) program 2 seed.Get
                    let net = String.Join("-", hidden)
                    let activation = if tanh then "tanh" else "relu"
                    Expect.isTrue (identical hand eq) $"{settings.Method} on 64-{net}-10 ({activation}), seed {seed.Get}"

        test "the catalog's equation=true builds the Lagrangian and penalty methods from their equations: the same iterates; options an equation cannot state are refused" {
            let program = Net.Mlp(digits.Force().Train.ExampleShape, [| 64L; 16L; 16L; 10L |], Activations.ReLU, Losses.CrossEntropy)
            for name in [ "extraprop"; "auglag"; "penalty" ] do
                let settings = MethodSettings(name).With("eps", (if name = "auglag" then 0.01 else 0.0))
                let settings = if name = "penalty" then MethodSettings name else settings
                Expect.isTrue (Methods.Resolve(settings.With("equation", true)).Formulation :? EquationFormulation) $"{name}: equation-built"
                use hand = trainWith settings None program 2 4
                use eq = trainWith (settings.With("equation", true)) None program 2 4
                Expect.isTrue (identical hand eq) $"{name}: equation=true trains bit for bit as the class"
            let ex = Expect.throwsC (fun () -> Methods.Resolve(MethodSettings("extraprop").With("equation", true).With("reduced", true)) |> ignore) id
            Expect.stringContains ex.Message "reduced" "names the option"
        }

        test "PCN's energy as an equation, ½ Σ_v ‖g_v‖² over the levels, trains as PredictiveCoding (float64, 2 epochs, autograd against the closed-form local derivatives: relative error < 1e-6)" {
            let program = Net.Mlp(digits.Force().Train.ExampleShape, [| 64L; 16L; 16L; 10L |], Activations.Tanh, Losses.CrossEntropy)
            let settings = MethodSettings("pcn").With("precondition", false).With("inference-steps", 5)
            let energy = sumConstraints (sqnorm g) / 2.0
            let equation = EquationContrastive("pcn-equation", energy, ContrastiveOptions(InferenceSteps = 5, Preconditioned = false))
            Expect.stringContains equation.Description "E = Σ_v ‖g_v‖²/2" "the printed energy"
            let run (f: IFormulation option) =
                let m = Methods.Resolve settings
                Trainer.Train(program, digits.Force(), defaultArg f m.Formulation, m.Solver, m.StepRules, TrainingOptions(Epochs = 2, BatchSize = 64, Seed = 2, DType = torch.ScalarType.Float64))
            use hand = run None
            use eq = run (Some (equation :> IFormulation))
            let error = Support.relativeError hand.Weights.Tensors eq.Weights.Tensors
            Expect.isLessThan error 1e-6 $"the same weights up to rounding (relative error {error})"
            Expect.isGreaterThan hand.Epochs.[1].TestAccuracy 0.5 "and it learns"
        }

        test "a contrastive energy that is not a gap vanishing at the forward pass is refused in one line" {
            for energy, term in [ (loss + sumConstraints (sqnorm g)), "ℓ"; (sumConstraints (inner lambda g)), "λ_v"; (-1.0 * sumConstraints (sqnorm g)), "non-negative" ] do
                let ex = Expect.throwsC (fun () -> EquationContrastive("bad", energy) |> ignore) id
                Expect.stringContains ex.Message term $"names the term: {ex.Message}"
                Expect.isFalse (ex.Message.Contains '\n') "one line"
        }

        test "the derived players, roles, description and checkpoint scalars" {
            let l = EquationFormulation("lagrangian", lagrangian)
            Expect.sequenceEqual l.PlayerNames [ PlayerNames.Weights; PlayerNames.States; PlayerNames.Multipliers ] "weights, states and multipliers"
            Expect.isTrue (l :> IFormulation).HasMaximisingPlayers "the multipliers maximise"
            Expect.stringContains l.Description "L = ℓ + Σ_v ⟨λ_v, g_v⟩" "the printed objective"
            let p = EquationFormulation("penalty", loss + growing "mu" 1.0 1.5 1e4 / 2.0 * sumConstraints (sqnorm g))
            Expect.sequenceEqual p.PlayerNames [ PlayerNames.Weights; PlayerNames.States ] "no multipliers in a penalty"
            Expect.stringContains p.Description "L = ℓ + mu/2·Σ_v ‖g_v‖²" "the printed objective"
            Expect.stringContains p.Description "mu from 1 ×1.5 per epoch up to 10000" "and its schedule"
            use r = trainWith (MethodSettings "penalty") (Some (p :> IFormulation)) (randomMlp [| 8L |] false) 2 0
            Expect.equal r.Epochs.Count 2 "trained"
        }

        test "a capped multiplier stays in [−cap, cap]" {
            let capped = EquationFormulation("capped", loss + sumConstraints (inner (lambdaCapped 0.01) g + 0.5 * sqnorm g))
            let m = Methods.Resolve(MethodSettings("auglag"))
            let program = randomMlp [| 16L |] false
            let context = LiftContext(program, digits.Force().Train, torch.CPU, torch.ScalarType.Float32, 0, m.StepRules, m.Solver.MemorySlots)
            use weights = program.Initialise(0, torch.CPU, torch.ScalarType.Float32)
            use problem = (capped :> IFormulation).Lift(context, weights)
            for batch in Seq.truncate 5 (Lifting.Data.MiniBatches.Epoch(digits.Force().Train, 64, 0, 1)) do
                use game = problem.Batch(batch)
                m.Solver.Step(game)
                game.Commit()
            let lambda = problem.Store.["lambda1"]
            Expect.isLessThanOrEqual (lambda.abs().max().ToDouble()) 0.01 "boxed"
            Expect.isGreaterThan (lambda.abs().max().ToDouble()) 0.0 "and moved"
        }

        test "a malformed equation is refused in one line naming the term, before any training" {
            let cases = [
                (fun () -> formulation "bad" (loss + sumConstraints (sqnorm lambda))), "‖λ_v‖²", "not linear in the maximised multiplier"
                (fun () -> formulation "bad" (loss + sumConstraints (norm1 (lambda * g)))), "‖λ_v·g_v‖₁", "not linear"
                (fun () -> formulation "bad" (loss + sumConstraints g)), "g_v", "summed over the batch"
                (fun () -> formulation "bad" (loss + sqnorm g + sumConstraints (sqnorm g))), "g_v", "inside Σ_v"
                (fun () -> formulation "bad" loss), "ℓ", "no Σ_v"
                (fun () -> formulation "bad" (loss * sumConstraints (sqnorm g))), "ℓ·Σ_v ‖g_v‖²", "multiplies a batch sum"
                (fun () -> formulation "bad" (loss + sumConstraints (sqnorm g) + sumConstraints (norm1 g))), "Σ_v ‖g_v‖₁", "more than one Σ_v"
                (fun () -> formulation "bad" (loss + sumConstraints (sqnorm g + loss))), "ℓ", "outside Σ_v"
                (fun () -> formulation "bad" (loss + 2.0 + sumConstraints (sqnorm g))), "ℓ + 2", "adds a batch sum to a coefficient"
                (fun () -> formulation "bad" (loss + sumConstraints (inner (lambdaCapped 1.0) g + inner lambda g))), "different caps", "caps"
                (fun () -> formulation "bad" (loss + sumConstraints (inner lambda g + inner lambdaPerClass g))), "λ_v", "placed per example and per class"
                (fun () -> formulationWith (EquationOptions(States = Placement.Class)) "bad" lagrangian), "states h_v", "per class"
                (fun () -> formulationWith (EquationOptions(States = Placement.Batch, FeasibilityPass = true)) "bad" lagrangian), "feasibility pass", "per mini-batch"
            ]
            for make, term, why in cases do
                let message = refusal make
                Expect.stringContains message term $"names the term: {message}"
                Expect.stringContains message why $"says why: {message}"
                Expect.isFalse (message.Contains '\n') $"one line: {message}"
        }
    
        test "λ_v(y) placed per class: one shared table [classes, …] per constraint, nothing per example, and its direction is −(1/B) Σ_{i: y_i = c} g_v,i" {
            let classy = EquationFormulation("lagrangian-per-class", loss + sumConstraints (inner lambdaPerClass g))
            Expect.stringContains classy.Description "L = ℓ + Σ_v ⟨λ_v(y), g_v⟩" "the printed objective"
            Expect.stringContains classy.Description "multipliers per class" "and the placement"
            let m = Methods.Resolve(MethodSettings "extraprop")
            let program = randomMlp [| 16L; 12L |] false
            let data = digits.Force()
            let context = LiftContext(program, data.Train, torch.CPU, torch.ScalarType.Float32, 0, m.StepRules, m.Solver.MemorySlots)
            use weights = program.Initialise(0, torch.CPU, torch.ScalarType.Float32)
            use problem = (classy :> IFormulation).Lift(context, weights)
            let batches = Lifting.Data.MiniBatches.Epoch(data.Train, 64, 0, 1) |> Seq.truncate 4 |> Array.ofSeq
            for batch in batches.[.. 2] do
                use game = problem.Batch(batch)
                m.Solver.Step(game)
                game.Commit()
            Expect.isFalse (problem.Store.Names |> Seq.exists (fun k -> k.StartsWith "lambda")) "no multiplier in the per-example store"
            let lifted = problem :?> LiftedProblem
            let table = lifted.SharedState.["lambda1"]
            Expect.sequenceEqual table.shape [| 10L; 16L |] "one row per class"
            Expect.isGreaterThan (table.abs().max().ToDouble()) 0.0 "and it moved"
            let batch = batches.[3]
            use game = problem.Batch(batch)
            let players = game.Players |> Seq.filter (fun p -> p.Name = PlayerNames.Multipliers) |> Array.ofSeq
            let direction = (game.Operator(players)).[0].[0]
            use _ = torch.no_grad()
            let segment = program.Segments.[0]
            let f = segment.Forward(segment.InputsFrom(batch.Inputs, Array.empty), weights.Tensors, null)
            let g1 = problem.Store.Gather("h1", batch.Indices) - f
            let expected = -(torch.zeros_like(table).index_add(0L, batch.Labels, g1, Scalars.Of 1.0)) / float batch.Indices.shape.[0]
            let error = (direction - expected).abs().max().ToDouble()
            Expect.isLessThan error 1e-6 $"−(1/B) Σ over the class's examples of g_1 (max error {error})"
        }

        test "states placed per mini-batch: nothing is stored, each batch starts at its forward pass, and a penalty with inference steps learns (digits)" {
            let schedule = [| SubProblem([| PlayerNames.States |], 10); SubProblem([| PlayerNames.Weights |], 1) |]
            let inference = formulationWith (EquationOptions(States = Placement.Batch, Schedule = schedule)) "penalty-per-batch" (loss + 10.0 / 2.0 * sumConstraints (sqnorm g))
            Expect.stringContains (inference :?> EquationFormulation).Description "states per mini-batch" "the printed placement"
            let m = Methods.Resolve(MethodSettings "penalty")
            let program = randomMlp [| 32L |] false
            let data = digits.Force()
            let context = LiftContext(program, data.Train, torch.CPU, torch.ScalarType.Float32, 0, m.StepRules, m.Solver.MemorySlots)
            use weights = program.Initialise(0, torch.CPU, torch.ScalarType.Float32)
            use problem = inference.Lift(context, weights)
            Expect.isEmpty problem.Store.Names "nothing per example"
            let batch = Lifting.Data.MiniBatches.Epoch(data.Train, 64, 0, 1) |> Seq.head
            use game = problem.Batch(batch)
            let h = game.Players.[1].Variables.[0]
            let segment = program.Segments.[0]
            let f = segment.Forward(segment.InputsFrom(batch.Inputs, Array.empty), weights.Tensors, null)
            Expect.isTrue (h.eq(f).all().ToBoolean()) "the batch's forward pass"
            use r = trainWith (MethodSettings "penalty") (Some inference) program 5 0
            Expect.isGreaterThan r.Selected.TestAccuracy 0.85 "learns"
        }
    ]
