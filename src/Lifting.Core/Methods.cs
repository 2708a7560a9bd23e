using Lifting.Formulations;
using Lifting.Solvers;

namespace Lifting;

/// The user-facing settings of a training method; every field has a per-method default.
public sealed record MethodSettings
{
    public string Method { get; init; } = "backprop";
    /// Solver name (see `lifting methods`); null = the method's default.
    public string? Solver { get; init; }
    /// Step rule of the weights (constant/sgd, adagrad, adam): the "optimizer"; null = the
    /// method's default. Per-example players keep their defaults unless named below.
    public string? StepRule { get; init; }
    /// Step rule of the states / multipliers when they differ from `StepRule`; null = the default.
    public string? StateStepRule { get; init; }
    public string? MultiplierStepRule { get; init; }
    /// Step size of the weights; null = the method's default.
    public double? LearningRate { get; init; }
    /// Step size of the per-example states; null = the method's default.
    public double? StateLearningRate { get; init; }
    /// Step size of the multipliers; null = the method's default.
    public double? MultiplierLearningRate { get; init; }
    /// ε-insensitive defect (seed 001 eq. 3).
    public double? Epsilon { get; init; }
    /// Augmented-Lagrangian coefficient c.
    public double? Augmentation { get; init; }
    /// States reparametrised through the activation's range.
    public bool? ReparametriseStates { get; init; }
    /// Reduced per-example constraint ReLU(‖g‖₁ − ε).
    public bool? ReducedConstraint { get; init; }
    public double? MuInitial { get; init; }
    public double? MuGrowth { get; init; }
    public double? MuMaximum { get; init; }
    /// Inner state steps per weight step of the alternating penalty solver.
    public int? StateSteps { get; init; }
    /// Solver iterations on the per-example players alone (weights fixed) before each full
    /// iteration: they bring states and multipliers towards their stationary values for the
    /// current weights, which the weight step then uses.
    public int? InnerIterations { get; init; }
    /// The solver of the inner iterations (default: extragradient).
    public string? InnerSolver { get; init; }
    /// Schedule of the weights' step over the epochs: "constant" or "cosine".
    public string? WeightSchedule { get; init; }
    /// The fraction of the epochs at the end during which the weights are held (step 0) while the
    /// per-example variables settle (the cosine schedule decays over the epochs before it); null =
    /// the method's default.
    public double? Settle { get; init; }
    /// While settling, the state step is multiplied and the multiplier step divided by this factor
    /// (their product, which sets the rotation's contraction, is unchanged); null = the default.
    public double? SettleStateScale { get; init; }
}

/// A method resolved into the three parts the trainer needs.
public sealed record ResolvedMethod(
    string Name,
    IFormulation Formulation,
    ISolver Solver,
    Func<string, IStepRule> StepRules,
    IReadOnlyDictionary<string, string> Settings);

/// One row of `lifting methods`.
public sealed record MethodInfo(string Name, string Description);

/// The named training methods: a formulation, a solver and per-player step rules with defaults.
public static class Methods
{
    private sealed record Defaults(string Solver, string StepRule, double WeightsLr, double StatesLr, double MultipliersLr,
        string? StateRule = null, string? MultiplierRule = null, int Inner = 0, double Augmentation = 0,
        string Schedule = "constant", double Settle = 0, double SettleStateScale = 1, bool ExtrapolateWeights = true);

    private static readonly Dictionary<string, (string Description, Defaults Defaults)> table = new()
    {
        ["backprop"] = ("single shooting: back-propagation with SGD or Adam (the reference)",
            new("gda", "adam", 1e-3, 0, 0)),
        // Per-example players take constant steps: AdaGrad's first step on a fresh row is ±α
        // whatever the gradient, and each row is visited once per epoch. One inner extragradient
        // iteration on the rows (weights held, so it is cheap) before each full iteration lets them
        // track their stationary values. The weights' step (ExtraAdam) follows a cosine schedule
        // over the first 80 % of the epochs and is held in the last 20 %, while the rows settle with
        // the state step ×0.3 and the multiplier step ÷0.3: at (0.5, 1) extragradient has spurious
        // fixed points on the row problems once the loss curvature grows (docs/methods.md).
        ["extraprop"] = ("multiple-shooting Lagrangian, extragradient with one inner per-example iteration, ExtraAdam weights on a cosine schedule, rows settle at the end (seed 001 ExtraProp)",
            new("extragradient", "adam", 2e-3, 0.5, 1.0, "constant", "constant", Inner: 1, Schedule: "cosine", Settle: 0.2, SettleStateScale: 0.3)),
        // ExtraProp whose outer extragradient extrapolates only the per-example rows: the weights take
        // one step with the operator at the extrapolated rows. One full operator evaluation per step
        // instead of two, the first block evaluated once (docs/methods.md, "Speed").
        ["extraprop-rows"] = ("ExtraProp with only the per-example rows extrapolated (one full operator evaluation per step)",
            new("extragradient", "adam", 2e-3, 0.5, 1.0, "constant", "constant", Inner: 1, Schedule: "cosine", Settle: 0.2, SettleStateScale: 0.3, ExtrapolateWeights: false)),
        // Seed 001's ablation: ExtraProp without extrapolation (and without the inner iteration).
        ["gda"] = ("multiple-shooting Lagrangian, gradient descent-ascent (ExtraProp without extrapolation; Arrow-Hurwicz-Uzawa)",
            new("gda", "adam", 2e-3, 0.5, 1.0, "constant", "constant", Schedule: "cosine", Settle: 0.2, SettleStateScale: 0.3)),
        // With c and steps η_h = 1/c, η_λ = c, one extragradient iteration on a row lands on its
        // stationary (h, λ) = (f(h_prev), −∂ℓ/∂h) for the linearised problem (docs/methods.md); one
        // inner iteration on the rows before each full iteration gives the weights a near-backprop step.
        ["auglag"] = ("augmented Lagrangian + (c/2)|g|^2, extragradient with one inner per-example iteration, c = 1",
            new("extragradient", "adam", 1e-3, 1.0, 1.0, "constant", "constant", Inner: 1, Augmentation: 1.0)),
        ["penalty"] = ("quadratic penalty with a growing μ, alternating states/weights, final feasibility pass (MAC/BlockProp)",
            new("alternating", "adam", 1e-3, 1e-2, 0)),
        ["regularized"] = ("fixed quadratic penalty, all variables by gradient descent (seed 001 \"Regularized\")",
            new("gda", "adam", 1e-3, 1e-2, 0)),
    };

    public static IReadOnlyList<MethodInfo> All => table.Select(kv => new MethodInfo(kv.Key, kv.Value.Description)).ToArray();

    public static ResolvedMethod Resolve(MethodSettings settings)
    {
        var name = settings.Method.Trim().ToLowerInvariant();
        if (!table.TryGetValue(name, out var entry))
            throw new ArgumentException($"Unknown method '{settings.Method}' (known: {string.Join(", ", table.Keys)}).");
        var d = entry.Defaults;

        IFormulation formulation = name switch
        {
            "backprop" => SingleShooting.Instance,
            "extraprop" or "extraprop-rows" or "gda" or "auglag" => new MultipleShooting(new MultipleShootingOptions
            {
                Epsilon = settings.Epsilon ?? 0,
                Augmentation = settings.Augmentation ?? d.Augmentation,
                ReparametriseStates = settings.ReparametriseStates ?? false,
                ReducedConstraint = settings.ReducedConstraint ?? false,
            }, name),
            "penalty" => new QuadraticPenalty(
                new PenaltySchedule(settings.MuInitial ?? 1.0, settings.MuGrowth ?? 1.5, settings.MuMaximum ?? 1e4),
                settings.StateSteps ?? 5, name),
            _ => new QuadraticPenalty(PenaltySchedule.Fixed(settings.MuInitial ?? 10.0), settings.StateSteps ?? 1, name),
        };

        var solverName = settings.Solver ?? d.Solver;
        var solver = !d.ExtrapolateWeights && solverName == "extragradient"
            ? Solvers.Solvers.Extragradient(p => p == PlayerNames.Weights ? 0 : 1)
            : SolverCatalog.Create(solverName, formulation.DefaultSchedule);
        var inner = settings.InnerIterations ?? d.Inner;
        if (inner < 0) throw new ArgumentOutOfRangeException(nameof(settings.InnerIterations), $"Invalid inner iterations: {inner} (expected >= 0).");
        if (inner > 0)
        {
            var perExample = formulation.PlayerNames.Where(p => p != PlayerNames.Weights).ToArray();
            if (perExample.Length == 0) throw new ArgumentException($"Method '{name}' has no per-example players for inner iterations.");
            // The inner iterations are extragradient unless named: its contraction on the
            // state/multiplier coupling is the one analysed in docs/methods.md.
            solver = new WithInnerIterations(SolverCatalog.Create(settings.InnerSolver ?? "extragradient", formulation.DefaultSchedule), perExample, inner, solver);
        }
        if (formulation.HasMaximisingPlayers && solverName == "alternating")
            throw new ArgumentException($"Method '{name}' is a saddle-point problem; the alternating solver needs a minimisation (use extragradient, gda, optimistic, mirror-prox or projection).");

        // Per player: the rule named for it, else the method's default; the step size given for
        // it, else the method's default when the rule is unchanged, else the rule's usual default.
        var rules = new Dictionary<string, IStepRule>();
        var settle = settings.Settle ?? d.Settle;
        var stateScale = settings.SettleStateScale ?? d.SettleStateScale;
        var schedule = (settings.WeightSchedule ?? d.Schedule) switch
        {
            "constant" => "constant",
            "cosine" => "cosine",
            var other => throw new ArgumentException($"Unknown schedule '{other}' (known: constant, cosine)."),
        };
        if (settle > 0 && !formulation.PlayerNames.Any(p => p != PlayerNames.Weights))
            throw new ArgumentException($"Method '{name}' has no per-example variables to settle.");
        if (!(stateScale > 0) || double.IsInfinity(stateScale))
            throw new ArgumentOutOfRangeException(nameof(settings.SettleStateScale), $"Invalid settling state scale: {stateScale} (expected a finite value > 0).");
        foreach (var player in formulation.PlayerNames)
        {
            var (specific, defaultRule, defaultLr, lr) = player switch
            {
                PlayerNames.States => (settings.StateStepRule, d.StateRule ?? d.StepRule, d.StatesLr, settings.StateLearningRate),
                PlayerNames.Multipliers => (settings.MultiplierStepRule, d.MultiplierRule ?? d.StepRule, d.MultipliersLr, settings.MultiplierLearningRate),
                _ => (settings.StepRule, d.StepRule, d.WeightsLr, settings.LearningRate),
            };
            var rule = specific ?? defaultRule;
            var rate = lr ?? (rule == defaultRule && defaultLr > 0 ? defaultLr : DefaultRate(rule));
            var created = StepRuleCatalog.Create(rule, rate);
            // The weights follow the schedule and are held while the rows settle; the rows' steps
            // are rebalanced while settling.
            rules[player] = player switch
            {
                PlayerNames.Weights => schedule switch
                {
                    "cosine" => Schedules.Cosine(created, settle),
                    _ when settle > 0 => Schedules.Settling(created, settle, 0),
                    _ => created,
                },
                PlayerNames.States when settle > 0 && stateScale != 1 => Schedules.Settling(created, settle, stateScale),
                PlayerNames.Multipliers when settle > 0 && stateScale != 1 => Schedules.Settling(created, settle, 1 / stateScale),
                _ => created,
            };
        }
        IStepRule RuleFor(string player) => rules.TryGetValue(player, out var rule) ? rule
            : throw new ArgumentException($"Method '{name}' has no player '{player}'.");

        var summary = new Dictionary<string, string>
        {
            ["method"] = name,
            ["formulation"] = formulation.Description,
            ["solver"] = solver.Name,
        };
        foreach (var (player, rule) in rules) summary[$"step.{player}"] = rule.Name;
        summary["schedule"] = schedule;
        summary["settle"] = settle.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return new ResolvedMethod(name, formulation, solver, RuleFor, summary);
    }

    private static double DefaultRate(string rule) => rule switch
    {
        "adam" => 1e-3,
        "adagrad" => 1e-2,
        _ => 0.1,
    };
}
