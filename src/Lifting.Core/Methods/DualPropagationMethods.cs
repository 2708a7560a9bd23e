using Lifting.Formulations;

namespace Lifting;

/// Dual propagation (Høier, Staudt & Zach 2023): dyadic neurons with ±beta/2 nudged states, one
/// nudged phase in layerwise closed form, Hebbian updates from the pair difference; the weights
/// take Adam steps like back-propagation.
internal static class DualPropagationMethods
{
    internal static IEnumerable<MethodDefinition> All => new[] { DualProp };

    private static MethodDefinition DualProp { get; } = new("dual-prop",
        "dual propagation: dyadic neurons z+- = act(a +- c/2), one nudged phase in layerwise closed form, weights from the pair difference (Høier, Staudt & Zach 2023)",
        new[] { PlayerRules.Solver("gda") }
            .Concat(PlayerRules.StepRule(PlayerNames.Weights, "adam", 1e-3))
            .Append(PlayerRules.Schedule("constant"))
            .Append(MethodParameter.Positive("beta", 0.1, "nudge strength beta: the output pair is act(a -+ (beta/2) grad loss); it scales one example's loss gradient"))
            .Append(MethodParameter.Integer("sweeps", 1, "inference sweeps (a forward and a backward part each) per mini-batch", 1))
            .Append(MethodParameter.Flag("autograd", false, "local products by autograd even for the builder's layers (a check and a benchmark)"))
            .ToArray(),
        a =>
        {
            var formulation = new DualPropagation(a.Real("beta"), a.Integer("sweeps"), a.Flag("autograd"));
            return new MethodParts(formulation, PlayerRules.Solver(a, formulation), PlayerRules.Build(a, formulation));
        }) { Family = "contrastive" };
}
