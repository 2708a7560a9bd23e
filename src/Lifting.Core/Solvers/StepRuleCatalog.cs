namespace Lifting.Solvers;

/// A named step rule: what `--optimizer NAME --lr RATE` builds, and the step size it gets when a
/// method's default rule is swapped for it without a step size.
public sealed record StepRuleDefinition(string Name, string Description, Func<double, IStepRule> Create, double DefaultRate)
{
    /// Other names that select this rule.
    public IReadOnlyList<string> Aliases { get; init; } = Array.Empty<string>();
}

/// Step rules by name: the built-in ones and any a user registers, which every method's
/// `optimizer[-player]` parameters then accept and `lifting methods` lists.
public static class StepRuleCatalog
{
    private static readonly Catalog<StepRuleDefinition> catalog = new("step rule", d => d.Name, d => d.Aliases, new[]
    {
        new StepRuleDefinition("constant", "d = α g (alias sgd)", lr => StepRules.Constant(lr), 0.1) { Aliases = new[] { "sgd" } },
        new StepRuleDefinition("adagrad", "d = α g / (√A + ε), A accumulates g² at every half-step (ExtraAdagrad)", lr => StepRules.AdaGrad(lr), 1e-2),
        new StepRuleDefinition("adam", "bias-corrected moments, per-row step counts for per-example variables (ExtraAdam)", lr => StepRules.Adam(lr), 1e-3),
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
        catalog.Register(rule);
    }

    /// The rule named `name` (or an alias); the error lists the known names.
    public static StepRuleDefinition Find(string name) => catalog.Find(name);

    /// The canonical name for `name` or an alias; null when unknown.
    public static string? Canonical(string name) => catalog.TryFind(name)?.Name;

    public static IStepRule Create(string name, double lr) => Find(name).Create(lr);

    /// The usual step size of a rule (1e-3 for Adam, 1e-2 for AdaGrad, 0.1 for constant steps).
    public static double DefaultRate(string name) => Find(name).DefaultRate;
}
