using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Solvers;

/// Step-size rules (optax-style transforms from a descent direction g to a displacement d):
///
///   constant  d = α g
///   AdaGrad   A ← A + g²,  d = α g / (√A + ε)                       (Duchi et al. 2011)
///   Adam      m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  t ← t + 1,
///             d = α (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)              (Kingma & Ba 2015)
///   momentum  b ← ρb + g,  d = α b   (heavy ball; Polyak 1964), or d = α (g + ρb) (Nesterov, in
///             the form of Sutskever et al. 2013 that PyTorch's SGD uses); b starts at zero
///
/// and transforms that compose with any of them (optax's chain):
///
///   decoupled weight decay  d ← d + α λ x   (x the variable before the step; Loshchilov & Hutter
///                           2019: AdamW, and SGDW with the momentum rules)
///   global-norm clip        g ← g · min(1, c / (‖g‖ + 10⁻⁶)),  ‖g‖² = Σ_i ‖g_i‖² over every tensor
///                           of the player, before the rule (torch.nn.utils.clip_grad_norm_)
///
/// Inside extragradient the state is updated at both half-steps, which makes AdaGrad
/// "ExtraAdagrad" (seed 001 §3.1) and Adam "ExtraAdam" (Gidel et al. 2019). For per-example
/// (row-indexed) variables, Adam's step count t is kept per row, so each example's bias
/// correction counts only the steps that example has taken.
public static class StepRules
{
    public static IStepRule Constant(double lr) => new ConstantRule(CheckRate(lr));

    /// SGD with (Nesterov) momentum ρ; the buffer b lives in the variable's step state, so a
    /// per-batch variable (seed 004's codes) starts every mini-batch from b = 0.
    public static IStepRule Momentum(double lr, double momentum, bool nesterov)
    {
        CheckRate(lr);
        if (!(momentum >= 0 && momentum < 1)) throw new ArgumentOutOfRangeException(nameof(momentum), $"Invalid momentum: {momentum} (expected 0 <= momentum < 1).");
        return new MomentumRule(lr, momentum, nesterov);
    }

    public static IStepRule AdaGrad(double lr, double initialAccumulator = 0.0, double eps = 1e-10, bool frozen = false)
    {
        CheckRate(lr);
        if (!(initialAccumulator >= 0) || double.IsInfinity(initialAccumulator))
            throw new ArgumentOutOfRangeException(nameof(initialAccumulator), $"Invalid initial accumulator: {initialAccumulator} (expected a finite value >= 0).");
        CheckEps(eps);
        return new AdaGradRule(lr, initialAccumulator, eps, frozen);
    }

    public static IStepRule Adam(double lr, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8)
    {
        CheckRate(lr);
        if (!(beta1 >= 0 && beta1 < 1)) throw new ArgumentOutOfRangeException(nameof(beta1), $"Invalid beta1: {beta1} (expected 0 <= beta1 < 1).");
        if (!(beta2 >= 0 && beta2 < 1)) throw new ArgumentOutOfRangeException(nameof(beta2), $"Invalid beta2: {beta2} (expected 0 <= beta2 < 1).");
        CheckEps(eps);
        return new AdamRule(lr, beta1, beta2, eps);
    }

    /// `inner` followed by decoupled weight decay: d = inner(g) + α λ x, with x the variable's value
    /// before the step (Loshchilov & Hutter 2019). The decay is not part of the direction, so an
    /// adaptive rule does not rescale it; AdamW is `WithDecoupledWeightDecay(Adam(α), α, λ)`. A
    /// schedule around it scales the decay too, as PyTorch's schedulers scale AdamW's α λ.
    public static IStepRule WithDecoupledWeightDecay(IStepRule inner, double lr, double decay)
    {
        CheckRate(lr);
        if (!(decay >= 0) || !double.IsFinite(decay)) throw new ArgumentOutOfRangeException(nameof(decay), $"Invalid weight decay: {decay} (expected a finite value >= 0).");
        return decay == 0 ? inner : new DecoupledWeightDecayRule(inner, lr, decay);
    }

    /// `inner` on directions clipped to global norm at most `maxNorm`: g_i ← g_i · min(1, c / (‖g‖ +
    /// 10⁻⁶)) for every tensor g_i of the player, ‖g‖ = (Σ_i ‖g_i‖²)^½, as
    /// torch.nn.utils.clip_grad_norm_ does before an optimiser step.
    public static IStepRule ClippedByGlobalNorm(IStepRule inner, double maxNorm)
    {
        if (!(maxNorm > 0) || !double.IsFinite(maxNorm)) throw new ArgumentOutOfRangeException(nameof(maxNorm), $"Invalid clip norm: {maxNorm} (expected a finite value > 0).");
        return new GlobalNormClipRule(inner, maxNorm);
    }

    private static double CheckRate(double lr) => lr > 0 && double.IsFinite(lr) ? lr
        : throw new ArgumentOutOfRangeException(nameof(lr), $"Invalid learning rate: {lr} (expected a finite value > 0).");

    private static void CheckEps(double eps)
    {
        if (!(eps > 0) || double.IsInfinity(eps)) throw new ArgumentOutOfRangeException(nameof(eps), $"Invalid eps: {eps} (expected a finite value > 0).");
    }

    private static string Show(double v) => v.ToString("G4", System.Globalization.CultureInfo.InvariantCulture);

    private sealed class DecoupledWeightDecayRule(IStepRule inner, double lr, double decay) : WrappedRule(inner)
    {
        public override string Name => $"{Inner.Name} + decoupled weight decay {Show(decay)}";
        public override Tensor Displacement(Tensor direction, StepState state) =>
            throw new InvalidOperationException($"{Name} reads the variable: call Displacement(direction, state, variable).");
        public override Tensor Displacement(Tensor direction, StepState state, Tensor variable) =>
            Inner.Displacement(direction, state, variable).add(variable, Scalars.Of(lr * decay));
    }

    private sealed class GlobalNormClipRule(IStepRule inner, double maxNorm) : WrappedRule(inner)
    {
        public override string Name => $"clip(‖g‖ ≤ {Show(maxNorm)}) then {Inner.Name}";
        public override bool CouplesVariables => true;

        public override IReadOnlyList<Tensor> Directions(IReadOnlyList<Tensor> directions)
        {
            // Each tensor's squared norm, summed on the host (clip_grad_norm_ takes the norm of the
            // tensors' norms: the same number up to rounding).
            double squares = 0;
            foreach (var d in directions)
            {
                using var square = d.mul(d);
                using var sum = square.sum();
                squares += sum.ToDouble();
            }
            var coefficient = maxNorm / (Math.Sqrt(squares) + 1e-6);
            if (!(coefficient < 1)) return Inner.Directions(directions);
            using var scale = coefficient.ToScalar(); // changes every step: held for the call, not cached
            return Inner.Directions(directions.Select(d => d.mul(scale)).ToArray());
        }
    }

    private sealed class ConstantRule : IStepRule
    {
        private readonly double lr;
        public ConstantRule(double lr) => this.lr = lr;
        public string Name => $"constant(lr={Show(lr)})";
        public StepState Init(Tensor variable, bool rowIndexed) => new(Array.Empty<Tensor>());
        public Tensor Displacement(Tensor direction, StepState state) => direction.mul(Scalars.Of(lr));
    }

    private sealed class MomentumRule : IStepRule
    {
        private readonly double lr, momentum;
        private readonly bool nesterov;
        public MomentumRule(double lr, double momentum, bool nesterov) { this.lr = lr; this.momentum = momentum; this.nesterov = nesterov; }
        public string Name => $"{(nesterov ? "nesterov" : "momentum")}(lr={Show(lr)}, ρ={Show(momentum)})";

        public StepState Init(Tensor variable, bool rowIndexed)
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            return new StepState(new[] { zeros_like(variable).DetachFromDisposeScope() });
        }

        public Tensor Displacement(Tensor direction, StepState state)
        {
            var buffer = state.Slots[0].mul_(Scalars.Of(momentum)).add_(direction, Scalars.IntOne);
            return nesterov ? direction.add(buffer, Scalars.Of(momentum)).mul_(Scalars.Of(lr)) : buffer.mul(Scalars.Of(lr));
        }
    }

    private sealed class AdaGradRule : IStepRule
    {
        private readonly double lr, initial, eps;
        private readonly bool frozen;
        public AdaGradRule(double lr, double initial, double eps, bool frozen) { this.lr = lr; this.initial = initial; this.eps = eps; this.frozen = frozen; }
        public string Name => $"adagrad(lr={Show(lr)}{(frozen ? ", frozen" : "")})";

        public StepState Init(Tensor variable, bool rowIndexed)
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            return new StepState(new[] { full_like(variable, Scalars.Of(initial)).DetachFromDisposeScope() },
                workspace: rowIndexed ? null : new[] { empty_like(variable).DetachFromDisposeScope(), empty_like(variable).DetachFromDisposeScope() });
        }

        public Tensor Displacement(Tensor direction, StepState state)
        {
            var accumulator = state.Slots[0];
            if (!frozen) accumulator.addcmul_(direction, direction, value: Scalars.IntOne);
            if (state.Workspace.Count == 2 && state.Workspace[0].shape.SequenceEqual(direction.shape))
            {
                // The same operations as below, into the variable's scratch tensors.
                var denominator = state.Workspace[0].copy_(accumulator).sqrt_().add_(Scalars.Of(eps), Scalars.IntOne);
                return state.Workspace[1].copy_(direction).mul_(Scalars.Of(lr)).div_(denominator);
            }
            return direction.mul(Scalars.Of(lr)).div_(accumulator.sqrt().add_(Scalars.Of(eps), Scalars.IntOne));
        }
    }

    private sealed class AdamRule : IStepRule
    {
        private readonly double lr, beta1, beta2, eps;
        public AdamRule(double lr, double beta1, double beta2, double eps) { this.lr = lr; this.beta1 = beta1; this.beta2 = beta2; this.eps = eps; }
        public string Name => $"adam(lr={Show(lr)}, β=({Show(beta1)}, {Show(beta2)}))";

        public StepState Init(Tensor variable, bool rowIndexed)
        {
            using var _ = no_grad();
            // The count broadcasts against the variable: one per row, or a single one.
            var countShape = rowIndexed
                ? new[] { variable.shape[0] }.Concat(Enumerable.Repeat(1L, variable.shape.Length - 1)).ToArray()
                : Array.Empty<long>();
            using var scope = NewDisposeScope();
            return new StepState(new[]
            {
                zeros_like(variable).DetachFromDisposeScope(),
                zeros_like(variable).DetachFromDisposeScope(),
                zeros(countShape, dtype: variable.dtype, device: variable.device).DetachFromDisposeScope(),
            }, workspace: rowIndexed ? null : new[] { empty_like(variable).DetachFromDisposeScope(), empty_like(variable).DetachFromDisposeScope() });
        }

        /// The step count of a single-count state, kept on the host: read from the count tensor
        /// once (0 for a new run, the saved count after a resume), then counted here.
        private sealed class Count { public double Steps; }

        public Tensor Displacement(Tensor direction, StepState state)
        {
            Tensor m = state.Slots[0], v = state.Slots[1], t = state.Slots[2];
            // lerp_ has no Scalar overload: the weight is a 0-d tensor (TorchSharp's implicit
            // conversion), created in the caller's dispose scope, as before.
            m.lerp_(direction, 1 - beta1);
            v.mul_(Scalars.Of(beta2)).addcmul_(direction, direction, value: Scalars.Of(1 - beta2));
            if (t.NumberOfElements == 1)
            {
                // One count for the whole variable: the bias corrections are plain numbers, from
                // the count on the host (the tensor still counts, for checkpoints).
                var count = state.Host as Count;
                if (count is null) state.Host = count = new Count { Steps = t.ToDouble() };
                t.add_(Scalars.IntOne, Scalars.IntOne);
                var steps = ++count.Steps;
                var c1 = 1 - Math.Pow(beta1, steps);
                var c2 = 1 - Math.Pow(beta2, steps);
                // Values that change at every step: held for the call, not cached.
                using var root = Math.Sqrt(c2).ToScalar();
                using var size = (lr / c1).ToScalar();
                if (state.Workspace.Count == 2 && state.Workspace[0].shape.SequenceEqual(v.shape))
                {
                    // v.sqrt().div_(√c2).add_(ε) and m.div(that).mul_(α/c1), into the scratch tensors.
                    var scratch = state.Workspace[0].copy_(v).sqrt_().div_(root).add_(Scalars.Of(eps), Scalars.IntOne);
                    return state.Workspace[1].copy_(m).div_(scratch).mul_(size);
                }
                var denominator = v.sqrt().div_(root).add_(Scalars.Of(eps), Scalars.IntOne);
                return m.div(denominator).mul_(size);
            }
            t.add_(Scalars.IntOne, Scalars.IntOne);
            // Per-row counts: β^t via exp(t ln β), broadcast over each row (1 − x as TorchSharp's
            // `1 - x` computes it: −x + 1).
            var mHat = m.div(t.mul(Scalars.Of(Math.Log(beta1))).exp_().neg_().add_(Scalars.IntOne, Scalars.IntOne));
            var vHat = v.div(t.mul(Scalars.Of(Math.Log(beta2))).exp_().neg_().add_(Scalars.IntOne, Scalars.IntOne));
            return mHat.div_(vHat.sqrt_().add_(Scalars.Of(eps), Scalars.IntOne)).mul_(Scalars.Of(lr));
        }
    }
}

/// A step rule whose size follows the training schedule: the trainer calls `Advance` at the start
/// of every epoch.
public interface IScheduledStepRule : IStepRule
{
    void Advance(int epoch, int epochs);

    /// True while the schedule's factor is zero: the player does not move, so the trainer holds it
    /// fixed (the solver then works on the other players only, and games may reuse work).
    bool Holding { get; }
}

/// Schedules over epochs, as transforms of another step rule (optax's scale_by_schedule).
public static class Schedules
{
    /// d ← s(e)·d with s(e) = ½(1 + cos(π (e − 1) / A)) over the first A epochs, full steps in the
    /// first epoch decaying to almost nothing, and s(e) = 0 after them: the last `settle` fraction
    /// of the E epochs (A = E − round(settle·E)) keeps the variables of this rule fixed while the
    /// others settle (for the lifted methods: the per-example states and multipliers converge for
    /// the final weights). The wrapped rule's state advances as usual.
    public static IScheduledStepRule Cosine(IStepRule inner, double settle = 0.0)
    {
        CheckSettle(settle);
        return new EpochScaledRule(inner, (epoch, epochs) =>
        {
            int active = ActiveEpochs(epochs, settle);
            return epoch > active ? 0.0 : 0.5 * (1 + Math.Cos(Math.PI * (epoch - 1) / active));
        }, name => settle > 0 ? $"cosine({name}, settle={settle:G3})" : $"cosine({name})");
    }

    /// d ← d for the first E − round(settle·E) epochs and d ← scale·d in the last round(settle·E),
    /// the epochs in which `Cosine(…, settle)` holds the weights: e.g. a smaller state step and a
    /// larger multiplier step while the per-example rows settle (docs/methods.md).
    public static IScheduledStepRule Settling(IStepRule inner, double settle, double scale)
    {
        CheckSettle(settle);
        if (!(scale >= 0) || double.IsInfinity(scale)) throw new ArgumentOutOfRangeException(nameof(scale), $"Invalid settling scale: {scale} (expected a finite value >= 0; 0 holds the variables).");
        return new EpochScaledRule(inner, (epoch, epochs) => epoch > ActiveEpochs(epochs, settle) ? scale : 1.0,
            name => scale == 0 ? $"{name}, held while settling" : $"{name}, ×{scale:G3} while settling");
    }

    /// d ← γ^⌊(e − 1)/k⌋ · d in epoch e (1-based): the step multiplied by γ every k epochs
    /// (PyTorch's StepLR stepped once per epoch).
    public static IScheduledStepRule StepDecay(IStepRule inner, int every, double factor)
    {
        if (every < 1) throw new ArgumentOutOfRangeException(nameof(every), $"Invalid decay period: {every} epochs (expected >= 1).");
        if (!(factor > 0 && factor <= 1)) throw new ArgumentOutOfRangeException(nameof(factor), $"Invalid decay factor: {factor} (expected 0 < factor <= 1).");
        return new EpochScaledRule(inner, (e, _) => Math.Pow(factor, (e - 1) / every), name => $"{name}, ×{factor:G3} every {every} epoch(s)");
    }

    /// d ← e/(W + 1) · d in the first W epochs (e = 1 … W), then d: a linear warm-up over epochs
    /// whose first epoch takes 1/(W + 1) of the step. It multiplies whatever schedule it wraps.
    public static IScheduledStepRule Warmup(IStepRule inner, int epochs)
    {
        if (epochs < 1) throw new ArgumentOutOfRangeException(nameof(epochs), $"Invalid warm-up: {epochs} epochs (expected >= 1).");
        return new EpochScaledRule(inner, (e, _) => e <= epochs ? (double)e / (epochs + 1) : 1.0, name => $"{name}, warm-up over {epochs} epoch(s)");
    }

    private static double CheckSettle(double settle) => settle >= 0 && settle < 1 ? settle
        : throw new ArgumentOutOfRangeException(nameof(settle), $"Invalid settle fraction: {settle} (expected 0 <= settle < 1).");

    /// The number of epochs before the settling ones.
    internal static int ActiveEpochs(int epochs, double settle) => Math.Max(1, epochs - (int)Math.Round(settle * epochs));

    /// d ← s(e, E)·d for a factor of the epoch e of E that `Advance` sets; the step is untouched
    /// while the factor is 1.
    private sealed class EpochScaledRule(IStepRule inner, Func<int, int, double> schedule, Func<string, string> name) : WrappedRule(inner)
    {
        private double factor = 1.0;
        public override string Name => name(Inner.Name);
        public override void Advance(int epoch, int epochs)
        {
            factor = schedule(epoch, epochs);
            base.Advance(epoch, epochs);
        }
        public override bool Holding => factor == 0 || base.Holding;
        public override Tensor Displacement(Tensor direction, StepState state) => Scaled(Inner.Displacement(direction, state));
        public override Tensor Displacement(Tensor direction, StepState state, Tensor variable) => Scaled(Inner.Displacement(direction, state, variable));

        private Tensor Scaled(Tensor displacement)
        {
            if (factor == 1.0) return displacement;
            using var scale = factor.ToScalar(); // changes with the epoch: held for the call, not cached
            return displacement.mul(scale);
        }
    }
}

/// A step rule around another that passes every call on to it unless it overrides the call:
/// the inner rule's state, directions and displacement, and its schedule (the trainer advances
/// the outermost rule only, so each wrapper hands the epoch inwards).
internal abstract class WrappedRule(IStepRule inner) : IScheduledStepRule
{
    protected IStepRule Inner { get; } = inner;
    public abstract string Name { get; }
    public virtual StepState Init(Tensor variable, bool rowIndexed) => Inner.Init(variable, rowIndexed);
    public virtual Tensor Displacement(Tensor direction, StepState state) => Inner.Displacement(direction, state);
    public virtual Tensor Displacement(Tensor direction, StepState state, Tensor variable) => Inner.Displacement(direction, state, variable);
    public virtual IReadOnlyList<Tensor> Directions(IReadOnlyList<Tensor> directions) => Inner.Directions(directions);
    public virtual bool CouplesVariables => Inner.CouplesVariables;
    public virtual void Advance(int epoch, int epochs) => (Inner as IScheduledStepRule)?.Advance(epoch, epochs);
    public virtual bool Holding => Inner is IScheduledStepRule { Holding: true };
}
