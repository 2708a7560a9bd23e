using Lifting.Formulations;
using Lifting.Solvers;

namespace Lifting;

/// The contrastive (inference-learning) family of seed 002: contrastive Hebbian learning and
/// equilibrium propagation (bottom-up), predictive coding and LPOM (top-down). Every method infers
/// the per-batch activations for `inference-steps` iterations of `inference-solver` with the
/// activations' step rule (`optimizer-activations`, `lr-activations`), stopping early once no
/// activation moves by more than `tolerance` (0: never), then takes one step of `solver` on the
/// weights with the surrogate's gradient.
internal static class ContrastiveMethods
{
    public static IEnumerable<MethodDefinition> All => new[]
    {
        Define("pcn", "predictive coding networks: top-down contrastive surrogate with the quadratic penaliser, T Euclidean inference steps (seed 002 §3.2.1)",
            new Defaults(Beta: 0.1, Steps: 20, ActivationsLr: 0.5),
            o => new PredictiveCoding(o, "pcn")),
        Define("lpom", "lifted proximal operator machines: top-down contrastive surrogate with the Fenchel coupling G(z) + G*(a) - <z, a>, mirror-descent inference (seed 002 §3.2.2)",
            new Defaults(Beta: 0.1, Steps: 20, ActivationsLr: 0.5),
            o => new LiftedProximalOperatorMachine(o, "lpom")),
        Define("chl", "contrastive Hebbian learning: bottom-up (global) contrastive surrogate, layers discounted by the feedback (= beta unless discount is given), free and clamped phases (seed 002 §3.1)",
            new Defaults(Beta: 0.05, Steps: 20, ActivationsLr: 1.0, DiscountFollowsBeta: true, Symmetric: true),
            o => new ContrastiveHebbian(o, "chl")),
        Define("eqprop", "equilibrium propagation: the nudged form of contrastive Hebbian learning, fixed layer feedback (discount), small symmetric output nudge beta (seed 002 §3.1)",
            new Defaults(Beta: 0.02, Steps: 15, ActivationsLr: 1.0, Discount: 0.1, Symmetric: true),
            o => new ContrastiveHebbian(o, "eqprop")),
    };

    /// `Discount`: the method has a discount parameter with this default; `DiscountFollowsBeta`: it
    /// has one whose default is beta (seed 002 eq. 25: a common feedback parameter).
    private sealed record Defaults(double Beta, int Steps, double ActivationsLr, double? Discount = null, bool DiscountFollowsBeta = false, bool Symmetric = false);

    private static MethodDefinition Define(string name, string description, Defaults d, Func<ContrastiveOptions, ContrastiveFormulation> create)
    {
        var parameters = new List<MethodParameter> { PlayerRules.Solver("gda") };
        parameters.AddRange(PlayerRules.StepRule(PlayerNames.Weights, "adam", 1e-3));
        parameters.Add(PlayerRules.Schedule("constant"));
        parameters.Add(MethodParameter.RealList("beta", d.Beta, "spacing beta: one value (the nudge on the loss at the output level) or one per level beta_1..beta_L", 0, minimumExclusive: true));
        if (d.Discount is not null || d.DiscountFollowsBeta)
        {
            var parameter = MethodParameter.Positive("discount", d.Discount ?? d.Beta,
                "feedback beta_k of the inner levels when beta is one value (layer k+1 weighs discount times layer k)" + (d.DiscountFollowsBeta ? "; default: beta" : ""));
            if (d.DiscountFollowsBeta)
                parameter = parameter with { DefaultFrom = value => value("beta").Contains(',') ? "1" : value("beta") };
            parameters.Add(parameter);
        }
        parameters.Add(MethodParameter.Flag("symmetric", d.Symmetric, "clamp at +beta and -beta: (1/2beta)(grad E(z+) - grad E(z-)), bias O(beta^2)"));
        parameters.Add(MethodParameter.Flag("linearised", false, "outer loss linearised at the free solution (seed 002 Definition 2)"));
        parameters.Add(MethodParameter.Integer("inference-steps", d.Steps, "inference iterations on the activations per mini-batch (at most, with a tolerance)", 1));
        parameters.Add(MethodParameter.NonNegative("tolerance", 0, "stop inference once no activation moves more than this in one iteration (0: run every step)"));
        parameters.Add(MethodParameter.Named("inference-solver", "gda", "the solver of the inference iterations"));
        parameters.AddRange(PlayerRules.StepRule(PlayerNames.Activations, "constant", d.ActivationsLr));
        parameters.Add(MethodParameter.Flag("precondition", true, "divide each level's inference direction by its curvature bound 1 + beta_k |W_(k+1)|^2 (PCN, LPOM)"));
        parameters.Add(MethodParameter.Flag("autograd", false, "local gradients by autograd even for the builder's layers (a check and a benchmark)"));
        return new MethodDefinition(name, description, parameters, a =>
        {
            var beta = a.RealList("beta");
            if (a.Has("discount") && beta.Count > 1 && a.Given("discount"))
                throw new ArgumentException($"Invalid discount for '{name}': beta gives every level's spacing ({a.Text("beta")}); give the discount with a single beta only.");
            var options = new ContrastiveOptions
            {
                Beta = beta,
                Discount = a.Has("discount") && beta.Count == 1 ? a.Real("discount") : 1.0,
                Symmetric = a.Flag("symmetric"),
                Linearised = a.Flag("linearised"),
                InferenceSteps = a.Integer("inference-steps"),
                AutogradLocalGradients = a.Flag("autograd"),
                Preconditioned = a.Flag("precondition"),
            };
            var formulation = create(options);
            var solver = new InnerSolve(Named(a, "inference-solver", formulation), new[] { PlayerNames.Activations },
                a.Integer("inference-steps"), a.Real("tolerance"), Named(a, "solver", formulation));
            return new MethodParts(formulation, solver, PlayerRules.Build(a, formulation));
        }) { Family = "contrastive" };
    }

    /// A solver from the catalog; the alternating solver has no meaning inside one phase of a bilevel step.
    private static ISolver Named(MethodArguments a, string parameter, IFormulation formulation)
    {
        var name = a.Text(parameter);
        if (name == "alternating")
            throw new ArgumentException($"Invalid {parameter} for '{a.Method.Name}': alternating (each step already infers the activations, then steps the weights; use gda, extragradient, optimistic, mirror-prox or projection).");
        return SolverCatalog.Create(name, formulation.DefaultSchedule);
    }
}
