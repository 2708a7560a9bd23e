using Lifting.Data;
using Lifting.Programs;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Predictive coding networks (Whittington & Bogacz 2017; Song et al. 2020) as the top-down, local
/// contrastive surrogate with the quadratic penaliser (seed 002 §3.2.1, eq. 30):
///
///     E_k(z_k, z_{k−1}) = ½‖z_k − f_k(z_{k−1})‖²,   f_k = σ_k ∘ A_k,   ε_k = z_k − f_k(z_{k−1}),
///     Ê_β(z) = β_L ℓ(z_L) + Σ_k ω_k ½‖ε_k‖²            (ω_k from the spacings, `ContrastiveOptions`).
///
/// min_z Σ_k E_k = 0 at the forward pass, so the free solution is closed form and ∇_θE(ž) = 0: only
/// the clamped phase is inferred, by T steps on the activations (Euclidean; with a constant step
/// η the classic PCN inference)
///
///     z_k ← z_k − η [ε_k − β_k (∂f_{k+1}/∂z_k)ᵀ ε_{k+1}],    z_L ← z_L − η [ε_L + β_L ∇ℓ(z_L)],
///
/// and the weights descend (1/β_L) Σ_k ω_k ∇_θE_k(ẑ) = −(1/β_L) Σ_k ω_k (∂a_k/∂θ)ᵀ (σ'_k(a_k) ⊙ ε_k).
/// For the builder's layers these are matrix products (no autograd graph); the first level's
/// prediction f_1(x) is computed once per batch.
///
/// MAC (`QuadraticPenalty`) minimises the same penaliser, ℓ + (μ/2) Σ‖h_l − f_l(h_{l−1})‖² with
/// μ = 1/β, but over per-example states kept across epochs and alternating with the weights,
/// without re-inferring from the forward pass: the same objective, lifted instead of contrasted.
public sealed class PredictiveCoding : ContrastiveFormulation
{
    public PredictiveCoding(ContrastiveOptions? options = null, string name = "predictive-coding") : base(name, options) { }

    public override string Description =>
        $"predictive coding: top-down contrastive surrogate with the quadratic penaliser ½‖z_k − f_k(z_(k−1))‖², {Options} (seed 002 §3.2.1)";

    public override IContrastiveEnergy Energy(NestedProgram program, IReadOnlyList<Tensor> weights, MiniBatch batch, IReadOnlyList<double> spacings, ForwardPass? pass = null) =>
        new PredictiveCodingEnergy(program, weights, batch.Inputs, spacings, Options.AutogradLocalGradients, Options.Preconditioned) { Pass = pass };
}

internal sealed class PredictiveCodingEnergy : LevelEnergy
{
    public PredictiveCodingEnergy(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, IReadOnlyList<double> spacings, bool autograd, bool precondition)
        : base(program, weights, inputs, spacings, autograd, precondition) { }

    public override bool StartIsFreeSolution => true;

    public override IReadOnlyList<Tensor> Start() => ForwardPass().Activations.Select(z => z.clone()).ToArray();

    public override Tensor Output(IReadOnlyList<Tensor> variables) => variables[^1];

    /// a_k, f_k = σ_k(a_k) and ε_k = z_k − f_k for every level.
    private (Tensor[] A, Tensor[] F, Tensor[] Errors) Predictions(IReadOnlyList<Tensor> z)
    {
        var a = new Tensor[Count];
        var f = new Tensor[Count];
        var e = new Tensor[Count];
        for (int k = 0; k < Count; k++)
        {
            a[k] = PreActivation(k, Below(z, k));
            f[k] = Levels[k].Activation.Apply(a[k]);
            e[k] = z[k] - f[k];
        }
        return (a, f, e);
    }

    /// d_k = ε_k − Σ_{s consumes k} β_{k→s} (∂f_s/∂z_k)ᵀ ε_s, and d_L = ε_L + pull.
    public override IReadOnlyList<Tensor> Directions(IReadOnlyList<Tensor> z, Tensor? pull)
    {
        var (a, f, e) = Predictions(z);
        var d = e.ToArray();
        AddInputProducts(z, s => Levels[s].ActivationVjp(a[s], f[s], e[s]), d, (k, s) => -Coupling(k, s));
        if (pull is not null) d[^1] = d[^1].PlusInPlace(pull);
        return Preconditioned(d, z);
    }

    public override void AddWeightGradient(IReadOnlyList<Tensor> z, double coefficient, IReadOnlyList<Tensor> into)
    {
        var (a, f, e) = Predictions(z);
        for (int k = 0; k < Count; k++)
            Levels[k].AddWeightGradient(Below(z, k), Levels[k].ActivationVjp(a[k], f[k], e[k]), Weights, into, -coefficient * LevelWeights[k], Pass);
    }

    public override Tensor Energy(IReadOnlyList<Tensor> z)
    {
        var (_, _, e) = Predictions(z);
        Tensor total = zeros(z[0].shape[0], dtype: z[0].dtype, device: z[0].device);
        for (int k = 0; k < Count; k++) total = total.Plus(Activations.PerExample(e[k].Squared()).mul(Scalars.Of(0.5 * LevelWeights[k])));
        return total;
    }
}
