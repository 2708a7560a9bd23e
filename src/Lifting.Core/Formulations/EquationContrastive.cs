using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// A contrastive (inference-learning) formulation whose energy is written as an equation
/// (issue 29): E(z; θ) = Σ_v term(g_v), g_v = z_v − f_v(inputs of v) over every level of the program
/// (the output included), per-batch activations z started at the forward pass, and the
/// contrastive surrogate of seed 002 on top (`ContrastiveSurrogate`):
///
///     PCN:  Term.OverConstraints(Term.SquaredNorm(Term.Defect)) / 2        E = ½ Σ_k ‖z_k − f_k(z_{k−1})‖²
///     an L1 (robust) predictive coding:  Term.OverConstraints(Term.Norm1(Term.Defect))
///
/// The inference directions ∂E/∂z (plus the loss pull on the output) and the weights' ∇_θE are taken
/// by autograd of the equation, not the closed-form local derivatives of the hand-written
/// energies. The energy must be a gap: a sum of norms of terms of g_v with non-negative
/// coefficients, so E ≥ 0 with E = 0 at the forward pass; then the free phase is the forward pass
/// and ∇_θE(ž) = 0, as for the penaliser of PCN. Level weights are all 1 (one β, no discount).
public sealed class EquationContrastive : ContrastiveFormulation
{
    public EquationContrastive(string name, Term energy, ContrastiveOptions? options = null) : base(name, options)
    {
        ArgumentNullException.ThrowIfNull(energy);
        EnergyTerm = energy;
        PerLevel = Validate(energy);
        if (Options.Beta.Count > 1 || Options.Discount != 1)
            throw new ArgumentException($"Invalid beta/discount for '{name}': an equation energy weighs every level by 1 (give one β and no discount).");
    }

    /// E as written.
    public Term EnergyTerm { get; }
    internal Term PerLevel { get; }

    public override string Description => $"contrastive surrogate of E = {EnergyTerm}, g_v = z_v − f_v(inputs of v) over every level, free phase at the forward pass, {Options}";

    public override IContrastiveEnergy Energy(NestedProgram program, IReadOnlyList<Tensor> weights, MiniBatch batch, IReadOnlyList<double> spacings, ForwardPass? pass = null) =>
        new EquationEnergy(this, program, weights, batch.Inputs, pass);

    /// The per-level term, after checking that E is a gap vanishing at g = 0.
    private static Term Validate(Term energy)
    {
        void Fail(Term term, string why) => throw new ArgumentException($"Invalid term '{term}' of the energy '{energy}': {why}.");
        foreach (var t in energy.Descendants())
        {
            if (t is LossTerm) Fail(t, "an energy has no loss (the surrogate adds β ℓ itself)");
            if (t is MultiplierTerm) Fail(t, "an energy has no multipliers");
        }
        var sums = energy.Descendants().OfType<ConstraintSum>().ToArray();
        if (sums.Length != 1) Fail(energy, "write the energy as one Σ_v over the levels (Term.OverConstraints)");
        if (!IsGap(energy, sums[0])) Fail(energy, "the energy must be a non-negative combination of norms of g_v (‖·‖², ‖·‖₁ of g_v, shrink(g_v), c·g_v), so that it is 0 at the forward pass");
        return sums[0].PerConstraint;
    }

    /// Non-negative, and 0 when every g_v = 0.
    private static bool IsGap(Term t, ConstraintSum sum) => t switch
    {
        ConstraintSum s => IsGap(s.PerConstraint, sum),
        Sum s => IsGap(s.A, sum) && IsGap(s.B, sum),
        Product { A: var c, B: var b } when c.Kind == TermKind.Coefficient => NonNegative(c) && IsGap(b, sum),
        Product { A: var b, B: var c } when c.Kind == TermKind.Coefficient => NonNegative(c) && IsGap(b, sum),
        Quotient q => NonNegative(q.B) && IsGap(q.A, sum),
        Reduction { Reduce: ReductionKind.SquaredNorm or ReductionKind.Norm1 } r => ZeroAtZero(r.A),
        _ => false,
    };

    private static bool NonNegative(Term c) => c switch
    {
        ConstantTerm k => k.Value >= 0,
        ScheduleTerm => true,
        Sum s => NonNegative(s.A) && NonNegative(s.B),
        Product p => NonNegative(p.A) && NonNegative(p.B),
        Quotient q => NonNegative(q.A) && NonNegative(q.B),
        _ => false,
    };

    private static bool ZeroAtZero(Term t) => t switch
    {
        DefectTerm => true,
        ShrinkTerm s => ZeroAtZero(s.A),
        Product { A.Kind: TermKind.Coefficient } p => ZeroAtZero(p.B),
        Product { B.Kind: TermKind.Coefficient } p => ZeroAtZero(p.A),
        Sum s => ZeroAtZero(s.A) && ZeroAtZero(s.B),
        _ => false,
    };
}

/// The energy of an `EquationContrastive` on one mini-batch, differentiated by autograd.
internal sealed class EquationEnergy(EquationContrastive formulation, NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, ForwardPass? pass) : IContrastiveEnergy
{
    public bool StartIsFreeSolution => true;
    public bool VanishesAtFreeSolution => true;

    public IReadOnlyList<Tensor> Start()
    {
        using var _ = no_grad();
        var z = new Tensor[program.Segments.Count];
        for (int k = 0; k < z.Length; k++)
        {
            var segment = program.Segments[k];
            z[k] = segment.Forward(segment.InputsFrom(inputs, z), weights, pass);
        }
        return z.Select(t => t.detach().clone()).ToArray();
    }

    public Tensor Output(IReadOnlyList<Tensor> variables) => variables[^1];

    /// Σ_v term(g_v), then the equation around Σ_v; per example or summed over the batch.
    private Tensor Evaluate(IReadOnlyList<Tensor> z, bool perExample)
    {
        var levels = z.ToArray();
        Tensor total = perExample
            ? zeros(z[0].shape[0], dtype: z[0].dtype, device: z[0].device)
            : zeros(1, dtype: z[0].dtype, device: z[0].device).squeeze();
        for (int k = 0; k < levels.Length; k++)
        {
            var segment = program.Segments[k];
            var g = levels[k] - segment.Forward(segment.InputsFrom(inputs, levels), weights, pass);
            total = formulation.PerLevel.AddTo(total, new EquationValues { Defect = g, PerExample = perExample, Schedule = NoSchedules });
        }
        return formulation.EnergyTerm.Evaluate(new EquationValues { Constraints = total, PerExample = perExample, Schedule = NoSchedules });
    }

    private static double NoSchedules(string name) => throw new ArgumentException($"Schedule '{name}' in an energy: energies take constant coefficients.");

    public IReadOnlyList<Tensor> Directions(IReadOnlyList<Tensor> variables, Tensor? pull)
    {
        using var _ = enable_grad();
        var z = variables.Select(v => v.detach().requires_grad_(true)).ToArray();
        var e = Evaluate(z, perExample: false);
        if (pull is not null) e = e.Plus((pull * z[^1]).sum());
        return autograd.grad(new[] { e }, z).Select(d => d.detach()).ToArray();
    }

    public void AddWeightGradient(IReadOnlyList<Tensor> variables, double coefficient, IReadOnlyList<Tensor> into)
    {
        using var _ = enable_grad();
        var z = variables.Select(v => v.detach()).ToArray();
        var trainable = Enumerable.Range(0, weights.Count).Where(i => weights[i].requires_grad).ToArray();
        var grads = autograd.grad(new[] { Evaluate(z, perExample: false) }, trainable.Select(i => weights[i]).ToArray(), allow_unused: true);
        using (no_grad())
            for (int j = 0; j < trainable.Length; j++)
                if (grads[j] is { } g && g.Handle != IntPtr.Zero) into[trainable[j]].add_(g, Scalars.Of(coefficient));
    }

    public Tensor Energy(IReadOnlyList<Tensor> variables)
    {
        using var _ = no_grad();
        return Evaluate(variables, perExample: true);
    }

    public void WeightsChanged() { }

    public void Dispose() { }
}
