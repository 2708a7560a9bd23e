using Lifting.Formulations;
using Lifting.Solvers;

namespace Lifting;

/// The methods Lifting ships: back-propagation, the multiple-shooting Lagrangian family (seed 001)
/// and the quadratic-penalty family (MAC, "Regularized"). Other families live in their own files
/// (`XxxMethods.All`) and are appended to `All`.
internal static class BuiltinMethods
{
    public static IEnumerable<MethodDefinition> All =>
        Core.Concat(FenchelBackpropMethods.All).Concat(ContrastiveMethods.All).Concat(DistPropMethods.All).Concat(AlternatingMinimisationMethods.All)
            .Concat(FeedbackAlignmentMethods.All).Concat(DeeplySupervisedMethods.All)
            .Concat(NewtonShootingMethods.All).Concat(DualPropagationMethods.All).Concat(ErrorPredictiveCodingMethods.All)
            .Concat(TargetPropagationMethods.All);

    private static IEnumerable<MethodDefinition> Core => new[]
    {
        Backprop with { Family = "backprop", Representative = true },
        // Per-example players take constant steps: AdaGrad's first step on a fresh row is ±α
        // whatever the gradient, and each row is visited once per epoch. One inner extragradient
        // iteration on the rows (weights held, so it is cheap) before each full iteration lets them
        // track their stationary values. The weights' step (ExtraAdam) follows a cosine schedule
        // over the first 80 % of the epochs and is held in the last 20 %, while the rows settle with
        // the state step ×0.3 and the multiplier step ÷0.3: at (0.5, 1) extragradient has spurious
        // fixed points on the row problems once the loss curvature grows (docs/methods.md).
        Lagrangian("extraprop", "multiple-shooting Lagrangian, extragradient with one inner per-example iteration, ExtraAdam weights on a cosine schedule, rows settle at the end (seed 001 ExtraProp)",
            new("extragradient", 2e-3, "cosine", 0.5, 1.0, Inner: 1, Settle: 0.2, SettleStates: 0.3)) with { Representative = true },
        // ExtraProp whose outer extragradient extrapolates only the per-example rows: the weights
        // take one step with the operator at the extrapolated rows. One full operator evaluation per
        // step instead of two, the first block evaluated once (docs/methods.md, "Speed").
        Lagrangian("extraprop-rows", "ExtraProp with only the per-example rows extrapolated (one full operator evaluation per step)",
            new("extragradient", 2e-3, "cosine", 0.5, 1.0, Inner: 1, Settle: 0.2, SettleStates: 0.3, ExtrapolateWeights: false)),
        // Seed 001's ablation: ExtraProp without extrapolation (and without the inner iteration).
        Lagrangian("gda", "multiple-shooting Lagrangian, gradient descent-ascent (ExtraProp without extrapolation; Arrow-Hurwicz-Uzawa)",
            new("gda", 2e-3, "cosine", 0.5, 1.0, Inner: 0, Settle: 0.2, SettleStates: 0.3)),
        // With c and steps η_h = 1/c, η_λ = c, one extragradient iteration on a row lands on its
        // stationary (h, λ) for the linearised problem (docs/methods.md); one inner iteration on the
        // rows before each full iteration gives the weights a near-backprop step.
        Lagrangian("auglag", "augmented Lagrangian + (c/2)|g|^2, extragradient with one inner per-example iteration, c = 1",
            new("extragradient", 1e-3, "constant", 1.0, 1.0, Inner: 1, Settle: 0, SettleStates: 1, Augmentation: 1.0)),
        Penalty("penalty", "quadratic penalty with a growing μ, alternating states/weights, final feasibility pass (MAC/BlockProp)",
            "alternating", growing: true, mu: 1.0, stateSteps: 5) with { Representative = true },
        Penalty("regularized", "fixed quadratic penalty, all variables by gradient descent (seed 001 \"Regularized\")",
            "gda", growing: false, mu: 10.0, stateSteps: 1),
    };

    private static MethodDefinition Backprop { get; } = new("backprop",
        "single shooting: back-propagation with SGD or Adam (the reference)",
        new[] { PlayerRules.Solver("gda") }.Concat(PlayerRules.StepRule(PlayerNames.Weights, "adam", 1e-3)).Append(PlayerRules.Schedule("constant")).ToArray(),
        a => new MethodParts(SingleShooting.Instance, PlayerRules.Solver(a, SingleShooting.Instance), PlayerRules.Build(a, SingleShooting.Instance)));

    private static MethodParameter EquationFlag { get; } = MethodParameter.Flag("equation", false,
        "build the formulation from its equation (EquationFormulation, docs/extending.md) instead of the hand-written class: the same iterates");

    /// ℓ + Σ_v ⟨λ_v, c(g_v)⟩ (+ (c/2)‖c(g_v)‖²), c the ε-insensitive defect: what `MultipleShooting`
    /// computes, for the options an equation can state.
    private static EquationFormulation LagrangianEquation(string name, MultipleShootingOptions options)
    {
        options.Validate();
        var unsupported = new[]
        {
            (options.ReparametriseStates, "reparametrise"), (options.ProjectStates, "project-states"), (options.ReducedConstraint, "reduced"),
            (options.Inequality, "inequality"), (options.NewtonInitialisation > 0, "newton-init"), (options.AdjointInitialisation, "adjoint-init"),
        }.FirstOrDefault(o => o.Item1);
        if (unsupported.Item1) throw new ArgumentException($"Invalid equation: true with {unsupported.Item2} (the equation-built Lagrangian has per-example states started at the forward pass and the plain or ε-insensitive defect).");
        var constraint = options.Epsilon > 0 ? Term.Shrink(options.Epsilon, Term.Defect) : Term.Defect;
        var perConstraint = Term.Inner(Term.Multiplier, constraint);
        if (options.Augmentation > 0) perConstraint += options.Augmentation / 2 * Term.SquaredNorm(constraint);
        return new EquationFormulation(name, Term.Loss + Term.OverConstraints(perConstraint));
    }

    private sealed record LagrangianDefaults(string Solver, double WeightsLr, string Schedule, double StatesLr, double MultipliersLr,
        int Inner, double Settle, double SettleStates, double Augmentation = 0, bool ExtrapolateWeights = true);

    private static MethodDefinition Lagrangian(string name, string description, LagrangianDefaults d)
    {
        var parameters = new List<MethodParameter> { PlayerRules.Solver(d.Solver) };
        parameters.AddRange(PlayerRules.StepRule(PlayerNames.Weights, "adam", d.WeightsLr));
        parameters.Add(PlayerRules.Schedule(d.Schedule));
        parameters.AddRange(PlayerRules.StepRule(PlayerNames.States, "constant", d.StatesLr));
        parameters.AddRange(PlayerRules.StepRule(PlayerNames.Multipliers, "constant", d.MultipliersLr));
        parameters.Add(MethodParameter.Integer("inner", d.Inner, "solver iterations on the per-example players alone (weights held) before each full iteration"));
        parameters.Add(MethodParameter.Named("inner-solver", "extragradient", "the solver of those inner iterations"));
        parameters.AddRange(PlayerRules.Settling(d.Settle, d.SettleStates));
        parameters.Add(MethodParameter.Flag("extrapolate-weights", d.ExtrapolateWeights, "extragradient also extrapolates the weights (off: only the per-example rows, one full operator evaluation per step)"));
        parameters.Add(MethodParameter.NonNegative("eps", 0, "epsilon-insensitive defect (seed 001 eq. 3); with reduced, the threshold of ReLU(|g|_1 - eps)"));
        parameters.Add(MethodParameter.NonNegative("c", d.Augmentation, "augmented-Lagrangian coefficient: + (c/2)|g|^2"));
        parameters.Add(MethodParameter.Flag("reparametrise", false, "states reparametrised through the block's output activation, h = act(u)"));
        parameters.Add(MethodParameter.Flag("project-states", false, "states projected onto the block's output activation's range after every step"));
        parameters.Add(MethodParameter.Flag("reduced", false, "one constraint ReLU(|g|_1 - eps) per example and block (seed 001 §5)"));
        parameters.Add(MethodParameter.Flag("inequality", false, "with reduced: the inequality |g|_1 - eps <= 0, multipliers projected onto lambda >= 0"));
        parameters.Add(MethodParameter.Integer("newton-init", 0, "initialise the states by this many Newton multiple-shooting iterations from zero, every segment at once (seed 000; 0: a sequential forward pass)"));
        parameters.Add(MethodParameter.Flag("adjoint-init", false, "initialise every example's multipliers at the forward pass's adjoint, lambda = -dloss/dh (LeCun 1988), instead of at zero"));
        parameters.Add(EquationFlag);
        return new MethodDefinition(name, description, parameters, a =>
        {
            var options = new MultipleShootingOptions
            {
                Epsilon = a.Real("eps"),
                Augmentation = a.Real("c"),
                ReparametriseStates = a.Flag("reparametrise"),
                ProjectStates = a.Flag("project-states"),
                ReducedConstraint = a.Flag("reduced"),
                Inequality = a.Flag("inequality"),
                NewtonInitialisation = a.Integer("newton-init"),
                AdjointInitialisation = a.Flag("adjoint-init"),
            };
            IFormulation formulation = a.Flag("equation") ? LagrangianEquation(name, options) : new MultipleShooting(options, name);
            var named = PlayerRules.WithoutWeightExtrapolation(a);
            return new MethodParts(formulation, PlayerRules.Solver(a, formulation, named), PlayerRules.Build(a, formulation));
        }) { Family = "lagrangian" };
    }

    private static MethodDefinition Penalty(string name, string description, string solver, bool growing, double mu, int stateSteps)
    {
        var parameters = new List<MethodParameter> { PlayerRules.Solver(solver) };
        parameters.AddRange(PlayerRules.StepRule(PlayerNames.Weights, "adam", 1e-3));
        parameters.Add(PlayerRules.Schedule("constant"));
        parameters.AddRange(PlayerRules.StepRule(PlayerNames.States, "adam", 1e-2));
        parameters.Add(MethodParameter.Positive("mu", mu, growing ? "initial penalty weight μ" : "penalty weight μ"));
        if (growing)
        {
            parameters.Add(MethodParameter.Real("mu-growth", 1.5, "factor applied to μ after every epoch", 1));
            parameters.Add(MethodParameter.Positive("mu-max", 1e4, "cap on μ"));
        }
        parameters.Add(MethodParameter.Integer("state-steps", stateSteps, "state steps per weight step in the alternating schedule", 1));
        parameters.Add(MethodParameter.Flag("restart-states", false, "start each batch's states at the forward pass of the current weights with a fresh step-rule state (as online AM's codes and PCN's activations), instead of the values stored from the example's last visit"));
        parameters.Add(EquationFlag);
        return new MethodDefinition(name, description, parameters, a =>
        {
            var schedule = growing ? new PenaltySchedule(a.Real("mu"), a.Real("mu-growth"), a.Real("mu-max")) : PenaltySchedule.Fixed(a.Real("mu"));
            if (a.Flag("equation") && a.Flag("restart-states"))
                throw new ArgumentException("Invalid equation: true with restart-states (the equation-built penalty keeps its stored states).");
            IFormulation formulation = a.Flag("equation")
                ? new EquationFormulation(name, Term.Loss + Term.Schedule("mu", schedule.Initial, schedule.Growth, schedule.Maximum) / 2 * Term.OverConstraints(Term.SquaredNorm(Term.Defect)),
                    new EquationOptions { Schedule = new QuadraticPenalty(schedule, a.Integer("state-steps")).DefaultSchedule, FeasibilityPass = true })
                : new QuadraticPenalty(schedule, a.Integer("state-steps"), name, a.Flag("restart-states"));
            return new MethodParts(formulation, PlayerRules.Solver(a, formulation), PlayerRules.Build(a, formulation));
        }) { Family = "penalty" };
    }
}
