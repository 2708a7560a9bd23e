using Lifting.Formulations;
using Lifting.Solvers;

namespace Lifting;

/// Online alternating minimisation (seed 004): AM-Adam, AM-mem and their offline variants. Each
/// is the `OnlineAlternatingMinimisation` formulation solved by the `AlternatingMinimisationSolver`;
/// the weights take the weights' step rule (Adam), the per-batch codes SGD with Nesterov momentum.
/// The defaults were chosen on validation accuracy (docs/results/am-tuning.md).
internal static class AlternatingMinimisationMethods
{
    public static IEnumerable<MethodDefinition> All => new[]
    {
        Define("am-adam", "online alternating minimisation, hidden weights by Adam on the mini-batch's codes (seed 004 AM-Adam)", memory: false, offline: false),
        Define("am-mem", "online alternating minimisation, hidden weights by block-coordinate descent on co-activation memories (seed 004 AM-mem)", memory: true, offline: false),
        Define("am-adam-off", "offline alternating minimisation: the training set as one mini-batch, one Adam step per epoch (seed 004 AM-Adam-off)", memory: false, offline: true),
        Define("am-mem-off", "offline alternating minimisation: the training set as one mini-batch, BCD on its memories once per epoch (seed 004 AM-mem-off)", memory: true, offline: true),
        Admm,
    };

    /// Taylor et al. (2016)'s ADMM: closed-form sweeps over per-example pre-activations,
    /// activations and an output multiplier, one per epoch (`TaylorAdmm`, `TaylorAdmmSolver`).
    private static MethodDefinition Admm { get; } = new("admm",
        "Taylor et al.'s ADMM: the training set as one batch, per-example z, a and output multiplier λ, closed-form least-squares / activation / pre-activation sweeps once per epoch (seed 004's offline baseline)",
        new[]
        {
            MethodParameter.Positive("beta", 0.1, "β, weight of every ‖z_l − W_l a_(l−1) − b_l‖² (the output layer's included; also the multiplier's step)"),
            MethodParameter.Positive("gamma", 10, "γ, weight of every ‖a_l − h(z_l)‖²"),
            MethodParameter.Integer("warm-start", 50, "iterations (epochs) at the start without the multiplier update (Taylor et al.'s warm start; the default, chosen on MNIST-10k validation accuracy, keeps λ at 0 for 50 epochs: docs/methods.md)"),
            MethodParameter.Integer("output-steps", 5, "Newton steps on the output's cross-entropy sub-problem per iteration", 1),
            MethodParameter.NonNegative("ridge", 1e-6, "ridge of the weights' least squares, relative to the Gram matrix's mean diagonal"),
            MethodParameter.Integer("sweep-threads", 1, "threads each pass over the training set is split across, chunk by chunk (data parallelism inside the process, not --workers; the iterates do not depend on it)", 1),
        },
        a =>
        {
            var formulation = new TaylorAdmm(new TaylorAdmmOptions
            {
                Beta = a.Real("beta"),
                Gamma = a.Real("gamma"),
                WarmStart = a.Integer("warm-start"),
                OutputSteps = a.Integer("output-steps"),
                Ridge = a.Real("ridge"),
                SweepThreads = a.Integer("sweep-threads"),
            }, "admm");
            // No step rule: every sub-problem is solved exactly (the weights' state is empty).
            var none = StepRules.Constant(1);
            return new MethodParts(formulation, new TaylorAdmmSolver(), _ => none);
        }) { Family = "alternating-minimisation" };

    private static MethodDefinition Define(string name, string description, bool memory, bool offline)
    {
        var parameters = new List<MethodParameter>();
        parameters.AddRange(PlayerRules.StepRule(PlayerNames.Weights, "adam", 2e-3));
        parameters.Add(MethodParameter.Positive("lr-codes", 0.02, "step size of the codes (per example; SGD with momentum on each code's sub-problem)"));
        parameters.Add(MethodParameter.Positive("lr-codes-growth", 1, "factor by which each code's step grows per block below the top code (1: one step for every code)"));
        parameters.Add(MethodParameter.Real("momentum", 0.9, "momentum of the codes' steps", 0, maximum: 1, maximumExclusive: true));
        parameters.Add(MethodParameter.Flag("nesterov", true, "Nesterov momentum for the codes"));
        parameters.Add(MethodParameter.Integer("code-steps", 1, "steps on each code's sub-problem per mini-batch, top-down", 1));
        if (!offline) parameters.Add(MethodParameter.Integer("weight-steps", 1, "steps of the weights' rule on each gradient-based weight sub-problem per mini-batch", 1));
        if (memory) parameters.Add(MethodParameter.Integer("sweeps", 1, "block-coordinate-descent sweeps over the weight columns per iteration (AM-mem)", 1));
        parameters.Add(MethodParameter.Positive("mu", 0.01, "initial penalty weight μ"));
        parameters.Add(MethodParameter.NonNegative("mu-increment", offline ? 0 : 1e-5, offline ? "added to μ after every iteration (epoch)" : "added to μ after every mini-batch (batch-wise increment)"));
        parameters.Add(MethodParameter.Real("mu-multiplier", 1.1, "factor applied to μ after every epoch (epoch-wise multiplier)", 1));
        parameters.Add(MethodParameter.Positive("mu-max", 1.5, "cap on μ"));
        parameters.Add(MethodParameter.Choice("residuals", "sum", "each block's squared residual ‖c − f(·)‖² summed over the code's units (seed 004 eq. 3) or averaged over them (the authors' code)", "sum", "mean"));
        parameters.Add(MethodParameter.Choice("step-blocks", "squared", "weight sub-problem of a hidden block whose activation is a step: squared distance to the code, or hinge to its sign", "squared", "hinge"));
        parameters.Add(MethodParameter.Flag("parallel", false, "solve the blocks' weight sub-problems concurrently, one thread per block (bit-identical to the sequential order at one LibTorch thread)"));
        return new MethodDefinition(name, description, parameters, a =>
        {
            var formulation = new OnlineAlternatingMinimisation(new OnlineAlternatingMinimisationOptions
            {
                Mu = new MuSchedule(a.Real("mu"), a.Real("mu-increment"), a.Real("mu-multiplier"), a.Real("mu-max")),
                Memory = memory,
                Offline = offline,
                StepBlocks = a.Text("step-blocks") == "hinge" ? StepBlockLoss.Hinge : StepBlockLoss.Squared,
                Residuals = a.Text("residuals") == "mean" ? ResidualScale.UnitMean : ResidualScale.Sum,
                CodeStepGrowth = a.Real("lr-codes-growth"),
            }, name);
            var solver = new AlternatingMinimisationSolver(new AlternatingMinimisationSolverOptions
            {
                CodeSteps = a.Integer("code-steps"),
                WeightSteps = offline ? 1 : a.Integer("weight-steps"),
                Sweeps = memory ? a.Integer("sweeps") : 1,
                Parallel = a.Flag("parallel"),
            });
            var weights = PlayerRules.WeightRule(a);
            var codes = StepRules.Momentum(a.Real("lr-codes"), a.Real("momentum"), a.Flag("nesterov"));
            return new MethodParts(formulation, solver, player => player switch
            {
                PlayerNames.Weights => weights,
                OnlineAlternatingMinimisation.CodesPlayer => codes,
                _ => throw new ArgumentException($"Method '{name}' has no player '{player}'."),
            });
        }) { Family = "alternating-minimisation", Representative = name == "am-adam" };
    }
}
