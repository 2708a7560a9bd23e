using Lifting.Programs;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Error-based predictive coding, ePC (Goemaere, Oliviers, Bogacz & Demeester 2025, "Error
/// Optimization: Overcoming Exponential Signal Decay in Deep Predictive Coding Networks"):
/// predictive coding with its prediction errors as the variables instead of its states. On the
/// program's segments (level k = segment k, f_k = σ_k ∘ A_k, `Level`), the states are a function of
/// the errors,
///
///     z_k(ε) = f_k(z_in(k)(ε)) + ε_k       (a forward pass with the errors added; ε = 0 is the forward pass),
///
/// and the energy is PC's, E(ε) = Σ_k ½‖ε_k‖² + β ℓ(z_out(ε)) (every level weighs 1, as `pcn`'s
/// default). Inference is T gradient steps of size η on the errors, from ε = 0:
///
///     ε_k ← ε_k − η (ε_k + β λ_k),    λ_k = dℓ/dz_k,
///
/// λ_k the total derivative of the loss through everything downstream of z_k at the current states
/// (a backward pass through the segments' local products: λ_out = ∇ℓ, λ_u = Σ_{v consumes u}
/// (∂f_v/∂z_u)ᵀ λ_v), so the output's signal reaches every level in one step, undamped — where PC's
/// state updates move it one level per step, shrinking by β per level. The weights take PC's rule
/// at the inferred states, the surrogate's gradient scaled by 1/β,
///
///     ∇_θ = −(1/β) Σ_k (∂f_k/∂θ)ᵀ ε_k = −(1/β) Σ_k (∂a_k/∂θ)ᵀ (σ'_k(a_k) ⊙ ε_k),   a_k at z(ε),
///
/// averaged over the batch. One step of η = 1 gives ε_k = −β λ_k with λ_k back-propagation's
/// adjoint, and the weight direction Σ_k (∂f_k/∂θ)ᵀ λ_k with the Jacobians at z(ε), which differ from
/// the forward pass by O(β): back-propagation's gradient with error O(β) (tested at β = 1e-6).
/// With more steps the errors approach PC's equilibrium for the same energy (its minimisers are
/// PC's, a change of variables), at ε_k = −β λ_k(z(ε)).
///
/// Source: the energy and the change of variables are the paper's; the update above is derived
/// from them here (gradient descent on E over ε with the PC weight rule), not copied from its
/// text, and its optimiser for the errors (the paper's choice of step rule and step count) is not
/// reproduced: here a constant step η.
public sealed class ErrorPredictiveCoding : WeightDirectionFormulation
{
    public ErrorPredictiveCoding(double beta, int steps = 1, double stepSize = 1.0, bool autograd = false, string name = "epc") : base(name)
    {
        if (!(beta > 0) || !double.IsFinite(beta)) throw new ArgumentOutOfRangeException(nameof(beta), $"Invalid beta: {beta} (expected a finite value > 0).");
        if (steps < 1) throw new ArgumentOutOfRangeException(nameof(steps), $"Invalid inference steps: {steps} (expected >= 1).");
        if (!(stepSize > 0) || !double.IsFinite(stepSize)) throw new ArgumentOutOfRangeException(nameof(stepSize), $"Invalid error step: {stepSize} (expected a finite value > 0).");
        Beta = beta;
        Steps = steps;
        StepSize = stepSize;
        Autograd = autograd;
    }

    public double Beta { get; }
    public int Steps { get; }
    /// η, the step on the errors.
    public double StepSize { get; }
    public bool Autograd { get; }

    public override string Description =>
        $"error-based predictive coding: PC energy over the errors eps_k, z_k = f_k(z_(k-1)) + eps_k, beta = {MethodParameter.Format(Beta)}, {Steps} step(s) of {MethodParameter.Format(StepSize)} (Goemaere et al. 2025)";

    public override WeightDirection Direction(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor labels, ForwardPass? pass = null)
    {
        using var _ = no_grad();
        var levels = program.Segments.Select(s => new Level(s, Autograd)).ToArray();
        int n = levels.Length;
        var errors = new Tensor?[n]; // null = 0
        var (a, f, z) = States(levels, weights, inputs, errors, pass, null);
        var losses = program.Loss.PerExample(z[^1], labels);
        var keep = Scalars.Of(1 - StepSize);
        var etaBeta = Scalars.Of(StepSize * Beta);
        for (int step = 0; step < Steps; step++)
        {
            if (step > 0) (a, f, z) = States(levels, weights, inputs, errors, pass, a);
            // λ: the loss's total derivative at every level's state.
            var lambda = new Tensor?[n];
            lambda[^1] = LocalGradients.LossGradient(program.Loss, z[^1], labels);
            for (int k = n - 1; k >= 0; k--)
            {
                lambda[k] ??= zeros_like(z[k]);
                if (!levels[k].Lifted.Any(l => l)) continue;
                var products = levels[k].InputVjps(levels[k].Segment.InputsFrom(inputs, z), levels[k].ActivationVjp(a[k], f[k], lambda[k]!), weights, pass);
                for (int i = 0; i < products.Length; i++)
                    if (products[i] is { } p)
                    {
                        var s = levels[k].Segment.InputSegments[i];
                        lambda[s] = lambda[s] is { } sum ? sum + p : p;
                    }
            }
            // ε ← ε − η(ε + βλ) = (1 − η)ε − ηβλ.
            for (int k = 0; k < n; k++)
                errors[k] = errors[k] is { } e && StepSize != 1 ? e.mul(keep).sub_(lambda[k]!.mul(etaBeta)) : lambda[k]!.mul(etaBeta).neg_();
        }
        (a, f, z) = States(levels, weights, inputs, errors, pass, a);
        var gradients = weights.Select(w => zeros_like(w)).ToArray();
        double scale = -1.0 / (Beta * inputs.shape[0]);
        for (int k = 0; k < n; k++)
            levels[k].AddWeightGradient(levels[k].Segment.InputsFrom(inputs, z), levels[k].ActivationVjp(a[k], f[k], errors[k]!), weights, gradients, scale, pass);
        return new WeightDirection(gradients, losses);
    }

    /// a_k, f_k = σ_k(a_k) and z_k = f_k + ε_k for every level; a level reading only the data keeps
    /// its a_k from `previous` (the data and the weights have not moved).
    private static (Tensor[] A, Tensor[] F, Tensor[] Z) States(Level[] levels, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor?[] errors, ForwardPass? pass, Tensor[]? previous)
    {
        int n = levels.Length;
        var a = new Tensor[n];
        var f = new Tensor[n];
        var z = new Tensor[n];
        for (int k = 0; k < n; k++)
        {
            a[k] = previous is not null && levels[k].Segment.ReadsOnlyInput ? previous[k]
                : levels[k].PreActivation(levels[k].Segment.InputsFrom(inputs, z), weights, pass);
            f[k] = levels[k].Activation.Apply(a[k]);
            z[k] = errors[k] is { } e ? f[k] + e : f[k];
        }
        return (a, f, z);
    }
}
