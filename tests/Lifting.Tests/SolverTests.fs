module Lifting.Tests.SolverTests

open System
open Expecto
open TorchSharp
open Lifting.Solvers
type Tensor = torch.Tensor

let f64 = torch.ScalarType.Float64
let scalar (v: float) = torch.tensor(v, dtype = f64)

/// A game from an F# function of the players' variables: L(vars) → scalar tensor. The operator is
/// computed with autograd (descent directions: ∇ for minimisers, −∇ for maximisers).
type FunctionGame(players: Player list, objective: Tensor list -> Tensor) =
    let all () = players |> List.collect (fun p -> List.ofSeq p.Variables)
    member val Evaluations = 0 with get, set
    interface IGame with
        member _.Players = players :> _
        member this.Operator(requested) =
            this.Evaluations <- this.Evaluations + 1
            use _ = torch.enable_grad()
            let vars = all ()
            let inputs = requested |> Seq.collect (fun p -> p.Variables) |> Array.ofSeq
            let grads = torch.autograd.grad([| objective vars |], inputs, allow_unused = true)
            let mutable k = 0
            [| for p in requested ->
                 [| for v in p.Variables ->
                      let g = match grads.[k] with null -> torch.zeros_like(v) | g -> g.detach()
                      k <- k + 1
                      if p.Role = Role.Maximise then -g else g |] :> Collections.Generic.IReadOnlyList<Tensor> |] :> _
        member _.Objective() =
            use _ = torch.no_grad()
            (objective (all ())).ToDouble()

let newPlayer name role (value: Tensor) (rule: IStepRule) =
    let v = value.detach().clone().requires_grad_(true)
    Player(name, role, [| v |], rule, [| rule.Init(v, false) |])

/// min_x max_y x·y from (1, 1).
let bilinear (rule: unit -> IStepRule) =
    let x = newPlayer "x" Role.Minimise (scalar 1.0) (rule ())
    let y = newPlayer "y" Role.Maximise (scalar 1.0) (rule ())
    FunctionGame([ x; y ], fun vs -> vs.[0] * vs.[1]), x, y

/// min_x max_y x·y from (1, 1) with constant steps a for x and b for y.
let bilinearSteps (a: float) (b: float) =
    let x = newPlayer "x" Role.Minimise (scalar 1.0) (StepRules.Constant a)
    let y = newPlayer "y" Role.Maximise (scalar 1.0) (StepRules.Constant b)
    FunctionGame([ x; y ], fun vs -> vs.[0] * vs.[1]), x, y

let distance (x: Player) (y: Player) =
    sqrt (x.Variables.[0].ToDouble() ** 2.0 + y.Variables.[0].ToDouble() ** 2.0)

let withMemory (solver: ISolver) (p: Player) =
    // Re-create the player's states with the solver's memory slots (as a LiftContext does).
    let states = p.StepStates |> Seq.mapi (fun i s -> new StepState(s.Slots, [| for _ in 1 .. solver.MemorySlots -> torch.zeros_like(p.Variables.[i]) |])) |> Array.ofSeq
    Player(p.Name, p.Role, p.Variables, p.StepRule, states, p.RowIndexed, geometry = p.Geometry, projections = p.Projections)

let runBilinear (solver: ISolver) iterations =
    let _, x0, y0 = bilinear (fun () -> StepRules.Constant 0.1)
    let x, y = withMemory solver x0, withMemory solver y0
    let game = FunctionGame([ x; y ], fun vs -> vs.[0] * vs.[1])
    for _ in 1 .. iterations do solver.Step game
    distance x y

/// A random quadratic-bilinear game min_x max_y xᵀAy + ½‖x‖² − ½‖y‖²/4 with vector players.
let vectorGame seed (rule: unit -> IStepRule) =
    use g = new torch.Generator(uint64 seed)
    let a = torch.randn([| 4L; 3L |], dtype = f64, generator = g)
    let x = newPlayer "x" Role.Minimise (torch.randn([| 4L |], dtype = f64, generator = g)) (rule ())
    let y = newPlayer "y" Role.Maximise (torch.randn([| 3L |], dtype = f64, generator = g)) (rule ())
    FunctionGame([ x; y ], fun vs -> vs.[0].matmul(a).dot(vs.[1]) + 0.5 * vs.[0].dot(vs.[0]) - 0.125 * vs.[1].dot(vs.[1])), x, y

let iteratesEqual (solverA: ISolver) (solverB: ISolver) (make: unit -> FunctionGame * Player * Player) iterations tolerance =
    let gA, xA, yA = make ()
    let gB, xB, yB = make ()
    for k in 1 .. iterations do
        solverA.Step gA
        solverB.Step gB
        let d = (xA.Variables.[0] - xB.Variables.[0]).abs().max().ToDouble() + (yA.Variables.[0] - yB.Variables.[0]).abs().max().ToDouble()
        Expect.isLessThanOrEqual d tolerance $"iterate {k} equal"

[<Tests>]
let tests =
    testList "SolverTests" [
        test "bilinear game: extragradient and optimistic converge, GDA spirals out" {
            let eg = runBilinear (Solvers.Extragradient()) 1000
            let og = runBilinear (Solvers.ExtragradientFromThePast()) 1000
            let gda = runBilinear (Solvers.GradientDescentAscent()) 1000
            Expect.isLessThan eg 1e-2 $"extragradient distance {eg}"
            Expect.isLessThan og 1e-2 $"optimistic distance {og}"
            Expect.isGreaterThan gda (sqrt 2.0 * 10.0) $"GDA distance {gda} grows from √2"
        }
        test "extragradient from the past evaluates the operator once per iteration" {
            let game, _, _ = bilinear (fun () -> StepRules.Constant 0.1)
            let game2, x, y = bilinear (fun () -> StepRules.Constant 0.1)
            let solver = Solvers.ExtragradientFromThePast()
            let g = FunctionGame([ withMemory solver x; withMemory solver y ], fun vs -> vs.[0] * vs.[1])
            for _ in 1 .. 10 do solver.Step g
            Expect.equal g.Evaluations 10 "one evaluation per iteration"
            for _ in 1 .. 10 do Solvers.Extragradient().Step game
            Expect.equal game.Evaluations 20 "extragradient takes two"
            ignore game2
        }
        test "mirror-prox with the Euclidean map gives extragradient's iterates" {
            iteratesEqual (Solvers.MirrorProx()) (Solvers.Extragradient()) (fun () -> bilinear (fun () -> StepRules.Constant 0.1)) 100 0.0
            iteratesEqual (Solvers.MirrorProx()) (Solvers.Extragradient()) (fun () -> vectorGame 4 (fun () -> StepRules.AdaGrad 0.05)) 100 0.0
        }
        test "ExtraAdagrad with frozen accumulators equals extragradient with that step" {
            let c, lr, eps = 4.0, 0.3, 1e-10
            let frozen () =
                let game, x, y = vectorGame 9 (fun () -> StepRules.AdaGrad(lr, initialAccumulator = c, frozen = true))
                game, x, y
            let plain () = vectorGame 9 (fun () -> StepRules.Constant(lr / (sqrt c + eps)))
            iteratesEqual (Solvers.Extragradient()) (Solvers.Extragradient()) (fun () -> frozen ()) 1 0.0
            let gF, xF, yF = frozen ()
            let gP, xP, yP = plain ()
            for _ in 1 .. 50 do
                Solvers.Extragradient().Step gF
                Solvers.Extragradient().Step gP
            let d = (xF.Variables.[0] - xP.Variables.[0]).abs().max().ToDouble()
            Expect.isLessThan d 1e-12 "same iterates"
        }
        test "ExtraAdagrad accumulates the squared operator at both half-steps" {
            let game, x, _ = bilinear (fun () -> StepRules.AdaGrad 0.1)
            // At (1, 1): F_x = y = 1. Extrapolated: x̄ = 1 − 0.1·1/1 = 0.9, ȳ = 1 + 0.1 = 1.1, so F_x(x̄) = 1.1.
            Solvers.Extragradient().Step game
            let acc = x.StepStates.[0].Slots.[0].ToDouble()
            Expect.floatClose Accuracy.high acc (1.0 + 1.1 * 1.1) "A = F(x)² + F(x̄)²"
        }
        test "Adam keeps a step count per row for per-example variables" {
            let rule = StepRules.Adam(0.01)
            let v = torch.zeros([| 3L; 2L |], dtype = f64)
            let state = rule.Init(v, true)
            Expect.sequenceEqual state.Slots.[2].shape [| 3L; 1L |] "one count per row"
            let g = torch.tensor([| 1.0; -2.0; 0.5; 3.0; -1.0; 4.0 |], dtype = f64).reshape(3L, 2L)
            let d = rule.Displacement(g, state)
            Expect.isLessThan ((d - 0.01 * g.sign()).abs().max().ToDouble()) 1e-8 "first step ≈ lr·sign(g)"
            // Step only rows 0 and 2 again (as a formulation would for a batch holding them).
            let rows = torch.tensor([| 0L; 2L |])
            let sub = new StepState([| for s in state.Slots -> s.index_select(0L, rows) |])
            rule.Displacement(g.index_select(0L, rows), sub) |> ignore
            for s in 0 .. 2 do state.Slots.[s].index_copy_(0L, rows, sub.Slots.[s]) |> ignore
            Expect.sequenceEqual (state.Slots.[2].flatten().data<float>().ToArray()) [| 2.0; 1.0; 2.0 |] "per-row counts"
        }
        test "step rules reject impossible hyperparameters naming the value" {
            let check (f: unit -> IStepRule) (fragment: string) =
                let ex = Expect.throwsC (fun () -> f () |> ignore) id
                Expect.stringContains ex.Message fragment $"message: {ex.Message}"
            check (fun () -> StepRules.Constant -1.0) "-1"
            check (fun () -> StepRules.Constant nan) "NaN"
            check (fun () -> StepRules.Adam(0.1, beta1 = 1.5)) "beta1: 1.5"
            check (fun () -> StepRules.AdaGrad(0.1, eps = 0.0)) "eps"
        }
        test "projection keeps a non-negative player non-negative" {
            let x = Player("x", Role.Minimise, [| (scalar 0.5).requires_grad_(true) |], StepRules.Constant 0.1, [| StepState.Empty |], projection = Projections.NonNegative)
            // min_x (x + 1)²: unconstrained minimum at −1, projected solution 0.
            let game = FunctionGame([ x ], fun vs -> (vs.[0] + 1.0) * (vs.[0] + 1.0))
            for _ in 1 .. 50 do Solvers.Projection().Step game
            Expect.equal (x.Variables.[0].ToDouble()) 0.0 "stays at the boundary"
        }
        test "entropic mirror-prox solves rock-paper-scissors on the simplex" {
            let a = torch.tensor([| 0.0; -1.0; 1.0; 1.0; 0.0; -1.0; -1.0; 1.0; 0.0 |], dtype = f64).reshape(3L, 3L)
            let start (v: float[]) = torch.tensor(v, dtype = f64).requires_grad_(true)
            let p = Player("p", Role.Minimise, [| start [| 0.6; 0.3; 0.1 |] |], StepRules.Constant 0.2, [| StepState.Empty |], geometry = MirrorMaps.Simplex)
            let q = Player("q", Role.Maximise, [| start [| 0.2; 0.2; 0.6 |] |], StepRules.Constant 0.2, [| StepState.Empty |], geometry = MirrorMaps.Simplex)
            let game = FunctionGame([ p; q ], fun vs -> vs.[0].matmul(a).dot(vs.[1]))
            for _ in 1 .. 2000 do Solvers.MirrorProx().Step game
            for player in [ p; q ] do
                let v = player.Variables.[0]
                Expect.floatClose Accuracy.high (v.sum().ToDouble()) 1.0 "on the simplex"
                Expect.isLessThan ((v - 1.0 / 3.0).abs().max().ToDouble()) 1e-3 $"{player.Name} near uniform"
        }
        test "the alternating solver moves only scheduled players; alternating GDA differs from simultaneous" {
            let game, x, y = bilinear (fun () -> StepRules.Constant 0.1)
            Solvers.Alternating([ SubProblem([| "x" |], 3) ]).Step game
            Expect.equal (y.Variables.[0].ToDouble()) 1.0 "y untouched"
            Expect.floatClose Accuracy.high (x.Variables.[0].ToDouble()) 0.7 "x took 3 steps of 0.1"
            let g1, x1, _ = bilinear (fun () -> StepRules.Constant 0.1)
            let g2, x2, y2 = bilinear (fun () -> StepRules.Constant 0.1)
            Solvers.GradientDescentAscent().Step g1
            Solvers.AlternatingGradientDescentAscent().Step g2
            Expect.floatClose Accuracy.high (y2.Variables.[0].ToDouble()) (1.0 + 0.1 * 0.9) "y ascends at the updated x"
            Expect.equal (x1.Variables.[0].ToDouble()) (x2.Variables.[0].ToDouble()) "x steps alike"
            let ex = Expect.throwsC (fun () -> Solvers.Alternating([ SubProblem([| "z" |], 1) ]).Step game) id
            Expect.stringContains ex.Message "'z'" "unknown player named"
        }
        test "inner iterations move only the named players before the outer iteration" {
            let game, x, y = bilinear (fun () -> StepRules.Constant 0.1)
            let solver = WithInnerIterations(Solvers.Extragradient(), [| "x" |], 2, Solvers.Alternating([ SubProblem([| "x" |], 1) ]))
            solver.Step game
            Expect.equal (y.Variables.[0].ToDouble()) 1.0 "y held fixed"
            Expect.equal game.Evaluations 5 "2 inner extragradient iterations (2 evaluations each) and 1 outer step"
            Expect.floatClose Accuracy.high (x.Variables.[0].ToDouble()) 0.7 "x took three steps of 0.1 (F_x = y = 1)"
            let ex = Expect.throwsC (fun () -> WithInnerIterations(Solvers.ExtragradientFromThePast(), [| "x" |], 1, Solvers.Extragradient()) |> ignore) id
            Expect.stringContains ex.Message "memory" "an inner solver needing memory the outer does not provide is refused"
        }
        test "the cosine schedule scales the wrapped rule's step by ½(1 + cos(π(e−1)/E))" {
            let rule = Schedules.Cosine(StepRules.Constant 0.2)
            let v = torch.zeros([| 2L |], dtype = f64)
            let state = rule.Init(v, false)
            let g = torch.ones([| 2L |], dtype = f64)
            for (epoch, factor) in [ 1, 1.0; 3, 0.5; 5, 0.0 ] do
                rule.Advance(epoch, 4)
                Expect.floatClose Accuracy.high (rule.Displacement(g, state).[0].ToDouble()) (0.2 * factor) $"epoch {epoch} of 4"
        }
        test "the cosine schedule with a settle fraction decays over the first epochs, then holds the player" {
            let rule = Schedules.Cosine(StepRules.Constant 0.2, 0.5)
            let v = torch.zeros([| 2L |], dtype = f64)
            let state = rule.Init(v, false)
            let g = torch.ones([| 2L |], dtype = f64)
            for (epoch, factor) in [ 1, 1.0; 2, 0.5; 3, 0.0; 4, 0.0 ] do
                rule.Advance(epoch, 4)
                Expect.floatClose Accuracy.high (rule.Displacement(g, state).[0].ToDouble()) (0.2 * factor) $"epoch {epoch} of 4, the last 2 settle"
            let ex = Expect.throwsC (fun () -> Schedules.Cosine(StepRules.Constant 0.2, 1.0) |> ignore) id
            Expect.stringContains ex.Message "settle" "a settle fraction of 1 leaves no epoch to learn in"
        }
        test "extragradient with a scaled extrapolation: unit scales are extragradient, and on a rotation the tuned scales contract to √(ab)" {
            iteratesEqual (Solvers.Extragradient(fun _ -> 1.0)) (Solvers.Extragradient()) (fun () -> bilinear (fun () -> StepRules.Constant 0.1)) 50 0.0
            // min_x max_y xy with steps a = 0.2 (x) and b = 0.5 (y): γ_y·b·a = γ_x·a·b = 1 zeroes the
            // diagonal of the iteration matrix, whose spectral radius is then √(ab) = √0.1 per iteration.
            let run (solver: ISolver) =
                let game, x, y = bilinearSteps 0.2 0.5
                for _ in 1 .. 20 do solver.Step game
                sqrt (x.Variables.[0].ToDouble() ** 2.0 + y.Variables.[0].ToDouble() ** 2.0)
            let scaled = run (Solvers.Extragradient(fun _ -> 1.0 / (0.2 * 0.5)))
            let plain = run (Solvers.Extragradient())
            Expect.isLessThan scaled (1.5 * (sqrt 0.1) ** 20.0 * sqrt 2.0) $"scaled contraction: {scaled}"
            Expect.isGreaterThan plain (1e3 * scaled) $"plain extragradient is far slower: {plain}"
            Expect.throws (fun () -> (let game, _, _ = bilinearSteps 0.2 0.5 in Solvers.Extragradient(fun _ -> -1.0).Step game)) "a negative scale is refused"
        }
        test "extragradient with scale 0 for a player does not extrapolate it nor evaluate its part of F(x_k)" {
            // From (1, 1), steps 0.1: ȳ = 1 + 0.1·1 = 1.1, x̄ = x = 1; then x ← 1 − 0.1·ȳ, y ← 1 + 0.1·x̄.
            let game, x, y = bilinear (fun () -> StepRules.Constant 0.1)
            Solvers.Extragradient(fun p -> if p = "x" then 0.0 else 1.0).Step game
            Expect.floatClose Accuracy.high (x.Variables.[0].ToDouble()) 0.89 "x steps with the extrapolated y"
            Expect.floatClose Accuracy.high (y.Variables.[0].ToDouble()) 1.1 "y steps with the unmoved x"
            Expect.equal game.Evaluations 2 "two evaluations"
        }
        test "the solver catalog knows every solver and rejects unknown names" {
            for info in SolverCatalog.All do
                Expect.equal (SolverCatalog.Create(info.Name, [||]).Name.Split('(').[0]) info.Name "name round-trips"
            let ex = Expect.throwsC (fun () -> SolverCatalog.Create("newton", [||]) |> ignore) id
            Expect.stringContains ex.Message "newton" "names the bad value"
        }
    ]
