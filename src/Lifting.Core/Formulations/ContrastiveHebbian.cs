using Lifting.Data;
using Lifting.Programs;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Contrastive Hebbian learning with discounted layers (Xie & Seung 2003) as the bottom-up, global
/// contrastive surrogate of seed 002 §3.1 (Prop. 4), and equilibrium propagation (Scellier & Bengio
/// 2017) as its nudged form. With the Fenchel choice E_k(z_k, z_{k−1}) = G_k(z_k) − ⟨z_k, a_k⟩,
/// a_k = A_k(z_{k−1}; θ_k), the free and clamped energies cover every layer:
///
///     Ě(z) = Σ_k ω_k [G_k(z_k) − ⟨z_k, a_k⟩],     Ê_β(z) = β_L ℓ(z_L) + Ě(z),
///     L_β(θ) = (1/β_L) [min Ê_β − min Ě],     ∇_θ L_β = (1/β_L) Σ_k ω_k [⟨ž_k, ∂a_k(ž)/∂θ⟩ − ⟨ẑ_k, ∂a_k(ẑ)/∂θ⟩],
///
/// for dense layers the Hebbian minus anti-Hebbian rule (1/β_L) Σ_k ω_k (ž_k ž_{k−1}ᵀ − ẑ_k ẑ_{k−1}ᵀ). The
/// weights ω_k = Π_{j≥k} 1/β_j make level k feel level k+1 with strength β_k, the feedback: with a
/// common β (eq. 25) later layers are discounted by β per level, and as β → 0 both phases tend to
/// the forward pass and the gradient to back-propagation's. Equilibrium propagation keeps the
/// feedback β_1 … β_{L−1} (the discount) fixed and nudges the output with a small β_L; its limit is
/// the gradient of ℓ at the free equilibrium of Ě.
///
/// Both phases are inferred (Ě is not minimised at the forward pass), over the dual coordinates
/// u_k = ∇G_k(z_k) by mirror descent, u_k ← u_k − η [u_k − a_k − β_k (∂a_{k+1}/∂z_k)ᵀ z_{k+1}]; with η = 1
/// the Hopfield-style fixed point z_k = σ_k(a_k + β_k W_{k+1}ᵀ z_{k+1}).
public sealed class ContrastiveHebbian : ContrastiveFormulation
{
    public ContrastiveHebbian(ContrastiveOptions? options = null, string name = "contrastive-hebbian") : base(name, options) { }

    public override string Description =>
        $"contrastive Hebbian learning: bottom-up (global) contrastive surrogate, layered energy G(z_k) − ⟨z_k, a_k⟩, free and clamped phases, {Options} (seed 002 §3.1)";

    protected override void Check(NestedProgram program) => RequirePotentials(program);

    public override IContrastiveEnergy Energy(NestedProgram program, IReadOnlyList<Tensor> weights, MiniBatch batch, IReadOnlyList<double> spacings, ForwardPass? pass = null) =>
        new FenchelCouplingEnergy(program, weights, batch.Inputs, spacings, Options.AutogradLocalGradients, Options.Preconditioned, fenchelYoungGap: false) { Pass = pass };
}
