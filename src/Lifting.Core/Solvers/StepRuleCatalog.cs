namespace Lifting.Solvers;

/// A named step rule: what `--optimizer NAME --lr RATE` builds, and the step size it gets when a
/// method's default rule is swapped for it without a step size.
public sealed record StepRuleDefinition(string Name, string Description, Func<double, IStepRule> Create, double DefaultRate)
{
    /// Other names that select this rule.
    public IReadOnlyList<string> Aliases { get; init; } = Array.Empty<string>();

    /// The rule from all of its settings (moment decays, ε); null: the rule takes only a step size
    /// (`Create`), and the other settings do not apply to it.
    public Func<StepRuleSettings, IStepRule>? CreateFrom { get; init; }

    /// Which of `StepRuleSettings`' Beta1, Beta2 and Eps the rule reads through `CreateFrom` (a
    /// method refuses a setting given for a rule that would ignore it).
    public IReadOnlyList<string> Reads { get; init; } = Array.Empty<string>();

    /// The decoupled weight decay λ the rule has unless told otherwise (AdamW's 0.01, PyTorch's
    /// default); 0 for the others.
    public double DefaultWeightDecay { get; init; }

    /// The rule with `settings`: its own settings, then decoupled weight decay when λ > 0
    /// (`StepRules.WithDecoupledWeightDecay`).
    public IStepRule Build(StepRuleSettings settings)
    {
        var rule = CreateFrom is { } create ? create(settings) : Create(settings.Lr);
        return StepRules.WithDecoupledWeightDecay(rule, settings.Lr, settings.WeightDecay ?? DefaultWeightDecay);
    }
}

/// The settings of a step rule beyond its step size α: the first-moment decay β₁ (Adam's β₁, and
/// the momentum ρ of `momentum` and `nesterov`), Adam's β₂ and ε, and the decoupled weight decay λ
/// (null: the rule's default, `StepRuleDefinition.DefaultWeightDecay`). Rules ignore what they do
/// not use.
public sealed record StepRuleSettings(double Lr)
{
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
    public double? WeightDecay { get; init; }
}

/// Step rules by name: the built-in ones and any a user registers, which every method's
/// `optimizer[-player]` parameters then accept and `lifting methods` lists.
public static class StepRuleCatalog
{
    private static readonly string[] AdamReads = { nameof(StepRuleSettings.Beta1), nameof(StepRuleSettings.Beta2), nameof(StepRuleSettings.Eps) };

    private static readonly Catalog<StepRuleDefinition> catalog = new("step rule", d => d.Name, d => d.Aliases, new[]
    {
        new StepRuleDefinition("constant", "d = α g (alias sgd)", lr => StepRules.Constant(lr), 0.1) { Aliases = new[] { "sgd" } },
        new StepRuleDefinition("momentum", "heavy ball: b ← ρ b + g, d = α b, ρ = beta1 (PyTorch's SGD with momentum)", lr => StepRules.Momentum(lr, 0.9, nesterov: false), 1e-2)
            { CreateFrom = s => StepRules.Momentum(s.Lr, s.Beta1, nesterov: false), Reads = new[] { nameof(StepRuleSettings.Beta1) } },
        new StepRuleDefinition("nesterov", "Nesterov momentum: b ← ρ b + g, d = α (g + ρ b), ρ = beta1 (PyTorch's SGD with nesterov)", lr => StepRules.Momentum(lr, 0.9, nesterov: true), 1e-2)
            { CreateFrom = s => StepRules.Momentum(s.Lr, s.Beta1, nesterov: true), Reads = new[] { nameof(StepRuleSettings.Beta1) } },
        new StepRuleDefinition("adagrad", "d = α g / (√A + ε), A accumulates g² at every half-step (ExtraAdagrad)", lr => StepRules.AdaGrad(lr), 1e-2),
        new StepRuleDefinition("adam", "bias-corrected moments, per-row step counts for per-example variables (ExtraAdam)", lr => StepRules.Adam(lr), 1e-3)
            { CreateFrom = s => StepRules.Adam(s.Lr, s.Beta1, s.Beta2, s.Eps), Reads = AdamReads },
        new StepRuleDefinition("adamw", "Adam with decoupled weight decay, λ = 0.01 unless weight-decay says otherwise (Loshchilov & Hutter 2019)",
            lr => StepRules.WithDecoupledWeightDecay(StepRules.Adam(lr), lr, 0.01), 1e-3)
            { CreateFrom = s => StepRules.Adam(s.Lr, s.Beta1, s.Beta2, s.Eps), Reads = AdamReads, DefaultWeightDecay = 0.01 },
    });

    /// Every registered rule, built-in ones first, in registration order.
    public static IReadOnlyList<StepRuleDefinition> All => catalog.All;

    /// The canonical names, in registration order.
    public static IReadOnlyList<string> Names => All.Select(d => d.Name).ToArray();

    /// Adds a step rule; its name and aliases must be new.
    public static void Register(StepRuleDefinition rule)
    {
        if (!(rule.DefaultRate > 0) || !double.IsFinite(rule.DefaultRate))
            throw new ArgumentOutOfRangeException(nameof(rule), $"Invalid default step size of '{rule.Name}': {rule.DefaultRate} (expected a finite value > 0).");
        if (!(rule.DefaultWeightDecay >= 0) || !double.IsFinite(rule.DefaultWeightDecay))
            throw new ArgumentOutOfRangeException(nameof(rule), $"Invalid default weight decay of '{rule.Name}': {rule.DefaultWeightDecay} (expected a finite value >= 0).");
        catalog.Register(rule);
    }

    /// The rule named `name` (or an alias); the error lists the known names.
    public static StepRuleDefinition Find(string name) => catalog.Find(name);

    /// The canonical name for `name` or an alias; null when unknown.
    public static string? Canonical(string name) => catalog.TryFind(name)?.Name;

    public static IStepRule Create(string name, double lr) => Find(name).Create(lr);

    /// The rule `name` with all of its settings (`StepRuleDefinition.Build`).
    public static IStepRule Create(string name, StepRuleSettings settings) => Find(name).Build(settings);

    /// The usual step size of a rule (1e-3 for Adam, 1e-2 for AdaGrad, 0.1 for constant steps).
    public static double DefaultRate(string name) => Find(name).DefaultRate;
}
