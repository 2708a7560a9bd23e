using Lifting.Formulations;

namespace Lifting;

/// Deeply supervised nets (Lee, Xie, Gallagher, Zhang & Tu 2015, AISTATS; seed 000): a linear
/// companion classifier on every cut, trained with the network by back-propagation on
/// ℓ(ŷ) + Σ_l λ_l(t) ℓ(head_l(h_l)), λ falling linearly to 0 over `anneal` epochs
/// (`DeeplySupervised`). Weights and heads take Adam steps (lr 1e-3), as back-propagation does here.
internal static class DeeplySupervisedMethods
{
    internal static IEnumerable<MethodDefinition> All => new[] { Dsn };

    private static MethodDefinition Dsn { get; } = new("dsn",
        "deeply supervised nets: backprop on loss + sum_l lambda_l loss(head_l(h_l)), a linear companion classifier per cut, lambda annealed to 0 (Lee et al. 2015)",
        new[] { PlayerRules.Solver("gda") }
            .Concat(PlayerRules.StepRule(PlayerNames.Weights, "adam", 1e-3))
            .Append(PlayerRules.Schedule("constant"))
            .Concat(PlayerRules.StepRule(DeeplySupervised.Heads, "adam", 1e-3))
            .Append(MethodParameter.RealList("lambda", 0.3,
                "companion weight lambda_l of each cut's head at the start, one value or one per cut from the input", 0))
            .Append(MethodParameter.Integer("anneal", 10,
                "epochs over which every lambda_l falls linearly to 0, lambda_l (1 - (t-1)/anneal) in epoch t; 0 keeps lambda constant"))
            .ToArray(),
        a =>
        {
            var formulation = new DeeplySupervised(a.RealList("lambda"), a.Integer("anneal"));
            return new MethodParts(formulation, PlayerRules.Solver(a, formulation), PlayerRules.Build(a, formulation));
        }) { Family = "deeply-supervised", Representative = true };
}
