using Lifting.Data;
using Lifting.Programs;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Lifted proximal operator machines (Li, Fang & Lin 2018) in seed 002's generalisation (§3.2.2):
/// the top-down, local contrastive surrogate with the Fenchel coupling
///
///     E_k(z_k, z_{k−1}) = G_k(z_k) + G_k*(a_k) − ⟨z_k, a_k⟩ ≥ 0,   a_k = A_k(z_{k−1}; θ_k)   (eq. 33),
///     Ê_β(z) = β_L ℓ(z_L) + Σ_k ω_k E_k(z_k, z_{k−1})                                          (eq. 34),
///
/// where G_k is the convex potential of block k's activation, ∇G_k* = σ_k (the builder's
/// activations carry G and G*; softmax's pair is the negative entropy and log-sum-exp, which
/// LPOM proper cannot express, since it couples the units). E_k is the Fenchel–Young gap: 0 exactly
/// at z_k = σ_k(a_k), so the free solution is the forward pass. Inference is block-convex (eq. 35):
/// for fixed neighbours, z_k minimises the convex ω_k(G_k(z_k) − ⟨z_k, a_k⟩) + ω_{k+1}(G*_{k+1}(a_{k+1}) −
/// ⟨z_{k+1}, a_{k+1}⟩). The variables are the dual coordinates u_k = ∇G_k(z_k), z_k = σ_k(u_k), and a
/// step is mirror descent in G_k's geometry, which keeps z_k in the activation's range:
///
///     u_k ← u_k − η [u_k − a_k + β_k (∂a_{k+1}/∂z_k)ᵀ (σ_{k+1}(a_{k+1}) − z_{k+1})],
///     u_L ← u_L − η [u_L − a_L + β_L ∇ℓ(z_L)]
///
/// (η = 1: the fixed point z_k = σ_k(a_k − β_k W_{k+1}ᵀ(σ_{k+1}(a_{k+1}) − z_{k+1})) of LPOM). The weights
/// descend (1/β_L) Σ_k ω_k (∂a_k/∂θ)ᵀ (σ_k(a_k) − ẑ_k).
public sealed class LiftedProximalOperatorMachine : ContrastiveFormulation
{
    public LiftedProximalOperatorMachine(ContrastiveOptions? options = null, string name = "lpom") : base(name, options) { }

    public override string Description =>
        $"LPOM: top-down contrastive surrogate with the Fenchel coupling G(z_k) + G*(a_k) − ⟨z_k, a_k⟩, {Options} (seed 002 §3.2.2)";

    protected override void Check(NestedProgram program) => RequirePotentials(program);

    public override IContrastiveEnergy Energy(NestedProgram program, IReadOnlyList<Tensor> weights, MiniBatch batch, IReadOnlyList<double> spacings, ForwardPass? pass = null) =>
        new FenchelCouplingEnergy(program, weights, batch.Inputs, spacings, Options.AutogradLocalGradients, Options.Preconditioned, fenchelYoungGap: true) { Pass = pass };
}

/// Energies over the dual coordinates u_k (z_k = σ_k(u_k)) with a Fenchel coupling: the
/// Fenchel–Young gap G_k(z_k) + G_k*(a_k) − ⟨z_k, a_k⟩ (LPOM, top-down) or the layered Hopfield
/// energy G_k(z_k) − ⟨z_k, a_k⟩ (contrastive Hebbian learning, bottom-up).
internal sealed class FenchelCouplingEnergy : LevelEnergy
{
    private readonly bool gap;

    public FenchelCouplingEnergy(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, IReadOnlyList<double> spacings, bool autograd, bool precondition, bool fenchelYoungGap)
        : base(program, weights, inputs, spacings, autograd, precondition && fenchelYoungGap) => gap = fenchelYoungGap;
    // The Hopfield energy is linear in z_k apart from G_k, so a mirror step has unit curvature in
    // u_k and needs no preconditioning; the gap's G*_{k+1}(W_{k+1} z_k) adds curvature up to ‖W_{k+1}‖².


    /// The gap is 0 at the forward pass; the Hopfield energy is not minimised there.
    public override bool StartIsFreeSolution => gap;

    /// u_k = a_k of the forward pass.
    public override IReadOnlyList<Tensor> Start() => ForwardPass().PreActivations.Select(a => a.clone()).ToArray();

    private Tensor[] ActivationsOf(IReadOnlyList<Tensor> u) => Enumerable.Range(0, Count).Select(k => Levels[k].Activation.Apply(u[k])).ToArray();

    public override Tensor Output(IReadOnlyList<Tensor> u) => Levels[^1].Activation.Apply(u[^1]);

    private Tensor[] PreActivations(Tensor[] z) => Enumerable.Range(0, Count).Select(k => PreActivation(k, Below(z, k))).ToArray();

    /// d_k = u_k − a_k + Σ_{s consumes k} β_{k→s} (∂a_s/∂z_k)ᵀ v_s with v_s = σ_s(a_s) − z_s for the
    /// gap, −z_s for the Hopfield energy (the consumer's coupling −⟨z_s, a_s⟩, plus G*_s(a_s) for the
    /// gap); d_L += pull.
    public override IReadOnlyList<Tensor> Directions(IReadOnlyList<Tensor> u, Tensor? pull)
    {
        var z = ActivationsOf(u);
        var a = PreActivations(z);
        var d = new Tensor[Count];
        for (int k = 0; k < Count; k++) d[k] = u[k] - a[k];
        AddInputProducts(z, s => gap ? Levels[s].Activation.Apply(a[s]) - z[s] : -z[s], d, Coupling);
        if (pull is not null) d[^1].PlusInPlace(pull);
        return Preconditioned(d, z);
    }

    public override void AddWeightGradient(IReadOnlyList<Tensor> u, double coefficient, IReadOnlyList<Tensor> into)
    {
        var z = ActivationsOf(u);
        for (int k = 0; k < Count; k++)
        {
            var below = Below(z, k);
            // ∇_θ E_k = (∂a_k/∂θ)ᵀ (σ_k(a_k) − z_k) for the gap, −(∂a_k/∂θ)ᵀ z_k for the Hopfield energy.
            var v = gap ? Levels[k].Activation.Apply(PreActivation(k, below)) - z[k] : -z[k];
            Levels[k].AddWeightGradient(below, v, Weights, into, coefficient * LevelWeights[k], Pass);
        }
    }

    public override Tensor Energy(IReadOnlyList<Tensor> u)
    {
        var z = ActivationsOf(u);
        var a = PreActivations(z);
        Tensor total = zeros(u[0].shape[0], dtype: u[0].dtype, device: u[0].device);
        for (int k = 0; k < Count; k++)
        {
            var potential = Levels[k].Potential;
            var e = potential.G(z[k]) - Activations.PerExample(z[k] * a[k]);
            if (gap) e = e.Plus(potential.Conjugate(a[k]));
            total = total.Plus(e.mul(Scalars.Of(LevelWeights[k])));
        }
        return total;
    }
}
