using Lifting.Programs;
using TorchSharp;
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
/// Step length. E's curvature along a step grows with β Σ_k ‖∂z_out/∂ε_k‖² (every error moves the
/// output through everything above it), so a fixed η that is safe at initialisation overshoots as
/// the weights grow: measured on MNIST-10k with six hidden layers of 256 (`epc-probe`,
/// docs/methods.md), one step of η = 1 at β = 0.1 raised E instead of lowering it after 80
/// mini-batches (cosine to back-propagation 0.946, falling to 0.37 by step 100) and the run
/// diverged in its second epoch. With `LineSearch` (the default) each example's step is
/// shortened to the minimiser of E's quadratic model along it,
///
///     t_i = min(η, ‖d_i‖² / (‖d_i‖² + β s_i/η²)),   d = ε + βλ,   s_i = ⟨∇ℓ_i(z_out + Δz_i) − ∇ℓ_i(z_out), Δz_i⟩,
///
/// with Δz the output's displacement under the trial step ε − ηd (s ≈ η² Δzᵀ∇²ℓ Δz, a secant, so
/// any loss with a gradient will do): the trial's forward pass is reused when no example needs a
/// shorter step, and one more forward pass is taken when some does. The model ignores the
/// network's own curvature (z is not linear in ε), so an example whose energy still rose has its
/// step halved until it does not (one forward pass per halving; a test found a tanh graph with
/// weights ×3 at β = 1 where the model's step raised E from 6.2 to 36.6). E's examples are
/// independent, so every example gets its own step. As β → 0, t → η.
///
/// Output displacement (`MaxShift` ρ, default 0.01 in the catalog). The line search keeps E
/// falling, but E's minimiser moves away from the forward pass as the net's gain grows: on full
/// Fashion-MNIST with six hidden layers of 256 (β = 0.01, `epc-probe`) the line-searched step
/// moved the output by under 3 % of its size for 300 mini-batches (cosine of the weight direction
/// to back-propagation's ≥ 0.99), then by 11 %, 44 %, 70 % and 490 % at mini-batches 340–420
/// (cosine 0.86, 0.79, 0.53, 0.36), and every seed diverged in epoch 2 (β = 0.001 too, seed 0).
/// So each example's step is also capped at t ≤ η ρ ‖z_out‖ / ‖Δz_out(η)‖, the step that moves
/// its output by ρ of its size to first order (exactly on a linear program): the weight rule is
/// back-propagation's only near the forward pass. An example the cap shortens
/// enters the weight rule scaled by its step (ε_i ≈ −t_i β λ_i), so the direction is a positively
/// weighted sum of per-example gradients taken near the forward pass, high-gain examples weighed
/// less (cosine 0.56–0.98 to the batch mean in the same probe); trained so, the net stays where
/// the uncapped step is back-propagation's (cosine ≥ 0.984, output moved ≤ 2.6 %;
/// docs/results/epc-probe-fashion-6x256.md).
///
/// Source: the energy and the change of variables are the paper's; the update above is derived
/// from them here (gradient descent on E over ε with the PC weight rule), not copied from its
/// text, and its optimiser for the errors (the paper's choice of step rule and step count) is not
/// reproduced: here a step η shortened per example by the line search.
public sealed class ErrorPredictiveCoding : WeightDirectionFormulation
{
    public ErrorPredictiveCoding(double beta, int steps = 1, double stepSize = 1.0, bool autograd = false, bool lineSearch = true, string name = "epc",
        double maxShift = 0.0) : base(name)
    {
        if (!(beta > 0) || !double.IsFinite(beta)) throw new ArgumentOutOfRangeException(nameof(beta), $"Invalid beta: {beta} (expected a finite value > 0).");
        if (steps < 1) throw new ArgumentOutOfRangeException(nameof(steps), $"Invalid inference steps: {steps} (expected >= 1).");
        if (!(stepSize > 0) || !double.IsFinite(stepSize)) throw new ArgumentOutOfRangeException(nameof(stepSize), $"Invalid error step: {stepSize} (expected a finite value > 0).");
        if (!(maxShift >= 0) || !double.IsFinite(maxShift)) throw new ArgumentOutOfRangeException(nameof(maxShift), $"Invalid max-shift: {maxShift} (expected a finite value >= 0; 0 = no cap).");
        if (maxShift > 0 && !lineSearch) throw new ArgumentException($"max-shift {maxShift} caps the line search's step: it needs line-search on.", nameof(maxShift));
        Beta = beta;
        Steps = steps;
        StepSize = stepSize;
        Autograd = autograd;
        LineSearch = lineSearch;
        MaxShift = maxShift;
    }

    public double Beta { get; }
    public int Steps { get; }
    /// η, the step on the errors.
    public double StepSize { get; }
    public bool Autograd { get; }
    /// Per example, shorten each step to the minimiser of the energy's quadratic model along it
    /// (below); off: every step is η.
    public bool LineSearch { get; }
    /// ρ: with the line search, each example's step is also capped so that its output moves by
    /// at most ρ relative to the output, ‖Δz_out‖ ≤ ρ ‖z_out‖ (to first order in the step); 0 = no
    /// cap. Why (docs/methods.md, "ePC on deep nets"): the weight rule is back-propagation's only
    /// while the inferred states stay near the forward pass, and the output's displacement under
    /// one step grows with the net's gain, which training raises.
    public double MaxShift { get; }

    public override string Description =>
        $"error-based predictive coding: PC energy over the errors eps_k, z_k = f_k(z_(k-1)) + eps_k, beta = {MethodParameter.Format(Beta)}, {Steps} step(s) of {MethodParameter.Format(StepSize)}{(LineSearch ? " with a per-example line search" : "")}{(MaxShift > 0 ? $", output shift at most {MethodParameter.Format(MaxShift)}" : "")} (Goemaere et al. 2025)";

    public override WeightDirection Direction(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor labels, ForwardPass? pass = null)
    {
        using var _ = no_grad();
        var levels = program.Segments.Select(s => new Level(s, Autograd)).ToArray();
        var inference = Infer(levels, program, weights, inputs, labels, pass, measure: false);
        var (a, f, z, errors) = (inference.PreActivations, inference.Predictions, inference.States, inference.Errors);
        var gradients = weights.Select(w => zeros_like(w)).ToArray();
        double scale = -1.0 / (Beta * inputs.shape[0]);
        for (int k = 0; k < levels.Length; k++)
            levels[k].AddWeightGradient(levels[k].Segment.InputsFrom(inputs, z), levels[k].ActivationVjp(a[k], f[k], errors[k]), weights, gradients, scale, pass);
        return new WeightDirection(gradients, inference.Losses);
    }

    /// The inference on a batch (no weight update): the errors ε_k after the steps, the states
    /// z(ε), and the energy E(ε) = Σ_k ½‖ε_k‖² + β ℓ(z_out(ε)) summed over the batch before every
    /// step and after the last (`Energies`: the first is β ℓ at the forward pass, the second after the
    /// steps; a diagnostic, not computed by `Direction`).
    public EpcInference Infer(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor labels, ForwardPass? pass = null)
    {
        using var _ = no_grad();
        return Infer(program.Segments.Select(s => new Level(s, Autograd)).ToArray(), program, weights, inputs, labels, pass, measure: true);
    }

    private EpcInference Infer(Level[] levels, NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor labels, ForwardPass? pass, bool measure)
    {
        int n = levels.Length;
        var errors = new Tensor?[n]; // null = 0
        var (a, f, z) = States(levels, weights, inputs, errors, pass, null);
        var losses = program.Loss.PerExample(z[^1], labels);
        var energies = new List<double>();
        if (measure) energies.Add(Beta * losses.sum().ToDouble());
        var betaScalar = Scalars.Of(Beta);
        var eta = Scalars.Of(StepSize);
        var curvatureScale = Scalars.Of(Beta / (StepSize * StepSize));
        var maxShift = Scalars.Of(MaxShift * StepSize);
        for (int step = 0; step < Steps; step++)
        {
            // λ: the loss's total derivative at every level's state.
            var lambda = new Tensor?[n];
            var gradient = LocalGradients.LossGradient(program.Loss, z[^1], labels);
            lambda[^1] = gradient;
            for (int k = n - 1; k >= 0; k--)
            {
                lambda[k] ??= zeros_like(z[k]);
                if (!levels[k].Lifted.Any(l => l)) continue;
                var products = levels[k].InputVjps(levels[k].Segment.InputsFrom(inputs, z), levels[k].ActivationVjp(a[k], f[k], lambda[k]!), weights, pass);
                for (int i = 0; i < products.Length; i++)
                    if (products[i] is { } p)
                    {
                        var s = levels[k].Segment.InputSegments[i];
                        lambda[s] = lambda[s] is { } sum ? sum.Plus(p) : p;
                    }
            }
            // The energy's gradient d_k = ε_k + βλ_k and the step ε − η d.
            var d = new Tensor[n];
            var trial = new Tensor?[n];
            for (int k = 0; k < n; k++)
            {
                d[k] = errors[k] is { } e ? e.Plus(lambda[k]!.mul(betaScalar)) : lambda[k]!.mul(betaScalar);
                trial[k] = errors[k] is { } e2 ? e2 - d[k].mul(eta) : d[k].mul(eta).neg();
            }
            var (ta, tf, tz) = States(levels, weights, inputs, trial, pass, a);
            if (LineSearch)
            {
                // Per example, the step t = ‖d‖² / (‖d‖² + β q) that minimises E's quadratic model along −d,
                // with the curvature of the loss along the output's displacement Δz = z_out(ε − ηd) −
                // z_out(ε) from the secant s = ⟨∇ℓ(z_out + Δz) − ∇ℓ(z_out), Δz⟩ ≈ η² q; capped at η;
                // then halved (at most 10 times, then no step) for the examples whose energy still rose (the
                // network is not linear in ε).
                var shift = tz[^1] - z[^1];
                var secant = Activations.PerExample((LocalGradients.LossGradient(program.Loss, tz[^1], labels) - gradient).mul_(shift)).clamp_min_(Scalars.Zero);
                var squared = d.Select(t => Activations.PerExample(t.Squared())).Aggregate((x, y) => x.Plus(y));
                var steps = squared.div(squared.Plus(secant.mul(curvatureScale))).nan_to_num_(StepSize).clamp_max_(eta);
                if (MaxShift > 0)
                {
                    // Δz_out is linear in the step to first order: t ≤ η ρ ‖z_out‖ / ‖Δz_out(η)‖.
                    var moves = Activations.PerExample(shift.Squared()).sqrt_();
                    var cap = Activations.PerExample(z[^1].Squared()).sqrt_().mul_(maxShift).div_(moves).nan_to_num_(StepSize);
                    steps = steps.minimum(cap);
                }
                var before = Energy(program, errors, z[^1], labels);
                // Rises below 1e-5 of the example's energy or of the batch's mean are rounding (a
                // well-classified example's loss is near 0, where its float32 rounding dominates).
                var allowed = before.Plus(before.abs().mul(Scalars.Of(1e-5))).Plus(before.abs().mean().mul(Scalars.Of(1e-5)));
                bool moved = (steps < eta).any().ToBoolean();
                for (int halving = 0; ; halving++)
                {
                    if (moved)
                    {
                        for (int k = 0; k < n; k++)
                        {
                            var tk = steps.reshape(new[] { steps.shape[0] }.Concat(Enumerable.Repeat(1L, (int)d[k].dim() - 1)).ToArray());
                            trial[k] = errors[k] is { } e ? e - d[k] * tk : (d[k] * tk).neg_();
                        }
                        (ta, tf, tz) = States(levels, weights, inputs, trial, pass, a);
                    }
                    var rose = Energy(program, trial, tz[^1], labels) > allowed;
                    if (!rose.any().ToBoolean()) break;
                    steps = steps.where(rose.logical_not(), halving < 10 ? steps.mul(Scalars.Half) : zeros_like(steps));
                    moved = true;
                }
            }
            (errors, a, f, z) = (trial, ta, tf, tz);
        }
        var final = errors.Select(e => e!).ToArray();
        if (measure) energies.Add(final.Sum(e => 0.5 * e.Squared().sum().ToDouble()) + Beta * program.Loss.PerExample(z[^1], labels).sum().ToDouble());
        return new EpcInference(final, z, a, f, losses, energies);
    }

    /// E per example: Σ_k ½‖ε_k‖² + β ℓ(z_out).
    private Tensor Energy(NestedProgram program, IReadOnlyList<Tensor?> errors, Tensor output, Tensor labels)
    {
        var total = program.Loss.PerExample(output, labels).mul(Scalars.Of(Beta));
        foreach (var e in errors)
            if (e is not null) total = total.Plus(Activations.PerExample(e.Squared()).mul(Scalars.Half));
        return total;
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
            z[k] = errors[k] is { } e ? f[k].Plus(e) : f[k];
        }
        return (a, f, z);
    }
}

/// ePC's inference on a batch: the errors ε_k, the states z_k(ε), the pre-activations a_k and
/// predictions f_k = σ_k(a_k) at those states, each example's loss at the forward pass, and the
/// energy E(ε) summed over the batch at the start and after the steps.
public sealed record EpcInference(IReadOnlyList<Tensor> Errors, IReadOnlyList<Tensor> States, IReadOnlyList<Tensor> PreActivations,
    IReadOnlyList<Tensor> Predictions, Tensor Losses, IReadOnlyList<double> Energies);
