namespace Lifting.Formulations;

/// Settings of a contrastive surrogate (seed 002 §2–3).
///
/// Spacings: a deeply nested program with levels 1 … L is expanded level by level, each with its
/// own spacing β_k (seed 002 Props. 4 and 5). Normalised so that the output level has weight 1,
/// both expansions give the energy
///
///     Ê_β(z) = β_L ℓ(z_L) + Σ_k ω_k E_k(z_k, z_{k−1}),   ω_k = Π_{j=k}^{L−1} 1/β_j   (ω_L = 1),
///
/// and the weight gradient (1/β_L) Σ_k ω_k (∇_θ E_k(ẑ) − ∇_θ E_k(ž)). Level k therefore feels its
/// upper neighbour with strength ω_{k+1}/ω_k = β_k: for the bottom-up (global contrastive, CHL)
/// expansion this is the feedback, so a common β discounts later layers (seed 002 eq. 25); for the
/// top-down expansion (PCN, LPOM) β_k < 1 stiffens the inner levels.
public sealed record ContrastiveOptions
{
    /// β: one value, the output level's spacing β_L (the nudge on the loss), the inner levels
    /// taking `Discount`; or one value per level, β_1 … β_L.
    public IReadOnlyList<double> Beta { get; init; } = new[] { 0.1 };

    /// With a single β, the spacing β_1 … β_{L−1} of the inner levels (1: every level weighs the
    /// same). Contrastive Hebbian learning with a common feedback parameter sets it to β.
    public double Discount { get; init; } = 1.0;

    /// Clamp at +β and −β and take (1/2β)(∇_θE(ẑ_{+β}) − ∇_θE(ẑ_{−β})): bias O(β²) instead of O(β).
    public bool Symmetric { get; init; }

    /// Replace the outer loss by its linearisation at the free solution,
    /// ℓ(z) ≈ ℓ(ž) + ⟨∇ℓ(ž), z − ž⟩ (seed 002 Definition 2).
    public bool Linearised { get; init; }

    /// Solve the free phase by inference even where it has a closed form (a check that the two agree).
    public bool InferFreePhase { get; init; }

    /// Inference steps per mini-batch in the formulation's default schedule.
    public int InferenceSteps { get; init; } = 20;

    /// Divide each level's inference direction by a bound on its curvature, 1 + β_k‖W_{k+1}‖₂²
    /// (a level-wise preconditioner; same solution, a step size that stays stable as the weights grow).
    public bool Preconditioned { get; init; } = true;

    /// Evaluate the local gradients of every level by automatic differentiation, even for the
    /// builder's dense layers and activations, which have closed forms (a check and a benchmark).
    public bool AutogradLocalGradients { get; init; }

    public void Validate()
    {
        if (Beta.Count == 0) throw new ArgumentException("Invalid beta: no value (expected one value or one per level).");
        foreach (var b in Beta)
            if (!(b > 0) || double.IsInfinity(b)) throw new ArgumentOutOfRangeException(nameof(Beta), $"Invalid beta: {b} (expected a finite value > 0).");
        if (!(Discount > 0) || double.IsInfinity(Discount)) throw new ArgumentOutOfRangeException(nameof(Discount), $"Invalid discount: {Discount} (expected a finite value > 0).");
        if (InferenceSteps < 1) throw new ArgumentOutOfRangeException(nameof(InferenceSteps), $"Invalid inference steps: {InferenceSteps} (expected >= 1).");
    }

    /// β_1 … β_L for a program with `levels` levels.
    public IReadOnlyList<double> Spacings(int levels)
    {
        if (Beta.Count == 1) return Enumerable.Repeat(Discount, levels - 1).Append(Beta[0]).ToArray();
        if (Beta.Count != levels)
            throw new ArgumentException($"Invalid beta: {Beta.Count} values for a program with {levels} levels (blocks); give one value or {levels}.");
        return Beta.ToArray();
    }

    /// ω_1 … ω_L from the spacings: ω_k = Π_{j=k}^{L−1} 1/β_j.
    public static double[] LevelWeights(IReadOnlyList<double> spacings)
    {
        var weights = new double[spacings.Count];
        double w = 1;
        for (int k = spacings.Count - 1; k >= 0; k--)
        {
            weights[k] = w;
            if (k > 0) w /= spacings[k - 1];
        }
        return weights;
    }

    public override string ToString() =>
        $"β = {string.Join(",", Beta)}{(Beta.Count == 1 && Discount != 1 ? $", discount {Discount}" : "")}{(Symmetric ? ", symmetric" : "")}{(Linearised ? ", linearised" : "")}";
}
