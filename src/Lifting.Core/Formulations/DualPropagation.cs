using Lifting.Programs;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Dual propagation (Høier, Staudt & Zach 2023, "Dual Propagation: Accelerating Contrastive
/// Hebbian Learning with Dyadic Neurons", ICML): every unit is a dyad of two states z_k⁺, z_k⁻,
/// oppositely nudged; their mean z̄_k = (z_k⁺ + z_k⁻)/2 carries the activity and their difference
/// d_k = z_k⁺ − z_k⁻ the error. One nudged phase (no free phase), with symmetric nudges ±β/2
/// (α = 1/2 in the paper's notation). On the program's segments (level k = segment k, z_k =
/// σ_k(a_k), a_k = A_k(z̄_in(k)), `Level`), the inference is the layerwise closed form
///
///     z_k^± = σ_k(a_k ± ½ c_k),   c_k = Σ_{s consumes k} (∂a_s/∂z_k)ᵀ d_s,   c_out = −β ∇ℓ(z̄_out),
///
/// (for a dense chain z_k^± = σ(W_k z̄_{k−1} + b_k ± ½ W_{k+1}ᵀ(z_{k+1}⁺ − z_{k+1}⁻))), and the weights
/// descend the Hebbian pair difference
///
///     ∇_θ = −(1/β) Σ_k (∂a_k/∂θ)ᵀ d_k      (dense: −(1/β) (z_k⁺ − z_k⁻) z̄_{k−1}ᵀ),
///
/// averaged over the batch (β scales one example's loss gradient, as in PCN). One sweep is a
/// forward part (k ascending: a_k from the means below, and z_k^± from the last c_k, which the first
/// sweep does not have: z̄_k = σ_k(a_k), the forward pass) and a backward part (k descending: c_k
/// from the consumers' new differences, then z_k^±); the weights take the differences of the last
/// backward part at the means after it. The paper's "≥ 2 steps" is one sweep, the default.
///
/// Why it is back-propagation as β → 0: d_k/β = [σ(a_k + ½c_k) − σ(a_k − ½c_k)]/β is a central
/// difference of σ along c_k = −β × (the signal arriving at z_k), so −d_k/β → σ'(a_k) ⊙ λ_k with λ_k
/// back-propagation's adjoint, error O(β²) for smooth σ (and exact for piecewise-linear σ away
/// from kinks closer than ½|c_k|), and the means move from the forward pass by O(β²). A sweep costs
/// a forward pass, the backward pass's products (closed form for the builder's layers: v W and vᵀz,
/// no autograd graph) and two extra activation evaluations per level.
///
/// Source: the update above is the paper's closed-form inference and weight rule (its eqs. for
/// α = ½) as recalled, not checked against the text here; on graphs a value's c sums its consumers,
/// as PCN's inference does (docs/methods.md).
public sealed class DualPropagation : WeightDirectionFormulation
{
    public DualPropagation(double beta, int sweeps = 1, bool autograd = false, string name = "dual-prop") : base(name)
    {
        if (!(beta > 0) || !double.IsFinite(beta)) throw new ArgumentOutOfRangeException(nameof(beta), $"Invalid beta: {beta} (expected a finite value > 0).");
        if (sweeps < 1) throw new ArgumentOutOfRangeException(nameof(sweeps), $"Invalid sweeps: {sweeps} (expected >= 1).");
        Beta = beta;
        Sweeps = sweeps;
        Autograd = autograd;
    }

    public double Beta { get; }
    public int Sweeps { get; }
    /// Local products by autograd even where the closed form exists (a check and a benchmark).
    public bool Autograd { get; }

    public override string Description =>
        $"dual propagation: dyadic neurons z± = act(a ± c/2), one nudged phase, beta = {MethodParameter.Format(Beta)}, {Sweeps} sweep(s) (Høier, Staudt & Zach 2023)";

    public override WeightDirection Direction(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor labels, ForwardPass? pass = null)
    {
        using var _ = no_grad();
        var levels = program.Segments.Select(s => new Level(s, Autograd)).ToArray();
        int n = levels.Length;
        var beta = Scalars.Of(Beta);
        var a = new Tensor[n];
        var mean = new Tensor[n];
        var difference = new Tensor?[n];
        var c = new Tensor?[n];
        Tensor? losses = null;
        for (int sweep = 0; sweep < Sweeps; sweep++)
        {
            // Forward part: pre-activations from the means below.
            for (int k = 0; k < n; k++)
            {
                var below = levels[k].Segment.InputsFrom(inputs, mean);
                if (sweep == 0 || !levels[k].Segment.ReadsOnlyInput) a[k] = levels[k].PreActivation(below, weights, pass);
                if (c[k] is { } ck)
                {
                    var (plus, minus) = Pair(levels[k], a[k], ck);
                    mean[k] = plus.Plus(minus).mul_(Scalars.Half);
                }
                else mean[k] = levels[k].Activation.Apply(a[k]);
            }
            losses ??= program.Loss.PerExample(mean[^1], labels);
            // Backward part: the nudge at the output, then every level's pair from its consumers'.
            var arriving = new Tensor?[n];
            arriving[^1] = LocalGradients.LossGradient(program.Loss, mean[^1], labels).mul_(beta).neg_();
            for (int k = n - 1; k >= 0; k--)
            {
                c[k] = arriving[k] ?? zeros_like(a[k]);
                var (plus, minus) = Pair(levels[k], a[k], c[k]!);
                difference[k] = plus - minus;
                if (levels[k].Lifted.Any(l => l))
                {
                    var products = levels[k].InputVjps(levels[k].Segment.InputsFrom(inputs, mean), difference[k]!, weights, pass);
                    for (int i = 0; i < products.Length; i++)
                        if (products[i] is { } p)
                        {
                            var s = levels[k].Segment.InputSegments[i];
                            arriving[s] = arriving[s] is { } sum ? sum.Plus(p) : p;
                        }
                }
                mean[k] = plus.Plus(minus).mul_(Scalars.Half);
            }
        }
        // Weights: −(1/β) Σ_k (∂a_k/∂θ)ᵀ d_k at the means, averaged over the batch.
        var gradients = weights.Select(w => zeros_like(w)).ToArray();
        double scale = -1.0 / (Beta * inputs.shape[0]);
        for (int k = 0; k < n; k++)
            levels[k].AddWeightGradient(levels[k].Segment.InputsFrom(inputs, mean), difference[k]!, weights, gradients, scale, pass);
        return new WeightDirection(gradients, losses!);
    }

    /// z⁺ = σ(a + c/2), z⁻ = σ(a − c/2).
    private static (Tensor Plus, Tensor Minus) Pair(Level level, Tensor a, Tensor c)
    {
        var half = c.mul(Scalars.Half);
        return (level.Activation.Apply(a.Plus(half)), level.Activation.Apply(a - half));
    }
}
