using Lifting.Formulations;

namespace Lifting;

/// Error-based predictive coding, ePC (Goemaere et al. 2025): PC's energy over the prediction
/// errors, inferred by gradient steps whose signal reaches every level at once, PC's weight rule;
/// the weights take Adam steps like back-propagation.
internal static class ErrorPredictiveCodingMethods
{
    internal static IEnumerable<MethodDefinition> All => new[] { Epc };

    private static MethodDefinition Epc { get; } = new("epc",
        "error-based predictive coding: the PC energy over the errors eps_k (z_k = f_k(z_(k-1)) + eps_k), gradient steps on eps, PC's weight rule (Goemaere et al. 2025)",
        new[] { PlayerRules.Solver("gda") }
            .Concat(PlayerRules.StepRule(PlayerNames.Weights, "adam", 1e-3))
            .Append(PlayerRules.Schedule("constant"))
            .Append(MethodParameter.Positive("beta", 0.01, "weight beta of the loss in the energy sum 1/2|eps_k|^2 + beta loss; it scales one example's loss gradient"))
            .Append(MethodParameter.Integer("inference-steps", 1, "gradient steps on the errors per mini-batch, from eps = 0", 1))
            .Append(MethodParameter.Positive("error-step", 1.0, "step size eta of those steps (1: one step lands on eps = -beta dloss/dz)"))
            .Append(MethodParameter.Flag("line-search", true, "shorten each example's error step to the minimiser of the energy's quadratic model along it (off: every step is error-step)"))
            .Append(MethodParameter.NonNegative("max-shift", 0.01, "with the line search, cap each example's step so its output moves by at most this fraction of the output, to first order (0: no cap)"))
            .Append(MethodParameter.Flag("autograd", false, "local products by autograd even for the builder's layers (a check and a benchmark)"))
            .ToArray(),
        a =>
        {
            // The cap belongs to the line search: its default is dropped with it, a value given with it refused.
            var maxShift = a.Flag("line-search") || a.Given("max-shift") ? a.Real("max-shift") : 0.0;
            var formulation = new ErrorPredictiveCoding(a.Real("beta"), a.Integer("inference-steps"), a.Real("error-step"), a.Flag("autograd"), a.Flag("line-search"), maxShift: maxShift);
            return new MethodParts(formulation, PlayerRules.Solver(a, formulation), PlayerRules.Build(a, formulation));
        }) { Family = "contrastive" };
}
