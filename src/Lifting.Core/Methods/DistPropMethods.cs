using Lifting.Formulations;
using Lifting.Solvers;

namespace Lifting;

/// DistProp (seed 001 §3): the multiple-shooting Lagrangian with class-conditional Gaussian
/// states, solved by extragradient with AdaGrad steps (ExtraAdagrad, seed 001 §3.1 and §5).
internal static class DistPropMethods
{
    // Defaults chosen on validation accuracy in exploratory runs (digits 64-128-10, MNIST-10k
    // 784-256-10 and seed001-conv cut before its last layer; docs/methods.md, "DistProp"):
    // - multipliers per example: per-class ones only hold each class's mean z-score to zero, and
    //   validated 5 to 30 points lower on all three;
    // - ε = 0.1: at ε = 1 the first cut starts feasible (σ = 1 while the features and the class means
    //   differ by less than that per feature), no multiplier ever moves and f_1 is never trained
    //   (validation 0.10–0.12 on the conv net);
    // - S = 16 samples per class: with one fixed sample per class the last block memorises M points;
    // - steps: ExtraAdagrad 0.01 for the weights and 0.1 for the Gaussians (0.01 leaves σ and the
    //   means where they started), ExtraSGD 0.01 for the multipliers (0.1 validated lower).
    public static IEnumerable<MethodDefinition> All => new[]
    {
        Define("distprop", "DistProp: class-conditional Gaussian states, z-score constraints, ExtraAdagrad (seed 001 §3)",
            MultiplierPlacement.Example, reduced: false, epsilon: 0.1),
        // Seed 001 §5's ImageNet variant: one scalar constraint ReLU(‖z‖₁ − ε) per example and one
        // multiplier per example. ‖z‖₁ sums over the features, so ε is in those units: ε = 0.1 per
        // feature (`distprop`) on seed001-conv's 400 features is 40.
        Define("distprop-reduced", "DistProp with seed 001 §5's reduced constraint ReLU(|z|_1 - eps), one multiplier per example",
            MultiplierPlacement.Example, reduced: true, epsilon: 40.0),
    };

    private static MethodDefinition Define(string name, string description, MultiplierPlacement placement, bool reduced, double epsilon)
    {
        var parameters = new List<MethodParameter> { PlayerRules.Solver("extragradient") };
        parameters.AddRange(PlayerRules.StepRule(PlayerNames.Weights, "adagrad", 1e-2));
        parameters.Add(PlayerRules.Schedule("constant"));
        parameters.AddRange(PlayerRules.StepRule(PlayerNames.States, "adagrad", 0.1));
        parameters.AddRange(PlayerRules.StepRule(PlayerNames.Multipliers, "constant", 0.01));
        parameters.Add(MethodParameter.NonNegative("eps", epsilon, "epsilon of the z-score constraint, in standard deviations (seed 001 eq. 3); with reduced, the threshold of ReLU(|z|_1 - eps)"));
        parameters.Add(MethodParameter.Integer("samples", 16, "synthetic samples per class and cut, drawn once and fixed (seed 001 §3.1)", 1));
        parameters.Add(MethodParameter.Choice("multipliers", placement == MultiplierPlacement.Class ? "class" : "example",
            "multipliers per class (seed 001 Algorithm 1; nothing per example) or per example (the first cut's in the per-example store)", "class", "example"));
        parameters.Add(MethodParameter.Flag("reduced", reduced, "one scalar constraint ReLU(|z|_1 - eps) per example, class or sample instead of one per feature (seed 001 §5)"));
        parameters.Add(MethodParameter.Flag("pre-activation", true, "a hidden block ending in an activation keeps its state before it (the activation moves to the next block; the same network)"));
        parameters.Add(MethodParameter.Flag("extrapolate-weights", true, "extragradient also extrapolates the weights (off: only the Gaussians and multipliers, the first block evaluated once per step)"));
        parameters.Add(MethodParameter.Flag("resample", false, "diagnostic: fresh variates every mini-batch (the authors' code) instead of seed 001's fixed snapshot"));
        parameters.Add(MethodParameter.Integer("inner", 0, "solver iterations on the Gaussians and multipliers alone (weights held) before each full iteration"));
        parameters.Add(MethodParameter.Named("inner-solver", "extragradient", "the solver of those inner iterations"));
        return new MethodDefinition(name, description, parameters, a =>
        {
            var formulation = new DistProp(new DistPropOptions
            {
                Epsilon = a.Real("eps"),
                SamplesPerClass = a.Integer("samples"),
                Multipliers = a.Text("multipliers") == "example" ? MultiplierPlacement.Example : MultiplierPlacement.Class,
                ReducedConstraint = a.Flag("reduced"),
                PreActivationStates = a.Flag("pre-activation"),
                ResampleVariates = a.Flag("resample"),
            }, name);
            ISolver? named = null;
            if (!a.Flag("extrapolate-weights"))
                named = a.Text("solver") == "extragradient"
                    ? Solvers.Solvers.Extragradient(p => p == PlayerNames.Weights ? 0 : 1)
                    : throw new ArgumentException($"extrapolate-weights=false applies to the extragradient solver, not '{a.Text("solver")}'.");
            return new MethodParts(formulation, PlayerRules.Solver(a, formulation, named), PlayerRules.Build(a, formulation));
        }) { Family = "distprop", Representative = name == "distprop" };
    }
}
