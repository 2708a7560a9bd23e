module Lifting.Tests.FormulationTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
type Tensor = torch.Tensor
open Lifting.Programs
open Lifting.Formulations
open Lifting.Solvers
open Lifting.Tests.Support

let player (game: IBatchGame) name = game.Players |> Seq.find (fun p -> p.Name = name)

/// Random small MLP shapes for property tests.
type SmallMlp = { Inputs: int64; Hidden: int64 list; Classes: int64; Activation: int; Seed: int; Batch: int64 }

let genSmallMlp =
    gen {
        let! inputs = Gen.choose (2, 6)
        let! depth = Gen.choose (1, 3)
        let! hidden = Gen.listOfLength depth (Gen.choose (2, 6))
        let! classes = Gen.choose (2, 4)
        let! activation = Gen.choose (0, 3)
        let! seed = Gen.choose (0, 10000)
        let! batch = Gen.choose (1, 5)
        return { Inputs = int64 inputs; Hidden = hidden |> List.map int64; Classes = int64 classes
                 Activation = activation; Seed = seed; Batch = int64 batch }
    }

let activationOf i = [| Activations.Tanh; Activations.Sigmoid; Activations.ReLU; Activations.Identity |].[i]

let config = { FsCheckConfig.defaultConfig with maxTest = 25; arbitrary = [] }

/// The game with every player's projections removed: the same variables, step rules and operator.
let withoutProjections (game: IGame) =
    let players = [| for p in game.Players -> Player(p.Name, p.Role, p.Variables, p.StepRule, p.StepStates, p.RowIndexed, geometry = p.Geometry) |]
    { new IGame with
        member _.Players = players :> _
        member _.Operator(requested) = game.Operator(requested)
        member _.Objective() = game.Objective() }

/// An identity layer that counts its evaluations (to see when a block is evaluated).
let countingLayer (calls: int ref) (shape: int64[]) =
    { new ILayer with
        member _.Name = "count"
        member _.InputShape = shape
        member _.OutputShape = shape
        member _.Parameters = Array.empty<ParameterSpec> :> _
        member _.Forward(input, _) =
            calls.Value <- calls.Value + 1
            input }

/// LeCun 1988: with forward states and adjoint multipliers, ∂L/∂h = 0, λ = −∂ℓ/∂h and ∇_w L = backprop.
let lecunHolds (m: SmallMlp) =
    let program = mlp m.Inputs m.Hidden m.Classes (activationOf m.Activation) Losses.CrossEntropy
    let x, y = randomBatch m.Seed m.Batch m.Inputs m.Classes
    use weights = program.Initialise(m.Seed, torch.CPU, f64)
    let reference = backpropGradient program weights x y
    let adjoints = MultipleShooting.AdjointMultipliers(program, weights.Tensors, x, y)
    let problem, game, _ = liftAll (MultipleShooting()) program weights x y (int m.Classes) 0 (constantRules 0.1)
    use _p = problem
    use _g = game
    let lambda = player game PlayerNames.Multipliers
    using (torch.no_grad()) (fun _ -> Seq.iter2 (fun (v: Tensor) (a: Tensor) -> v.copy_(a) |> ignore) lambda.Variables adjoints)
    let ops = game.Operator(game.Players)
    let weightsDirection = ops.[0]
    let stateResidual = ops.[1] |> Seq.sumBy (fun t -> t.abs().max().ToDouble())
    let defect = ops.[2] |> Seq.sumBy (fun t -> t.abs().max().ToDouble())
    let err = relativeError weightsDirection reference
    err < 1e-4 && stateResidual < 1e-10 && defect < 1e-12

/// Equilibrates the penalty states for fixed weights (gradient descent on the states only) and
/// returns the relative error between the weight gradient there and the backprop gradient.
let penaltyGradientError (mu: float) =
    let program = mlp 4L [ 5L ] 3L Activations.Tanh Losses.CrossEntropy
    let x, y = randomBatch 3 4L 4L 3L
    use weights = program.Initialise(5, torch.CPU, f64)
    let reference = backpropGradient program weights x y
    let formulation = QuadraticPenalty(PenaltySchedule.Fixed(mu))
    let problem, game, _ = liftAll formulation program weights x y 3 0 (constantRules (0.5 / (1.0 + mu)))
    use _p = problem
    use _g = game
    let states = player game PlayerNames.States
    let solver = Solvers.Alternating([ SubProblem([| PlayerNames.States |], 1) ])
    for _ in 1 .. 4000 do solver.Step(game)
    let direction = game.Operator([| player game PlayerNames.Weights |]).[0]
    relativeError direction reference

[<Tests>]
let tests =
    testList "FormulationTests" [
        testPropertyWithConfig config "LeCun 1988: adjoint multipliers make the Lagrangian's weight gradient the backprop gradient" <|
            Prop.forAll (Arb.fromGen genSmallMlp) lecunHolds

        test "the adjoint multipliers are the negated backprop adjoints of the last state" {
            let program = mlp 3L [ 4L ] 2L Activations.Tanh Losses.CrossEntropy
            let x, y = randomBatch 2 5L 3L 2L
            use w = program.Initialise(1, torch.CPU, f64)
            let lambda = MultipleShooting.AdjointMultipliers(program, w.Tensors, x, y).[0]
            // −∂ℓ/∂h_1 for ℓ = CE(W_2 h_1 + b_2): −W_2ᵀ (softmax − onehot)
            let h1 = program.ForwardBlock(0, x, w.Block(0))
            let p = program.ForwardBlock(1, h1, w.Block(1)).softmax(1L)
            let expected = -(p - torch.nn.functional.one_hot(y, 2L).to_type(f64)).matmul(w.Block(1).[0])
            Expect.isLessThan (relativeError [ lambda ] [ expected ]) 1e-12 "λ = −W₂ᵀ(p − y)"
        }

        test "penalty: the weight gradient at equilibrated states approaches backprop as mu grows" {
            let errors = [ 1.0; 10.0; 100.0; 1000.0 ] |> List.map penaltyGradientError
            for (a, b) in List.pairwise errors do
                Expect.isLessThan b a $"error decreases with mu: %A{errors}"
            Expect.isLessThan (List.last errors) 0.01 $"mu = 1000 is within 1%%: %A{errors}"
        }

        test "constraint functions: the ε-insensitive defect is seed 001 eq. 3 (soft thresholding); reduced, ReLU(‖g‖₁ − ε), or ‖g‖₁ − ε as an inequality" {
            let g = torch.tensor([| -0.5; -0.05; 0.0; 0.05; 0.3 |], dtype = f64)
            let shrunk = MultipleShooting.Constraint(g, MultipleShootingOptions(Epsilon = 0.1))
            let expected = torch.tensor([| -0.4; 0.0; 0.0; 0.0; 0.2 |], dtype = f64)
            Expect.isLessThan ((shrunk - expected).abs().max().ToDouble()) 1e-12 "g − ε, 0, g + ε"
            let rows = torch.stack([| g; 0.1 * g |]) // ‖g‖₁ = 0.9 and 0.09
            let reduced = MultipleShooting.Constraint(rows, MultipleShootingOptions(Epsilon = 0.1, ReducedConstraint = true))
            Expect.isLessThan ((reduced - torch.tensor([| 0.8; 0.0 |], dtype = f64)).abs().max().ToDouble()) 1e-12 "ReLU(‖g‖₁ − ε) per row"
            let inequality = MultipleShooting.Constraint(rows, MultipleShootingOptions(Epsilon = 0.1, ReducedConstraint = true, Inequality = true))
            Expect.isLessThan ((inequality - torch.tensor([| 0.8; -0.01 |], dtype = f64)).abs().max().ToDouble()) 1e-12 "‖g‖₁ − ε per row, negative inside"
            Expect.throwsT<ArgumentException> (fun () -> MultipleShooting(MultipleShootingOptions(Inequality = true)) |> ignore) "the inequality form needs the reduced constraint"
            Expect.throwsT<ArgumentException> (fun () -> MultipleShooting(MultipleShootingOptions(Inequality = true, ReducedConstraint = true, Augmentation = 1.0)) |> ignore) "and takes no augmentation"
        }

        test "holding the weights fixed during inner iterations evaluates the first block once per hold and leaves the iterates unchanged" {
            // The same solver on the same game, once through a view that lets the game hold the
            // weights (and reuse f_1(x)), once through a plain view that does not: equal iterates.
            // A counting layer inside the first block shows how often f_1 is evaluated.
            let run (hideHolding: bool) (formulation: IFormulation) =
                let calls = ref 0
                let program = Net.Input(4L).Dense(5L).Layer(fun s -> countingLayer calls s).Tanh().Dense(3L).Tanh().Dense(3L).CrossEntropy()
                let x, y = randomBatch 4 6L 4L 3L
                use w = program.Initialise(2, torch.CPU, f64)
                let problem, game, _ = liftAll formulation program w x y 3 0 (constantRules 0.2)
                use _p = problem
                use _g = game
                calls.Value <- 0 // lifting's forward pass over the training set counted too
                let view =
                    if hideHolding then
                        { new IGame with
                            member _.Players = game.Players
                            member _.Operator(players) = game.Operator(players)
                            member _.Objective() = game.Objective() }
                    else game :> IGame
                let perExample = formulation.PlayerNames |> Seq.filter ((<>) PlayerNames.Weights) |> Array.ofSeq
                let solver = WithInnerIterations(Solvers.Extragradient(), perExample, 3, Solvers.Extragradient())
                for _ in 1 .. 4 do solver.Step(view)
                game.Players |> Seq.collect (fun p -> p.Variables) |> Seq.map (fun t -> t.detach().clone()) |> Array.ofSeq, calls.Value
            for formulation in [ MultipleShooting() :> IFormulation; QuadraticPenalty(PenaltySchedule.Fixed 3.0) ] do
                let (held, heldCalls), (plain, plainCalls) = run false formulation, run true formulation
                Expect.isLessThan (relativeError held plain) 1e-14 $"{formulation.Name}: identical iterates"
                Expect.equal plainCalls (4 * 8) $"{formulation.Name}: without holding, f_1 at every evaluation (3 inner iterations × 2, outer × 2)"
                Expect.equal heldCalls (4 * 2) $"{formulation.Name}: holding, f_1 once for the inner iterations (the first outer evaluation reuses it) and once at the extrapolated weights"
        }

        test "augmented Lagrangian: the objective is (1/B) Σ_i [ℓ_i + ⟨λ_i, g_i⟩ + (c/2)‖g_i‖²]" {
            let program = mlp 3L [ 4L ] 2L Activations.Tanh Losses.CrossEntropy
            let x, y = randomBatch 21 5L 3L 2L
            use w = program.Initialise(1, torch.CPU, f64)
            let c = 0.7
            let problem, game, _ = liftAll (MultipleShooting(MultipleShootingOptions(Augmentation = c))) program w x y 2 0 (constantRules 0.1)
            use _p = problem
            use _g = game
            use g = new torch.Generator(5UL)
            let h = (player game PlayerNames.States).Variables.[0]
            let lambda = (player game PlayerNames.Multipliers).Variables.[0]
            using (torch.no_grad()) (fun _ ->
                h.add_(0.5 * torch.randn(h.shape, dtype = f64, generator = g)) |> ignore
                lambda.copy_(torch.randn(lambda.shape, dtype = f64, generator = g)) |> ignore)
            let defect = h - program.ForwardBlock(0, x, w.Block(0))
            let loss = program.Loss.PerExample(program.ForwardBlock(1, h, w.Block(1)), y).sum()
            let expected = (loss + (lambda * defect).sum() + 0.5 * c * defect.square().sum()).ToDouble() / 5.0
            Expect.floatClose Accuracy.veryHigh (game.Objective()) expected "ℓ + ⟨λ, g⟩ + (c/2)‖g‖²"
        }

        test "quadratic penalty with restart-states: a batch's states start at the forward pass with a fresh step state; without, at the stored values" {
            let program = mlp 3L [ 4L; 4L ] 2L Activations.Tanh Losses.CrossEntropy
            let x, y = randomBatch 23 5L 3L 2L
            use w = program.Initialise(1, torch.CPU, f64)
            for restart in [ true; false ] do
                let rules = fun (_: string) -> StepRules.Adam(0.1)
                let problem, game, batch = liftAll (QuadraticPenalty(PenaltySchedule.Fixed 1.0, 1, restartStates = restart)) program w x y 2 0 rules
                use _p = problem
                // Two steps move the states off the forward pass; committing stores them.
                let solver = Solvers.GradientDescentAscent()
                solver.Step game
                solver.Step game
                game.Commit()
                game.Dispose()
                use again = problem.Batch(batch)
                let states = player again PlayerNames.States
                let h1 = program.ForwardBlock(0, x, w.Block(0))
                let h2 = program.ForwardBlock(1, h1, w.Block(1))
                let offForward = (states.Variables.[0] - h1).abs().max().ToDouble() + (states.Variables.[1] - h2).abs().max().ToDouble()
                let count = states.StepStates.[0].Slots.[2].abs().max().ToDouble()
                if restart then
                    Expect.equal offForward 0.0 "restarted at the forward pass"
                    Expect.equal count 0.0 "Adam's per-row count starts again"
                else
                    Expect.isGreaterThan offForward 1e-3 "the stored states, moved by the steps"
                    Expect.equal count 2.0 "Adam's per-row count continues"
        }
        test "quadratic penalty: the objective uses μ from the schedule, multiplied after every epoch and capped" {
            let program = mlp 3L [ 4L ] 2L Activations.Tanh Losses.CrossEntropy
            let x, y = randomBatch 22 5L 3L 2L
            use w = program.Initialise(1, torch.CPU, f64)
            let schedule = PenaltySchedule(0.5, 3.0, 10.0)
            let problem, game, _ = liftAll (QuadraticPenalty(schedule)) program w x y 2 0 (constantRules 0.1)
            use _p = problem
            use _g = game
            use g = new torch.Generator(6UL)
            let h = (player game PlayerNames.States).Variables.[0]
            using (torch.no_grad()) (fun _ -> h.add_(0.5 * torch.randn(h.shape, dtype = f64, generator = g)) |> ignore)
            let defect = h - program.ForwardBlock(0, x, w.Block(0))
            let loss = program.Loss.PerExample(program.ForwardBlock(1, h, w.Block(1)), y).sum().ToDouble()
            let squared = defect.square().sum().ToDouble()
            for (epochsDone, mu) in [ 0, 0.5; 1, 1.5; 2, 4.5; 3, 10.0; 4, 10.0 ] do
                if epochsDone > 0 then problem.EndEpoch(epochsDone)
                Expect.floatClose Accuracy.veryHigh (game.Objective()) ((loss + 0.5 * mu * squared) / 5.0) $"μ = {mu} after {epochsDone} epochs"
                Expect.equal problem.Diagnostics.["mu"] mu "reported μ"
        }

        test "reparametrised states enter the objective through the activation: h = σ(u)" {
            for act in [ Activations.ReLU; Activations.Tanh ] do
                let program = mlp 3L [ 4L ] 2L act Losses.CrossEntropy
                let x, y = randomBatch 23 6L 3L 2L
                use w = program.Initialise(2, torch.CPU, f64)
                let problem, game, _ = liftAll (MultipleShooting(MultipleShootingOptions(ReparametriseStates = true))) program w x y 2 0 (constantRules 0.1)
                use _p = problem
                use _g = game
                use g = new torch.Generator(7UL)
                let u = (player game PlayerNames.States).Variables.[0]
                let lambda = (player game PlayerNames.Multipliers).Variables.[0]
                using (torch.no_grad()) (fun _ ->
                    u.copy_(torch.randn(u.shape, dtype = f64, generator = g) * 2.0) |> ignore // many u < 0: relu(u) ≠ u
                    lambda.copy_(torch.randn(lambda.shape, dtype = f64, generator = g)) |> ignore)
                let h = act.Apply(u)
                let defect = h - program.ForwardBlock(0, x, w.Block(0))
                let loss = program.Loss.PerExample(program.ForwardBlock(1, h, w.Block(1)), y).sum()
                let expected = (loss + (lambda * defect).sum()).ToDouble() / 6.0
                Expect.floatClose Accuracy.veryHigh (game.Objective()) expected $"{act.Name}: the objective sees σ(u), not u"
        }

        test "projected states stay in the activation's range; unprojected ones leave it" {
            // min over the states of the Lagrangian pushes some states of a ReLU block below zero
            // (and some of a tanh block beyond ±1); the projection keeps them in the range.
            for act, lower, upper in [ Activations.ReLU, 0.0, Double.PositiveInfinity; Activations.Tanh, -1.0, 1.0 ] do
                let run project =
                    let program = mlp 3L [ 6L ] 3L act Losses.CrossEntropy
                    let x, y = randomBatch 24 8L 3L 3L
                    let x = 4.0 * x // saturated tanh units: states start near ±1
                    use w = program.Initialise(3, torch.CPU, f64)
                    let problem, game, _ = liftAll (MultipleShooting(MultipleShootingOptions(ProjectStates = project))) program w x y 3 0 (constantRules 0.5)
                    use _p = problem
                    use _g = game
                    let rows = [| PlayerNames.States; PlayerNames.Multipliers |]
                    use view = new Restricted(game, rows)
                    for _ in 1 .. 30 do Solvers.Extragradient().Step(view)
                    let h = (player game PlayerNames.States).Variables.[0]
                    h.min().ToDouble(), h.max().ToDouble()
                let lo, hi = run true
                Expect.isTrue (lo >= lower && hi <= upper) $"{act.Name} projected: states in [{lo}, {hi}]"
                let lo, hi = run false
                Expect.isTrue (lo < lower || hi > upper) $"{act.Name} unprojected: states leave the range, [{lo}, {hi}]"
        }

        test "extraprop extrapolates every player; extraprop-rows extrapolates only the rows and evaluates the weights' operator once per step" {
            // One step of each method's solver on a recorded game: which players each operator
            // evaluation asks for, and the values of every player at each evaluation.
            let step (methodName: string) =
                let m = Lifting.Methods.Resolve methodName
                let program = mlp 3L [ 4L ] 2L Activations.ReLU Losses.CrossEntropy
                let x, y = randomBatch 25 6L 3L 2L
                use w = program.Initialise(1, torch.CPU, f64)
                let log = Log(KeepValues = true)
                let problem, game, _ = liftAll (Recording(m.Formulation, log)) program w x y 2 m.Solver.MemorySlots m.StepRules
                use _p = problem
                use _g = game
                let start = [| for v in (player game PlayerNames.Weights).Variables -> v.detach().clone() |]
                m.Solver.Step(game)
                [ for (_, players) in log.Requests -> Set.ofArray players ], List.ofSeq log.Values, start
            let same (a: Tensor[]) (b: Tensor[]) = Array.forall2 (fun (u: Tensor) (v: Tensor) -> (u - v).abs().max().ToDouble() = 0.0) a b
            let rows = Set.ofList [ PlayerNames.States; PlayerNames.Multipliers ]
            let all = Set.add PlayerNames.Weights rows
            let requests, values, start = step "extraprop"
            // One inner extragradient iteration on the rows (2 evaluations), then the outer one.
            Expect.equal requests [ rows; rows; all; all ] "extraprop: the outer extragradient evaluates every player at the start and at the extrapolated point"
            Expect.isFalse (same values.[3].[PlayerNames.Weights] start) "extraprop: the update's evaluation sees extrapolated weights"
            Expect.isFalse (same values.[3].[PlayerNames.States] values.[2].[PlayerNames.States]) "extraprop: and extrapolated states"
            let requests, values, start = step "extraprop-rows"
            Expect.equal requests [ rows; rows; rows; all ] "extraprop-rows: the extrapolation evaluates the rows alone, the update every player"
            Expect.isTrue (same values.[3].[PlayerNames.Weights] start) "extraprop-rows: the update's evaluation sees the weights unextrapolated"
            for name in rows do
                Expect.isFalse (same values.[3].[name] values.[2].[name]) $"extraprop-rows: the update's evaluation sees extrapolated {name}"
        }

        test "the cosine to backprop is +1 for back-propagation and for the Lagrangian at adjoint multipliers" {
            let program = mlp 4L [ 5L ] 3L Activations.Tanh Losses.CrossEntropy
            let x, y = randomBatch 26 7L 4L 3L
            use w = program.Initialise(4, torch.CPU, f64)
            let batchOf () = new Lifting.Data.MiniBatch(torch.arange(7L, dtype = torch.ScalarType.Int64), x, y)
            let problem, game, _ = liftAll SingleShooting.Instance program w x y 3 0 (constantRules 0.1)
            use _p = problem
            use _g = game
            Expect.floatClose Accuracy.high (Lifting.Training.Trainer.CosineToBackprop(program, w, game, batchOf ())) 1.0 "backprop's own direction"
            let adjoints = MultipleShooting.AdjointMultipliers(program, w.Tensors, x, y)
            let problem2, game2, _ = liftAll (MultipleShooting()) program w x y 3 0 (constantRules 0.1)
            use _p2 = problem2
            use _g2 = game2
            using (torch.no_grad()) (fun _ -> Seq.iter2 (fun (v: Tensor) (a: Tensor) -> v.copy_(a) |> ignore) (player game2 PlayerNames.Multipliers).Variables adjoints)
            Expect.floatClose Accuracy.high (Lifting.Training.Trainer.CosineToBackprop(program, w, game2, batchOf ())) 1.0 "the Lagrangian's weight direction at the adjoints is backprop's"
            using (torch.no_grad()) (fun _ -> Seq.iter2 (fun (v: Tensor) (a: Tensor) -> v.copy_(-a) |> ignore) (player game2 PlayerNames.Multipliers).Variables adjoints)
            Expect.isLessThan (Lifting.Training.Trainer.CosineToBackprop(program, w, game2, batchOf ())) 0.99 "negated multipliers point elsewhere"
        }

        test "reduced inequality ‖g‖₁ − ε ≤ 0: multipliers projected onto λ ≥ 0 never go negative and stay 0 on rows kept strictly feasible; unprojected they go negative" {
            // From perturbed states some rows violate ‖g‖₁ ≤ ε and some satisfy it strictly. On the
            // latter ∂L/∂λ = ‖g‖₁ − ε < 0, so ascent lowers λ; the projection stops it at 0.
            let eps = 2.0
            let run (options: MultipleShootingOptions) (project: bool) =
                let program = mlp 4L [ 6L ] 3L Activations.Tanh Losses.CrossEntropy
                let x, y = randomBatch 27 16L 4L 3L
                use w = program.Initialise(5, torch.CPU, f64)
                let problem, game, _ = liftAll (MultipleShooting(options)) program w x y 3 0 (constantRules 0.05)
                use _p = problem
                use _g = game
                use g = new torch.Generator(8UL)
                let h = (player game PlayerNames.States).Variables.[0]
                using (torch.no_grad()) (fun _ -> h.add_(0.5 * torch.randn(h.shape, dtype = f64, generator = g)) |> ignore)
                let lambda = (player game PlayerNames.Multipliers).Variables.[0]
                let zero = torch.tensor(0.0, dtype = f64)
                let excess () : Tensor = using (torch.no_grad()) (fun _ -> (h - program.ForwardBlock(0, x, w.Block(0))).abs().sum(1L) - eps)
                let initial = excess ()
                let mutable inside = initial.lt(zero)
                use view = new Restricted((if project then game :> IGame else withoutProjections game), [| PlayerNames.States; PlayerNames.Multipliers |])
                let mutable lowest, decreased = 0.0, false
                for _ in 1 .. 60 do
                    let before = lambda.detach().clone()
                    Solvers.Extragradient().Step(view)
                    lowest <- min lowest (lambda.min().ToDouble())
                    decreased <- decreased || (lambda - before).min().ToDouble() < 0.0
                    inside <- inside.logical_and(excess().lt(zero))
                initial, excess (), lambda.detach().clone(), inside, lowest, decreased
            let inequality = MultipleShootingOptions(ReducedConstraint = true, Inequality = true, Epsilon = eps)
            let initial, final, lambda, inside, lowest, _ = run inequality true
            Expect.isTrue (initial.min().ToDouble() < 0.0 && initial.max().ToDouble() > 0.0) $"some rows start inside, some outside: {initial}"
            Expect.equal lowest 0.0 "projected: λ ≥ 0 at every iteration"
            Expect.isGreaterThan (lambda.max().ToDouble()) 0.0 "violated rows raise their multiplier"
            Expect.isTrue (inside.any().ToBoolean()) "some rows stay strictly feasible throughout"
            Expect.equal (lambda.masked_select(inside).abs().max().ToDouble()) 0.0 "complementary slackness: λ = 0 on them"
            Expect.isLessThan (final.max().ToDouble()) (initial.max().ToDouble()) "the worst violation shrinks"
            let _, _, lambda, _, lowest, _ = run inequality false
            Expect.isLessThan lowest 0.0 "without the projection λ goes negative"
            // Under the ReLU form ∂L/∂λ = ReLU(‖g‖₁ − ε) ≥ 0: the multipliers never decrease, so
            // λ ≥ 0 holds without any projection (which is why that form carries none).
            let _, _, lambda, _, lowest, decreased = run (MultipleShootingOptions(ReducedConstraint = true, Epsilon = eps)) true
            Expect.isFalse decreased "ReLU form: no multiplier ever decreases"
            Expect.equal lowest 0.0 "ReLU form: λ ≥ 0 unprojected"
            Expect.isGreaterThan (lambda.max().ToDouble()) 0.0 "ReLU form: violated rows raise their multiplier"
        }

        test "the operator refuses a player that is held fixed" {
            let program = mlp 3L [ 4L ] 2L Activations.ReLU Losses.CrossEntropy
            let x, y = randomBatch 1 4L 3L 2L
            use w = program.Initialise(1, torch.CPU, f64)
            let problem, game, _ = liftAll (MultipleShooting()) program w x y 2 0 (constantRules 0.1)
            use _p = problem
            use _g = game
            use view = new Restricted(game, [| PlayerNames.States; PlayerNames.Multipliers |])
            Expect.throwsT<InvalidOperationException> (fun () -> game.Operator([| player game PlayerNames.Weights |]) |> ignore) "weights are held"
            view.Operator(view.Players) |> ignore
        }

        test "a mini-batch step changes only its own rows of the per-example store" {
            let program = mlp 3L [ 4L ] 2L Activations.ReLU Losses.CrossEntropy
            let x, y = randomBatch 9 10L 3L 2L
            use w = program.Initialise(1, torch.CPU, f64)
            let data = dataset x y 2
            let rules = Func<string, IStepRule>(fun _ -> StepRules.AdaGrad(0.1))
            let context = LiftContext(program, data, torch.CPU, f64, 0, rules, 0)
            use problem = MultipleShooting().Lift(context, w)
            let store = (problem :?> LiftedProblem)
            let snapshot () =
                let s = store.Store
                s.Names |> Seq.sort |> Seq.map (fun n -> n, s.[n].clone()) |> Array.ofSeq
            let before = snapshot ()
            let rows = torch.tensor([| 2L; 7L; 4L |])
            let batch = new Lifting.Data.MiniBatch(rows, x.index_select(0L, rows), y.index_select(0L, rows))
            use game = problem.Batch(batch)
            Solvers.Extragradient().Step(game)
            game.Commit()
            let after = snapshot ()
            Expect.equal before.Length 4 "states, multipliers and their AdaGrad accumulators are stored"
            for ((name, b), (_, a)) in Array.zip before after do
                let changed: Tensor = (a - b).abs().reshape(a.shape.[0], -1L).sum(1L).gt(torch.tensor(0.0, dtype = a.dtype))
                for i in 0L .. 9L do
                    let inBatch = [ 2L; 7L; 4L ] |> List.contains i
                    if not inBatch then Expect.isFalse (changed.[i].ToBoolean()) $"{name} row {i} outside the batch is untouched"
                let changedInBatch = [ 2L; 7L; 4L ] |> List.exists (fun i -> changed.[i].ToBoolean())
                Expect.isTrue changedInBatch $"{name}: some batch row changed"
        }
    ]

/// A formulation written in F# against the public API, without touching the engine: multiple
/// shooting with an exact L1 penalty, L_i = ℓ_i + μ Σ_l ‖h_l − f_l(h_{l−1})‖₁. It joins the
/// conformance suite with one row (ConformanceTests.fs).
type L1Penalty(mu: float) =
    member _.Mu = mu
    interface IFormulation with
        member _.Name = "l1-penalty"
        member _.Description = "exact L1 penalty μ‖h_l − f_l(h_(l−1))‖₁ over per-example states (defined in F#)"
        member _.PlayerNames = [| PlayerNames.Weights; PlayerNames.States |] :> _
        member _.HasMaximisingPlayers = false
        member _.DefaultSchedule = [| SubProblem([| PlayerNames.States |], 1); SubProblem([| PlayerNames.Weights |], 1) |] :> _
        member this.Lift(context, weights) =
            new L1PenaltyProblem(this, context, weights, context.ForwardStates(weights, 1024)) :> ILiftedProblem

and L1PenaltyProblem(formulation: L1Penalty, context: LiftContext, weights: Weights, initial: Tensor[]) =
    inherit LiftedProblem(formulation, context, weights)
    // Created on first use: F# cannot touch `this` while constructing.
    let mutable states : RowGroup option = None
    member this.States =
        match states with
        | Some s -> s
        | None ->
            let rows = [| for l in 0 .. initial.Length - 1 -> struct ($"h{l + 1}", initial.[l]) |]
            let s = RowGroup(this.Store, context, PlayerNames.States, rows)
            states <- Some s
            s
    member _.Mu = formulation.Mu
    override this.Batch(batch) = new L1PenaltyGame(this, batch) :> IBatchGame
    override this.MeasureDefects(rows) =
        let group = this.States
        let store = this.Store
        base.MeasureDefects(Func<int, Tensor, Tensor>(fun l indices -> store.Gather(group.Keys.[l], indices)), rows, 2048)

and L1PenaltyGame(problem: L1PenaltyProblem, batch: Lifting.Data.MiniBatch) =
    inherit BatchGame(batch)
    let group = problem.States
    let struct (h, hStates) = group.Gather(batch.Indices)
    let players = [| problem.WeightsPlayer(); Player(PlayerNames.States, Role.Minimise, h, group.StepRule, hStates, true) |]
    override _.Players = players :> _
    override this.EvaluateSum() =
        let program = problem.Program
        let w = problem.Weights.Tensors
        let segments = program.Segments
        let hidden = segments.Count - 1
        let mutable penalty = torch.zeros(1L, dtype = h.[0].dtype).squeeze()
        let defects = ResizeArray<Tensor>()
        for l in 0 .. hidden - 1 do
            let g = h.[l] - segments.[l].Forward(segments.[l].InputsFrom(batch.Inputs, h), w)
            defects.Add g
            penalty <- penalty + g.abs().sum()
        let loss = program.Loss.PerExample(segments.[hidden].Forward(segments.[hidden].InputsFrom(batch.Inputs, h), w), batch.Labels).sum()
        this.Record(loss, defects, null)
        loss + problem.Mu * penalty
    override _.Commit() = problem.States.Scatter(batch.Indices, h, hStates)
