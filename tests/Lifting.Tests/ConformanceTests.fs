/// The shared conformance suite: every formulation and every solver joins by adding one row.
/// The checks themselves are the conformance kit's (src/Lifting.Testing, `Conformance`), which users
/// run on their own formulations and solvers (docs/extending.md). Each compatible (formulation,
/// solver) pair runs a few steps on a tiny program from perturbed, infeasible states and must keep
/// every tensor finite and lower both the forward-pass loss and the mean defect.
///
/// One documented exception: plain gradient descent–ascent (and the projection method, its
/// projected form) does not converge on a Lagrangian whose state Hessian is only semi-definite —
/// the multiplier/state pair rotates (seed 001 §2.1 and Fig. 2: "GDA lacks stability"). For those
/// pairs the suite checks finiteness and the loss, not the defect. The augmented Lagrangian's
/// (c/2)‖g‖² term damps the rotation, so GDA on it must lower the defect like everyone else.
///
/// DistProp keeps no per-example states to perturb; it starts infeasible because its class means
/// start at random points on the unit sphere. Its defect (`MeasureDefects`) is its own constraint
/// violation, the mean |g_ε(z)| of the z-scores (f_1(x_i) − μ_1(y_i)) / σ_1(y_i), not |h − f(h_prev)|:
/// the suite asks it to lower that and the loss on its synthetic samples (its loss term), since the
/// forward-pass loss is not what it minimises (`FormulationCase.LowersGameLoss`).
module Lifting.Tests.ConformanceTests

open System
open System.Collections.Generic
open Expecto
open Lifting.Formulations
open Lifting.Solvers
open Lifting.Testing

/// Formulation rows: name, the formulation, the step size of its players, and whether it is an
/// undamped Lagrangian (multipliers without augmentation).
let formulations : (string * (unit -> IFormulation) * float * bool) list = [
    "single-shooting", (fun () -> SingleShooting.Instance :> IFormulation), 0.1, false
    "multiple-shooting", (fun () -> MultipleShooting()), 0.05, true
    "multiple-shooting ε", (fun () -> MultipleShooting(MultipleShootingOptions(Epsilon = 1e-3))), 0.05, true
    "multiple-shooting reparametrised", (fun () -> MultipleShooting(MultipleShootingOptions(ReparametriseStates = true))), 0.05, true
    // ε must leave the reduced constraint satisfiable, or its multiplier grows without bound.
    "multiple-shooting reduced", (fun () -> MultipleShooting(MultipleShootingOptions(ReducedConstraint = true, Epsilon = 0.5))), 0.02, true
    // The same feasible set as the inequality ‖g‖₁ − ε ≤ 0, multipliers projected onto λ ≥ 0.
    "multiple-shooting reduced inequality", (fun () -> MultipleShooting(MultipleShootingOptions(ReducedConstraint = true, Inequality = true, Epsilon = 0.5))), 0.02, true
    "multiple-shooting projected states", (fun () -> MultipleShooting(MultipleShootingOptions(ProjectStates = true))), 0.05, true
    "augmented Lagrangian", (fun () -> MultipleShooting(MultipleShootingOptions(Augmentation = 1.0))), 0.05, false
    "quadratic penalty", (fun () -> QuadraticPenalty(PenaltySchedule(1.0, 2.0, 100.0), 3)), 0.05, false
    "regularized", (fun () -> QuadraticPenalty(PenaltySchedule.Fixed 5.0)), 0.05, false
    // DistProp with one fixed set of variates is one fixed game; redrawn each step (its default),
    // every step is another game, and the suite measures loss and defect on yet another draw.
    "distprop per class", (fun () -> DistProp(DistPropOptions(Epsilon = 0.0, SamplesPerClass = 2, Multipliers = MultiplierPlacement.Class, ResampleVariates = false))), 0.05, true
    "distprop per example", (fun () -> DistProp(DistPropOptions(Epsilon = 0.1, Multipliers = MultiplierPlacement.Example, ResampleVariates = false))), 0.05, true
    "distprop reduced", (fun () -> DistProp(DistPropOptions(Epsilon = 0.5, ReducedConstraint = true, Multipliers = MultiplierPlacement.Example, ResampleVariates = false))), 0.02, true
    "distprop per example, variates redrawn every step", (fun () -> DistProp(DistPropOptions(Epsilon = 0.1, Multipliers = MultiplierPlacement.Example))), 0.05, true
    "distprop augmented, σ shared by the classes, means at radius √H", (fun () -> DistProp(DistPropOptions(Epsilon = 0.1, Multipliers = MultiplierPlacement.Example, ResampleVariates = false, Augmentation = 1.0, SharedScale = true, FeatureScaleMeans = true))), 0.05, false
    // Defined in F# in FormulationTests.fs: a new formulation joins with one row.
    "l1-penalty (F#)", (fun () -> FormulationTests.L1Penalty(1.0)), 0.02, false
    "fenchel back-propagation", (fun () -> FenchelBackprop([| 0.5 |])), 0.1, false
    // The feedback-alignment family: the weights take the FA / DFA / sign-symmetric direction.
    "feedback alignment", (fun () -> FeedbackAlignment(FeedbackKind.Random)), 0.1, false
    "direct feedback alignment", (fun () -> FeedbackAlignment(FeedbackKind.Direct)), 0.1, false
    "sign-symmetric feedback", (fun () -> FeedbackAlignment(FeedbackKind.SignSymmetric)), 0.1, false
    // Deeply supervised nets: weights and heads descend ℓ + λ Σ_l ℓ(head_l(h_l)) (λ held constant).
    "deeply supervised nets", (fun () -> DeeplySupervised([| 0.5 |], 0)), 0.1, false
    // Seed 004: codes live for one mini-batch; generic solvers see the gradient of Q_μ.
    "online alternating minimisation", (fun () -> OnlineAlternatingMinimisation(OnlineAlternatingMinimisationOptions(Mu = MuSchedule(1.0)))), 0.05, false
    "online alternating minimisation, memories", (fun () -> OnlineAlternatingMinimisation(OnlineAlternatingMinimisationOptions(Mu = MuSchedule(1.0), Memory = true))), 0.05, false
    // The contrastive family (seed 002): per-batch activations inferred, then the weights step.
    // Solvers that move weights and activations together evaluate the weights' direction at
    // activations inferred for other weights; the top-down surrogates' (1/β)E_k then acts as a
    // penalty of stiffness 1/β on the weights, so with steps of 0.1 they need β near 1.
    "pcn", (fun () -> PredictiveCoding(ContrastiveOptions(Beta = [| 1.0 |], InferenceSteps = 10))), 0.1, false
    "lpom", (fun () -> LiftedProximalOperatorMachine(ContrastiveOptions(Beta = [| 1.0 |], InferenceSteps = 10))), 0.1, false
    "chl", (fun () -> ContrastiveHebbian(ContrastiveOptions(Beta = [| 0.2 |], Discount = 0.2, InferenceSteps = 10))), 0.1, false
    "eqprop", (fun () -> ContrastiveHebbian(ContrastiveOptions(Beta = [| 0.05 |], Discount = 0.1, Symmetric = true, InferenceSteps = 10))), 0.1, false
    // Issue 27: weights-only methods whose direction comes from a pass of their own over the segments.
    "newton-backprop", (fun () -> NewtonBackprop()), 0.1, false
    "dual propagation", (fun () -> DualPropagation(0.5)), 0.1, false
    "dual propagation, 3 sweeps", (fun () -> DualPropagation(0.5, 3)), 0.1, false
    "error-based predictive coding", (fun () -> ErrorPredictiveCoding(0.5)), 0.1, false
    "error-based predictive coding, 5 steps of 0.5", (fun () -> ErrorPredictiveCoding(0.5, 5, 0.5)), 0.1, false
    // Target propagation (issue 27 item 2): the weights regress onto layer targets, the inverses
    // onto their reconstructions. No back-propagation limit row: with exact inverses the lower
    // layers' targets are Gauss-Newton-like steps, not the gradient (DifferenceTargetPropagationTests).
    "difference target propagation", (fun () -> TargetPropagation(0.1, 0.1)), 0.1, false
    "target propagation", (fun () -> TargetPropagation(0.1, 0.1, difference = false)), 0.1, false
]

/// Solver rows: name, factory from the formulation's schedule, whether it solves saddle points,
/// whether it converges on undamped bilinear couplings.
let solvers : (string * (IReadOnlyList<SubProblem> -> ISolver) * bool * bool) list = [
    "gda", (fun _ -> Solvers.GradientDescentAscent()), true, false
    "gda-alternating", (fun _ -> Solvers.AlternatingGradientDescentAscent()), true, true
    "extragradient", (fun _ -> Solvers.Extragradient()), true, true
    "optimistic", (fun _ -> Solvers.ExtragradientFromThePast()), true, true
    "mirror-prox", (fun _ -> Solvers.MirrorProx()), true, true
    "projection", (fun _ -> Solvers.Projection()), true, false
    "alternating", (fun schedule -> Solvers.Alternating(schedule)), false, true
    // A longer look-ahead for the multipliers (EG+-style); the other players extrapolate as usual.
    "extragradient, multipliers extrapolate ×2", (fun _ -> Solvers.Extragradient(fun p -> if p = PlayerNames.Multipliers then 2.0 else 1.0)), true, true
    "extragradient, weights not extrapolated", (fun _ -> Solvers.Extragradient(fun p -> if p = PlayerNames.Weights then 0.0 else 1.0)), true, true
    // One inner extragradient iteration on the per-example players (weights held) before each
    // extragradient iteration, as ExtraProp does.
    "extragradient with an inner iteration", (fun schedule ->
        let perExample = schedule |> Seq.collect (fun s -> s.PlayerNames) |> Seq.filter ((<>) PlayerNames.Weights) |> Seq.distinct |> Array.ofSeq
        if perExample.Length = 0 then Solvers.Extragradient()
        else WithInnerIterations(Solvers.Extragradient(), perExample, 1, Solvers.Extragradient()) :> ISolver), true, true
    // Seed 004 Algorithms 1–3 on an alternating-minimisation game (layers in parallel); plain
    // block-coordinate descent over the players of any other minimisation.
    "alternating minimisation", (fun _ -> AlternatingMinimisationSolver(AlternatingMinimisationSolverOptions(CodeSteps = 2, Parallel = true)) :> ISolver), false, true
]

/// The Lagrangian's limit (LeCun 1988): at forward states, adjoint multipliers make ∇_w L the
/// back-propagation gradient.
let adjointMultipliers (p: LimitPoint) =
    p.Set(PlayerNames.Multipliers, MultipleShooting.AdjointMultipliers(p.Case.Program, p.Weights.Tensors, p.Case.Inputs, p.Case.Labels))

/// The penalty's limit: states at their equilibrium for fixed weights (gradient steps on them alone).
let equilibratedStates (p: LimitPoint) = p.Solve([| PlayerNames.States |], Solvers.GradientDescentAscent(), 300)

/// Feedback alignment's limit: every feedback matrix F_l (in the weight's layout) set to W_l.
let feedbackFromWeights (p: LimitPoint) =
    let problem = match p.Problem with :? FeedbackAlignmentProblem as f -> f | _ -> failwith "not a feedback-alignment problem"
    use _ = TorchSharp.torch.no_grad()
    for site in problem.Sites do
        match problem.Feedback.[site.Number - 1] with
        | null -> ()
        | f -> f.copy_(p.Weights.Tensors.[site.FirstParameter]) |> ignore

/// Back-propagation limit rows: name, the formulation, how a batch game reaches the limit, the
/// step size of its players there, and the tolerance on the relative error to back-propagation.
let limits : (string * (unit -> IFormulation) * (LimitPoint -> unit) * float * float) list = [
    "single-shooting", (fun () -> SingleShooting.Instance :> IFormulation), ignore, 0.1, 1e-10
    "multiple-shooting at the adjoint multipliers", (fun () -> MultipleShooting()), adjointMultipliers, 0.1, 1e-8
    "augmented Lagrangian at the adjoint multipliers", (fun () -> MultipleShooting(MultipleShootingOptions(Augmentation = 1.0))), adjointMultipliers, 0.1, 1e-8
    "quadratic penalty, μ = 1000, states equilibrated", (fun () -> QuadraticPenalty(PenaltySchedule.Fixed 1000.0)), equilibratedStates, 0.5 / 1001.0, 2e-2
    "feedback alignment with the feedback set to the forward weights (B = Wᵀ)", (fun () -> FeedbackAlignment(FeedbackKind.Random)), feedbackFromWeights, 0.1, 1e-10
    "deeply supervised nets with λ = 0", (fun () -> DeeplySupervised([| 0.0 |], 0)), ignore, 0.1, 1e-10
    "newton-backprop (Newton states at the depth, back substitution)", (fun () -> NewtonBackprop()), ignore, 0.1, 1e-10
    "dual propagation at β = 1e-6", (fun () -> DualPropagation(1e-6)), ignore, 0.1, 1e-6
    "error-based predictive coding, one step at β = 1e-6", (fun () -> ErrorPredictiveCoding(1e-6)), ignore, 0.1, 1e-4
]

/// Taylor et al.'s ADMM (issue 27 item 4): its sub-problems are solved in closed form, so it pairs
/// with its own solver only, on a ReLU MLP (it refuses tanh, the standard program's activation). It
/// starts at the forward pass (nothing named h… to perturb) and has no back-propagation limit.
let admmPairs =
    let program () =
        let net = Lifting.Programs.Net.Mlp([| 6L |], [| 6L; 8L; 3L |], Lifting.Programs.Activations.ReLU, Lifting.Programs.Losses.CrossEntropy)
        let x, y = Support.randomBatch 17 24L 6L 3L
        RandomProgram(net, x, y, 3, 17)
    Conformance.Pairs([ FormulationCase("taylor admm", Func<_>(fun () -> TaylorAdmm() :> IFormulation), 1.0) ],
                      [ SolverCase("taylor-admm", Func<_, _>(fun _ -> TaylorAdmmSolver() :> ISolver), false, true) ],
                      ConformanceOptions(Program = Func<_>(program)))

let formulationCases = [
    for (name, make, lr, undamped) in formulations ->
        FormulationCase(name, Func<_>(make), lr, undamped, LowersGameLoss = (make () :? DistProp)) ]
let solverCases = [ for (name, make, saddle, rotations) in solvers -> SolverCase(name, Func<_, _>(make), saddle, rotations) ]

[<Tests>]
let tests =
    testList "ConformanceTests" [
        for pair in Conformance.Pairs(formulationCases, solverCases) do
            test pair.Name { pair.Check() |> ignore }
        for pair in admmPairs do
            test pair.Name { pair.Check() |> ignore }
        for (name, make, reach, lr, tolerance) in limits do
            test $"{name}: the weights' direction at the limit is back-propagation's on 10 random programs" {
                Conformance.CheckLimit(LimitCase(name, Func<_>(make), Action<_>(reach), tolerance, lr)) |> ignore
            }
        for solver in solverCases do
            let rotations = if solver.ConvergesOnRotations && solver.SolvesSaddlePoints then ", stays bounded on rotations" else ""
            let games = if solver.SolvesSaddlePoints then "strongly monotone games" else "strongly convex minimisations"
            test $"{solver.Name} converges on random {games}{rotations}" { Conformance.CheckSolver(solver) |> ignore }
    ]
