using Lifting.Formulations;

namespace Lifting;

/// Fenchel back-propagation (seed 002 §4.2): back-propagation whose backward pass carries finite
/// targets σ(a − βg) instead of infinitesimal corrections; the weights take the Fenchel-BP
/// direction with Adam (seed 002 appendix C: Adam, lr 1e-3).
internal static class FenchelBackpropMethods
{
    internal static IEnumerable<MethodDefinition> All => new[] { FenchelBp };

    private static MethodDefinition FenchelBp { get; } = new("fenchel-bp",
        "Fenchel back-propagation: forward pass, backward pass of finite targets sigma(a - beta g); back-propagation as beta -> 0 (seed 002 §4.2)",
        new[] { PlayerRules.Solver("gda") }
            .Concat(PlayerRules.StepRule(PlayerNames.Weights, "adam", 1e-3))
            .Append(PlayerRules.Schedule("constant"))
            .Append(MethodParameter.RealList("beta", 0.01,
                "spacing beta of the finite targets, one value or one per block from the input; it scales one example's loss gradient",
                0, minimumExclusive: true))
            .ToArray(),
        a =>
        {
            var formulation = new FenchelBackprop(a.RealList("beta"));
            return new MethodParts(formulation, PlayerRules.Solver(a, formulation), PlayerRules.Build(a, formulation));
        }) { Family = "contrastive", Representative = true };
}
