using Lifting.Formulations;
using Lifting.Solvers;

namespace Lifting;

/// The parameters every method shares (solver, each player's step rule and step size, the
/// weights' schedule, settling) and the per-player step rules they build. A player's rule is
/// `optimizer` and `lr` for the weights and `optimizer-P` and `lr-P` for any other player P (e.g.
/// `lr-states`, `lr-multipliers`), so a new formulation's players get their flags by their names.
public static class PlayerRules
{
    public static MethodParameter Solver(string @default) =>
        MethodParameter.Named("solver", @default, "the solver of the lifted game (see the solver list)");

    /// `optimizer[-player]` and `lr[-player]`; the step size's default follows the rule: the
    /// method's own step size for its own rule, the rule's usual one for another.
    public static MethodParameter[] StepRule(string player, string defaultRule, double defaultRate)
    {
        var suffix = player == PlayerNames.Weights ? "" : "-" + player;
        var what = player == PlayerNames.Weights ? "the weights" : $"the {player}";
        var rule = MethodParameter.CatalogName("optimizer" + suffix, defaultRule, $"step rule of {what}", () => StepRuleCatalog.Names, StepRuleCatalog.Canonical);
        var rate = MethodParameter.Positive("lr" + suffix, defaultRate, $"step size of {what}")
            with { DefaultFrom = value => value("optimizer" + suffix) == defaultRule ? MethodParameter.Format(defaultRate) : MethodParameter.Format(StepRuleCatalog.DefaultRate(value("optimizer" + suffix))) };
        return player == PlayerNames.Weights ? new[] { rule, rate }.Concat(WeightSettings).ToArray() : new[] { rule, rate };
    }

    /// The weights' rule beyond its name and step size: what a researcher comparing with a PyTorch
    /// optimiser sets (`StepRuleSettings`, clipping, epoch schedules that compose with `schedule`).
    private static MethodParameter[] WeightSettings { get; } =
    {
        MethodParameter.Real("beta1", 0.9, "first-moment decay of the weights' rule: Adam's β₁, the momentum ρ of momentum and nesterov", 0, maximum: 1, maximumExclusive: true),
        MethodParameter.Real("beta2", 0.999, "Adam's β₂ for the weights", 0, maximum: 1, maximumExclusive: true),
        MethodParameter.Positive("adam-eps", 1e-8, "Adam's ε for the weights (the denominator's floor)"),
        MethodParameter.NonNegative("weight-decay", 0, "decoupled weight decay λ of the weights, d += α λ w (AdamW, SGDW; 0.01 for adamw, else 0)")
            with { DefaultFrom = value => MethodParameter.Format(StepRuleCatalog.Find(value("optimizer")).DefaultWeightDecay) },
        MethodParameter.NonNegative("clip-norm", 0, "clip the weights' directions to this global norm over all weight tensors before the rule (clip_grad_norm_; 0: off)"),
        MethodParameter.Integer("warmup", 0, "linear warm-up of the weights' step over this many epochs, epoch e at e/(W+1) of it (0: none)"),
        MethodParameter.Integer("decay-every", 0, "multiply the weights' step by decay-factor every this many epochs (StepLR; 0: never)"),
        MethodParameter.Real("decay-factor", 0.1, "the factor of decay-every", 0, minimumExclusive: true, maximum: 1),
    };

    /// The weights' rule from the arguments, before `schedule` and settling: the named rule with its
    /// settings and weight decay, clipped, then step decay and warm-up over the epochs (each only
    /// when asked for, so a method's defaults build the plain rule).
    public static IStepRule WeightRule(MethodArguments a)
    {
        var definition = StepRuleCatalog.Find(a.Text("optimizer"));
        var settings = new StepRuleSettings(a.Real("lr"));
        if (a.Has("beta1"))
        {
            // A value other than the default that the rule would ignore is refused (a run folder's
            // settings list every parameter, so being given is not enough to tell).
            var usual = new StepRuleSettings(1);
            foreach (var (flag, setting, value) in new[] { ("beta1", nameof(StepRuleSettings.Beta1), usual.Beta1), ("beta2", nameof(StepRuleSettings.Beta2), usual.Beta2), ("adam-eps", nameof(StepRuleSettings.Eps), usual.Eps) })
                if (a.Real(flag) != value && !definition.Reads.Contains(setting))
                    throw new ArgumentException($"{flag} does not apply to the weights' step rule '{definition.Name}' (it applies to {string.Join(", ", StepRuleCatalog.All.Where(d => d.Reads.Contains(setting)).Select(d => d.Name))}).");
            settings = settings with { Beta1 = a.Real("beta1"), Beta2 = a.Real("beta2"), Eps = a.Real("adam-eps"), WeightDecay = a.Real("weight-decay") };
        }
        var rule = definition.Build(settings);
        if (a.Has("clip-norm") && a.Real("clip-norm") > 0) rule = StepRules.ClippedByGlobalNorm(rule, a.Real("clip-norm"));
        if (a.Has("decay-every") && a.Integer("decay-every") > 0) rule = Schedules.StepDecay(rule, a.Integer("decay-every"), a.Real("decay-factor"));
        if (a.Has("warmup") && a.Integer("warmup") > 0) rule = Schedules.Warmup(rule, a.Integer("warmup"));
        return rule;
    }

    public static MethodParameter Schedule(string @default) =>
        MethodParameter.Choice("schedule", @default, "schedule of the weights' step over the epochs", "constant", "cosine");

    /// `settle` and `settle-states`: hold the weights in the last fraction of the epochs while the
    /// per-example variables settle, the state step scaled and the multiplier step divided.
    public static MethodParameter[] Settling(double settle, double stateScale) => new[]
    {
        MethodParameter.Real("settle", settle, "fraction of the epochs at the end in which the weights are held while the per-example variables settle", 0, maximum: 1, maximumExclusive: true),
        MethodParameter.Positive("settle-states", stateScale, "while settling, the state step is multiplied and the multiplier step divided by this"),
    };

    /// The step rule of every player of `formulation` from the arguments: the weights follow the
    /// schedule and are held while settling; the other players' steps are rebalanced while settling.
    public static Func<string, IStepRule> Build(MethodArguments a, IFormulation formulation)
    {
        double settle = a.Has("settle") ? a.Real("settle") : 0, stateScale = a.Has("settle-states") ? a.Real("settle-states") : 1;
        var schedule = a.Has("schedule") ? a.Text("schedule") : "constant";
        var rules = new Dictionary<string, IStepRule>();
        foreach (var player in formulation.PlayerNames)
        {
            var suffix = player == PlayerNames.Weights ? "" : "-" + player;
            if (!a.Has("optimizer" + suffix))
                throw new ArgumentException($"Method '{a.Method.Name}' declares no step rule for its player '{player}' (parameters optimizer{suffix} and lr{suffix}).");
            var created = player == PlayerNames.Weights ? WeightRule(a) : StepRuleCatalog.Create(a.Text("optimizer" + suffix), a.Real("lr" + suffix));
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
        return player => rules.TryGetValue(player, out var rule) ? rule
            : throw new ArgumentException($"Method '{a.Method.Name}' has no player '{player}'.");
    }

    /// The solver named by `solver`, preceded by `inner` iterations of `inner-solver` on the
    /// players other than the weights when the method has those parameters.
    /// The solver `extrapolate-weights=false` asks for: extragradient extrapolating every player but
    /// the weights (null when the flag is on). Only extragradient extrapolates, so with another
    /// solver a default of false is moot and an explicit `extrapolate-weights=false` is refused.
    public static ISolver? WithoutWeightExtrapolation(MethodArguments a)
    {
        if (a.Flag("extrapolate-weights")) return null;
        if (a.Text("solver") == "extragradient") return Solvers.Solvers.Extragradient(p => p == PlayerNames.Weights ? 0 : 1);
        if (!a.Given("extrapolate-weights")) return null;
        throw new ArgumentException($"extrapolate-weights=false applies to the extragradient solver, not '{a.Text("solver")}'.");
    }

    public static ISolver Solver(MethodArguments a, IFormulation formulation, ISolver? named = null)
    {
        var solver = named ?? SolverCatalog.Create(a.Text("solver"), formulation.DefaultSchedule);
        if (formulation.HasMaximisingPlayers && a.Text("solver") == "alternating")
            throw new ArgumentException($"Method '{a.Method.Name}' is a saddle-point problem; the alternating solver needs a minimisation (use extragradient, gda, optimistic, mirror-prox or projection).");
        var inner = a.Has("inner") ? a.Integer("inner") : 0;
        if (inner == 0) return solver;
        var others = formulation.PlayerNames.Where(p => p != PlayerNames.Weights).ToArray();
        if (others.Length == 0) throw new ArgumentException($"Method '{a.Method.Name}' has no per-example players for inner iterations.");
        return new WithInnerIterations(SolverCatalog.Create(a.Text("inner-solver"), formulation.DefaultSchedule), others, inner, solver);
    }
}
