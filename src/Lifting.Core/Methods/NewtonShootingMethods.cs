using Lifting.Formulations;

namespace Lifting;

/// Newton multiple shooting (seed 000) as the forward pass of back-propagation: every segment
/// evaluated at once per Newton iteration, the block-triangular system solved by substitution;
/// exact after the depth of the lifted graph. The weights take Adam steps like back-propagation.
internal static class NewtonShootingMethods
{
    internal static IEnumerable<MethodDefinition> All => new[] { NewtonBackprop };

    private static MethodDefinition NewtonBackprop { get; } = new("newton-backprop",
        "back-propagation whose forward pass is Newton multiple shooting on H(h) = h - f(h) = 0, all segments evaluated at once per iteration; exact after the graph's depth (seed 000)",
        new[] { PlayerRules.Solver("gda") }
            .Concat(PlayerRules.StepRule(PlayerNames.Weights, "adam", 1e-3))
            .Append(PlayerRules.Schedule("constant"))
            .Append(MethodParameter.Integer("newton-iterations", 0, "Newton iterations per batch (0: the depth of the lifted graph, where the states are exact)"))
            .Append(MethodParameter.NonNegative("newton-tolerance", 0, "stop once no state moves by more than this in one iteration (0: only when none moves)"))
            .ToArray(),
        a =>
        {
            var formulation = new NewtonBackprop(a.Integer("newton-iterations"), a.Real("newton-tolerance"));
            return new MethodParts(formulation, PlayerRules.Solver(a, formulation), PlayerRules.Build(a, formulation));
        }) { Family = "backprop" };
}
