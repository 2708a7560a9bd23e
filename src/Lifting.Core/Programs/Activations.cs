using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Programs;

/// The closed interval an activation's outputs lie in (bounds may be infinite).
public sealed record ActivationRange(double Lower, double Upper)
{
    public static ActivationRange Real { get; } = new(double.NegativeInfinity, double.PositiveInfinity);
    public static ActivationRange NonNegative { get; } = new(0, double.PositiveInfinity);
    public override string ToString() => $"[{Lower}, {Upper}]";
}

/// A convex potential G whose conjugate's gradient is the activation: ∇G*(a) = σ(a).
/// Used by Fenchel couplings E(z, a) = G(z) + G*(a) − ⟨z, a⟩ ≥ 0 (LPOM, Fenchel back-propagation;
/// seed 002 §4). Both functions return one value per example (summed over non-batch dimensions)
/// and assume z lies in G's domain (the activation's range).
public interface IConvexPotential
{
    Tensor G(Tensor z);
    Tensor Conjugate(Tensor a);
}

/// An activation function σ: what it computes, the range of its outputs (for state
/// reparametrisation, seed 001 §3.1), and its convex potential where one exists.
/// Implement this to add an activation without touching the engine.
public interface IActivation
{
    string Name { get; }
    ActivationRange Range { get; }
    /// False for step-like activations (sign, step) whose derivative is zero almost everywhere.
    bool Differentiable { get; }
    IConvexPotential? Potential { get; }

    Tensor Apply(Tensor x);

    /// Maps a free variable onto the range: the state h = Reparametrise(u) (seed 001 §3.1, h = ReLU(ĥ)).
    Tensor Reparametrise(Tensor free);

    /// A free variable u with Reparametrise(u) = h, for initialising reparametrised states.
    Tensor Preimage(Tensor h);
}

/// An activation's closed-form vector–Jacobian product σ'(a)ᵀv, given a and f = σ(a). An activation
/// that implements it gets the lifted families' fast paths; any other is differentiated by autograd.
public interface IActivationDerivative
{
    Tensor Vjp(Tensor a, Tensor f, Tensor v);
}

/// The built-in activations.
public static class Activations
{
    public static IActivation ReLU { get; } = new Builtin("relu", ActivationRange.NonNegative, true,
        x => F.relu(x), u => F.relu(u), h => h.clone(), (a, f, v) => v * (a > Scalars.Zero).to_type(v.dtype),
        new Potential(z => PerExample(z * z).mul(Scalars.Half), a => PerExample(F.relu(a).Squared()).mul(Scalars.Half)));

    public static IActivation Tanh { get; } = new Builtin("tanh", new ActivationRange(-1, 1), true,
        x => x.tanh(), u => u.tanh(), h => h.clamp(Scalars.Of(-1 + 1e-6), Scalars.Of(1 - 1e-6)).atanh(), (a, f, v) => v * (f * f).Subtracted(1.0),
        new Potential(
            z => PerExample(xlogy(z.PlusInteger(1), z.PlusInteger(1)).Plus(xlogy(z.SubtractedInteger(1), z.SubtractedInteger(1))).mul(Scalars.Half)),
            a => PerExample(a.abs().Plus(Scalars.Softplus(a.abs().TimesInteger(-2))).Minus(Math.Log(2)))));

    public static IActivation Sigmoid { get; } = new Builtin("sigmoid", new ActivationRange(0, 1), true,
        x => x.sigmoid(), u => u.sigmoid(), h => h.clamp(Scalars.Of(1e-6), Scalars.Of(1 - 1e-6)).logit(), (a, f, v) => v * f * f.Subtracted(1.0),
        new Potential(z => PerExample(xlogy(z, z).Plus(xlogy(z.SubtractedInteger(1), z.SubtractedInteger(1)))), a => PerExample(Scalars.Softplus(a))));

    public static IActivation HardTanh { get; } = new Builtin("hardtanh", new ActivationRange(-1, 1), true,
        x => x.clamp(Scalars.MinusOne, Scalars.One), u => u.clamp(Scalars.MinusOne, Scalars.One), h => h.clone(), (a, f, v) => v * (a.abs() < Scalars.One).to_type(v.dtype),
        new Potential(z => PerExample(z * z).mul(Scalars.Half),
            a => PerExample(where(a.abs() <= Scalars.OfInteger(1), a.mul(Scalars.Half) * a, a.abs().Minus(0.5)))));

    public static IActivation Identity { get; } = new Builtin("identity", ActivationRange.Real, true,
        x => x.alias(), u => u.alias(), h => h.clone(), (a, f, v) => v,
        new Potential(z => PerExample(z * z).mul(Scalars.Half), a => PerExample(a * a).mul(Scalars.Half)));

    /// Softmax along the last dimension; G is the negative entropy on the simplex, G* = logsumexp.
    public static IActivation Softmax { get; } = new Builtin("softmax", new ActivationRange(0, 1), true,
        x => x.softmax(-1), u => u.softmax(-1), h => h.clamp_min(Scalars.Of(1e-12)).log(), (a, f, v) => f * (v - (f * v).sum(-1, keepdim: true)),
        new Potential(z => PerExample(xlogy(z, z)), a => PerExample(a.logsumexp(-1))));

    /// sign(x) ∈ {−1, 1}: not differentiable. G = indicator of [−1, 1], G*(a) = ‖a‖₁, ∇G* = sign.
    public static IActivation Sign { get; } = new Builtin("sign", new ActivationRange(-1, 1), false,
        x => x.sign(), u => u.clamp(Scalars.MinusOne, Scalars.One), h => h.clone(), (a, f, v) => zeros_like(v),
        new Potential(z => zeros(z.shape[0], dtype: z.dtype, device: z.device), a => PerExample(a.abs())));

    /// Heaviside step 1[x > 0] ∈ {0, 1}: not differentiable. G = indicator of [0, 1], G*(a) = Σ relu(a).
    public static IActivation Step { get; } = new Builtin("step", new ActivationRange(0, 1), false,
        x => (x > Scalars.Zero).to_type(x.dtype), u => u.clamp(Scalars.Zero, Scalars.One), h => h.clone(), (a, f, v) => zeros_like(v),
        new Potential(z => zeros(z.shape[0], dtype: z.dtype, device: z.device), a => PerExample(F.relu(a))));

    /// sign with the straight-through estimator (Bengio et al. 2013; seed 004 §4, binary nets): the
    /// same values as `Sign`, but back-propagation passes the derivative of hard-tanh, 1[|x| ≤ 1].
    public static IActivation SignSte { get; } = StraightThrough(Sign);

    /// step with the straight-through estimator: the values of `Step`, the derivative of the hard
    /// sigmoid clamp((1 + x)/2, 0, 1), i.e. ½·1[|x| ≤ 1].
    public static IActivation StepSte { get; } = StraightThrough(Step);

    public static IReadOnlyList<IActivation> All { get; } = new[] { ReLU, Tanh, Sigmoid, HardTanh, Identity, Softmax, Sign, Step, SignSte, StepSte };

    /// The straight-through version of a step-like activation σ (one that is not `Differentiable`):
    /// its values are σ(x) exactly, and its derivative is that of the surrogate
    /// s(x) = clamp(m + r·x, lo, hi) with [lo, hi] σ's range, m its midpoint and r its half-width
    /// (hard-tanh for sign, the hard sigmoid for step): the value is computed as
    /// (s(x) − s(x).detach()) + σ(x), which is σ(x) bit for bit. Backprop through it is the
    /// straight-through estimator seed 004 compares against; online alternating minimisation
    /// uses the same surrogate derivative in its code steps. A differentiable activation, an
    /// activation with an unbounded range, or one that is already straight-through is returned as is.
    public static IActivation StraightThrough(IActivation activation)
    {
        if (activation.Differentiable || activation is StraightThroughActivation) return activation;
        var range = activation.Range;
        if (double.IsInfinity(range.Lower) || double.IsInfinity(range.Upper)) return activation;
        return new StraightThroughActivation(activation);
    }

    /// True when `activation`'s derivative is zero almost everywhere (a step), whether or not
    /// back-propagation through it uses a straight-through surrogate.
    public static bool IsStep(IActivation activation) => !activation.Differentiable;

    /// Looks an activation up by name; the error lists the known names.
    public static IActivation ByName(string name) =>
        All.FirstOrDefault(a => string.Equals(a.Name, name, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"Unknown activation '{name}' (known: {string.Join(", ", All.Select(a => a.Name))}).");

    internal static Tensor PerExample(Tensor t) => t.reshape(t.shape[0], -1).sum(1);

    /// σ'(a)ᵀ v given f = σ(a): the activation's closed form (`IActivationDerivative`) or autograd.
    public static Tensor Vjp(IActivation activation, Tensor a, Tensor f, Tensor v) =>
        activation is IActivationDerivative d ? d.Vjp(a, f, v) : AutogradVjp(activation, a, v);

    /// σ'(a)ᵀ v by autograd through `activation.Apply`.
    public static Tensor AutogradVjp(IActivation activation, Tensor a, Tensor v)
    {
        using var _ = enable_grad();
        var x = a.detach().requires_grad_(true);
        return autograd.grad(new[] { activation.Apply(x) }, new[] { x }, new[] { v })[0].detach();
    }

    private sealed class Potential : IConvexPotential
    {
        private readonly Func<Tensor, Tensor> g, conjugate;
        public Potential(Func<Tensor, Tensor> g, Func<Tensor, Tensor> conjugate) { this.g = g; this.conjugate = conjugate; }
        public Tensor G(Tensor z) => g(z);
        public Tensor Conjugate(Tensor a) => conjugate(a);
    }

    private sealed class StraightThroughActivation : IActivation
    {
        private readonly IActivation step;
        private readonly double middle, halfWidth;

        public StraightThroughActivation(IActivation step)
        {
            this.step = step;
            middle = 0.5 * (step.Range.Lower + step.Range.Upper);
            halfWidth = 0.5 * (step.Range.Upper - step.Range.Lower);
        }

        public string Name => step.Name + "-ste";
        public ActivationRange Range => step.Range;
        /// Still a step: only back-propagation sees the surrogate.
        public bool Differentiable => false;
        public IConvexPotential? Potential => step.Potential;

        public Tensor Apply(Tensor x)
        {
            var exact = step.Apply(x.detach());
            if (!x.requires_grad) return exact;
            var surrogate = x.Times(halfWidth).Plus(middle).clamp(Scalars.Of(step.Range.Lower), Scalars.Of(step.Range.Upper));
            return (surrogate - surrogate.detach()).Plus(exact);
        }

        public Tensor Reparametrise(Tensor free) => step.Reparametrise(free);
        public Tensor Preimage(Tensor h) => step.Preimage(h);
        public override string ToString() => Name;
    }

    private sealed class Builtin : IActivation, IActivationDerivative
    {
        private readonly Func<Tensor, Tensor> apply, reparametrise, preimage;
        private readonly Func<Tensor, Tensor, Tensor, Tensor> vjp;

        public Builtin(string name, ActivationRange range, bool differentiable, Func<Tensor, Tensor> apply,
            Func<Tensor, Tensor> reparametrise, Func<Tensor, Tensor> preimage, Func<Tensor, Tensor, Tensor, Tensor> vjp, IConvexPotential? potential)
        {
            Name = name; Range = range; Differentiable = differentiable; Potential = potential;
            this.apply = apply; this.reparametrise = reparametrise; this.preimage = preimage; this.vjp = vjp;
        }

        public Tensor Vjp(Tensor a, Tensor f, Tensor v) => vjp(a, f, v);

        public string Name { get; }
        public ActivationRange Range { get; }
        public bool Differentiable { get; }
        public IConvexPotential? Potential { get; }
        public Tensor Apply(Tensor x) => apply(x);
        public Tensor Reparametrise(Tensor free) => reparametrise(free);
        public Tensor Preimage(Tensor h) => preimage(h);
        public override string ToString() => Name;
    }
}
