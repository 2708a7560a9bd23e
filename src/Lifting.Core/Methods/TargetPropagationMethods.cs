using Lifting.Formulations;

namespace Lifting;

/// The target-propagation family (Lee, Zhang, Fischer & Bengio 2015, "Difference Target
/// Propagation", ECML-PKDD; `TargetPropagation`): every hidden layer regresses onto a target
/// carried down from the top target ĥ_{L−1} = h_{L−1} − η̂ ∂ℓ/∂h_{L−1} by learned approximate
/// inverses g_l(h_l) = σ(V_l h_l + c_l), trained on the noise-regularised reconstruction
/// ‖g_l(f_l(h_{l−1} + ε)) − (h_{l−1} + ε)‖², ε ~ N(0, σ²):
///
///   dtp   ĥ_{l−1} = h_{l−1} + g_l(ĥ_l) − g_l(h_l)      (difference correction)
///   tp    ĥ_{l−1} = g_l(ĥ_l)                           (plain target propagation)
///
/// The weights and the inverses take Adam steps (lr 1e-3), as back-propagation does here.
internal static class TargetPropagationMethods
{
    internal static IEnumerable<MethodDefinition> All => new[]
    {
        Method(true, "difference target propagation: layer targets h^_{l-1} = h_{l-1} + g_l(h^_l) - g_l(h_l) from learned inverses g_l, each layer regresses onto its target (Lee et al. 2015)") with { Representative = true },
        Method(false, "target propagation: layer targets h^_{l-1} = g_l(h^_l) from learned inverses g_l, each layer regresses onto its target (Lee et al. 2015's baseline)"),
    };

    private static MethodDefinition Method(bool difference, string description) => new(difference ? "dtp" : "tp", description,
        new[] { PlayerRules.Solver("gda") }
            .Concat(PlayerRules.StepRule(PlayerNames.Weights, "adam", 1e-3))
            .Append(PlayerRules.Schedule("constant"))
            .Concat(PlayerRules.StepRule(TargetPropagation.Inverses, "adam", 1e-3))
            .Append(MethodParameter.Positive("target-step", 0.1, "eta^: the top target is h_{L-1} - eta^ d loss_i / d h_{L-1} (one example's loss)"))
            .Append(MethodParameter.NonNegative("noise", 0.1, "sigma: standard deviation of the noise eps the inverses are trained on, ||g(f(h + eps)) - (h + eps)||^2"))
            .ToArray(),
        a =>
        {
            var formulation = new TargetPropagation(a.Real("target-step"), a.Real("noise"), difference);
            return new MethodParts(formulation, PlayerRules.Solver(a, formulation), PlayerRules.Build(a, formulation));
        }) { Family = "target-propagation" };
}
