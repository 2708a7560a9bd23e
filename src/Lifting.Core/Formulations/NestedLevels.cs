using Lifting.Programs;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Formulations;

/// One nesting level of a program as inference-learning formulations see it (seed 002 eq. 21): the
/// segment of lifted value k computes z_k = σ_k(a_k) with a_k = A_k(inputs of k; θ_k), σ_k the
/// segment's trailing activation (identity when it has none) and A_k the nodes before it
/// (`Segment.Map`). For a chain, level k is block k and its only input is z_{k−1}.
///
/// When every node of A_k declares its local derivatives (`ILocalDerivatives`: the builder's dense,
/// flatten, activation and add layers), the products (∂a/∂z)ᵀv and ∂⟨v, a⟩/∂θ are closed-form
/// sweeps (for one dense layer, v W and vᵀ z) that need no autograd graph; any other segment
/// (convolutions, custom layers without the declaration) is differentiated by autograd, one local
/// vector–Jacobian product at a time.
internal sealed class Level
{
    private readonly bool autograd;
    private readonly Node? dense;

    public Level(Segment segment, bool autograd)
    {
        Segment = segment;
        this.autograd = autograd;
        Activation = segment.OutputActivation ?? Activations.Identity;
        ClosedFormMap = !autograd && segment.Map.ClosedForm;
        ClosedFormActivation = !autograd && Activation is IActivationDerivative;
        // A_k = one fully connected layer after reshapes: its spectral norm bounds ‖∂a/∂z‖.
        var nodes = segment.Map.Nodes;
        if (nodes.Count > 0 && nodes[^1].FullyConnected is not null && nodes.Take(nodes.Count - 1).All(n => n.Layer is Flatten)
            && segment.Inputs.Count == 1)
            dense = nodes[^1];
        Lifted = segment.InputSegments.Select(s => s >= 0).ToArray();
    }

    public Segment Segment { get; }
    public int Block => Segment.Index;
    public IActivation Activation { get; }
    /// True when A_k's local derivatives are closed form.
    public bool ClosedFormMap { get; }
    public bool ClosedFormActivation { get; }
    /// For each input, whether it is a lifted value (a level's activation) rather than the data.
    public IReadOnlyList<bool> Lifted { get; }

    /// The activation's convex potential, required by Fenchel couplings.
    public IConvexPotential Potential => Activation.Potential
        ?? throw new ArgumentException($"Block {Block + 1}'s activation '{Activation.Name}' has no convex potential G (needed for a Fenchel coupling).");

    /// a_k = A_k(inputs; θ), given every parameter of the program.
    public Tensor PreActivation(Tensor[] inputs, IReadOnlyList<Tensor> w, ForwardPass? pass) => Segment.Map.Forward(inputs, w, pass);

    /// (∂a_k/∂input_i)ᵀ v for every lifted input i (null for the data).
    public Tensor?[] InputVjps(Tensor[] inputs, Tensor v, IReadOnlyList<Tensor> w, ForwardPass? pass) => Segment.Map.InputVjps(inputs, v, w, Lifted, pass, autograd: !ClosedFormMap);

    /// into += scale · ∂⟨v, A_k(inputs; θ)⟩/∂θ, summed over the batch (`into` holds every parameter).
    public void AddWeightGradient(Tensor[] inputs, Tensor v, IReadOnlyList<Tensor> w, IReadOnlyList<Tensor> into, double scale, ForwardPass? pass) =>
        Segment.Map.AddParameterVjp(inputs, v, w, into, scale, pass, autograd: !ClosedFormMap);

    /// ‖W‖₂² of the dense layer by power iteration from a fixed start (‖∂a/∂z‖², approached from
    /// below); 0 when A_k is not one dense layer (no estimate: such levels are not preconditioned).
    public double SquaredSpectralNorm(IReadOnlyList<Tensor> w, int iterations = 8)
    {
        if (dense is null) return 0;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var weight = w[dense.Parameters[0]];
        using var start = Math.Sqrt(weight.shape[1]).ToScalar();
        var v = ones(weight.shape[1], dtype: weight.dtype, device: weight.device) / start;
        double norm = 0;
        for (int i = 0; i < iterations; i++)
        {
            var u = weight.mv(v);
            var back = weight.t().mv(u);
            norm = back.norm().ToDouble(); // ‖WᵀW v‖ → σ_max² for a unit v
            if (norm == 0) return 0;
            using var scale = norm.ToScalar();
            v = back / scale;
        }
        return norm;
    }

    /// ‖∂a_k/∂input_slot‖₂² at `inputs`, the curvature input `slot`'s level feels from this one: the
    /// dense layer's ‖W‖₂² (`SquaredSpectralNorm`) when A_k is one; on a graph, for any other map (a
    /// residual block, a recurrent step), by power iteration on JᵀJ over the whole batch (so the
    /// largest example's), J v by central differences and Jᵀu by the local products; on a chain's
    /// other blocks 0, as the chains' results were measured (docs/methods.md).
    public double SquaredJacobianNorm(Tensor[] inputs, int slot, IReadOnlyList<Tensor> w, ForwardPass? pass, int iterations = 6)
    {
        if (dense is not null) return SquaredSpectralNorm(w);
        if (Segment.Program.IsChain) return 0;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var wanted = Lifted.Select((_, i) => i == slot).ToArray();
        var x = inputs[slot];
        var output = Segment.Map.Forward(inputs, w, pass);
        var start = Segment.Map.InputVjps(inputs, ones_like(output), w, wanted, pass)[slot]!;
        var norm = start.norm().ToDouble();
        if (!(norm > 0)) return 0;
        using var first = norm.ToScalar();
        var v = start / first;
        using var epsilon = (1e-3 * Math.Max(x.norm().ToDouble(), 1e-3)).ToScalar();
        using var twice = (2e-3 * Math.Max(x.norm().ToDouble(), 1e-3)).ToScalar();
        double estimate = 0;
        for (int i = 0; i < iterations; i++)
        {
            var plus = (Tensor[])inputs.Clone();
            var minus = (Tensor[])inputs.Clone();
            plus[slot] = x.Plus(v * epsilon);
            minus[slot] = x - v * epsilon;
            var jv = (Segment.Map.Forward(plus, w, pass) - Segment.Map.Forward(minus, w, pass)) / twice;
            var back = Segment.Map.InputVjps(inputs, jv, w, wanted, pass)[slot]!;
            estimate = back.norm().ToDouble(); // ‖JᵀJ v‖ → σ_max² for a unit v
            if (!(estimate > 0)) return 0;
            using var scale = estimate.ToScalar();
            v = back / scale;
        }
        return estimate;
    }

    /// σ'(a)ᵀ v, given f = σ(a).
    public Tensor ActivationVjp(Tensor a, Tensor f, Tensor v) =>
        ClosedFormActivation ? ((IActivationDerivative)Activation).Vjp(a, f, v) : Activations.AutogradVjp(Activation, a, v);
}

/// Closed-form gradients of the built-in losses, with autograd for any other.
internal static class LocalGradients
{
    /// ∂ℓ(output_i, y_i)/∂output_i for every example: softmax(o) − onehot(y) for cross-entropy,
    /// o − onehot(y) for the squared error, autograd for any other loss.
    public static Tensor LossGradient(ILoss loss, Tensor output, Tensor labels)
    {
        if (loss == Losses.CrossEntropy) return output.softmax(-1) - F.one_hot(labels, output.shape[^1]).to_type(output.dtype);
        if (loss == Losses.Mse) return output - F.one_hot(labels, output.shape[^1]).to_type(output.dtype);
        using var _ = enable_grad();
        var o = output.detach().requires_grad_(true);
        return autograd.grad(new[] { loss.PerExample(o, labels).sum() }, new[] { o })[0].detach();
    }
}

/// The energy of a nested program over per-batch activations, level by level (seed 002 §3):
/// Σ_k ω_k E_k(z_k, inputs of k) with the data as the input of the first level, plus the outer loss
/// on the output level applied by the surrogate. A level that reads only the data has its
/// pre-activation A_k(x) computed once per batch and reused until the weights change. Subclasses
/// define E_k, the variables (z_k itself, or its dual coordinate u_k with z_k = σ_k(u_k)) and the
/// local gradients.
///
/// On a graph a level's activation may feed several levels (fan-out): its direction sums the
/// couplings of all its consumers. Level k feels consumer s with strength ω_s/ω_k = Π_{j=k}^{s−1} β_j
/// (`Coupling`), which for a chain is β_k.
internal abstract class LevelEnergy : IContrastiveEnergy
{
    private readonly Tensor?[] cachedPreActivations;
    private double[]? curvatures;
    private readonly bool precondition;

    protected LevelEnergy(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, IReadOnlyList<double> spacings, bool autograd, bool precondition)
    {
        this.precondition = precondition;
        Program = program;
        Weights = weights;
        Inputs = inputs;
        Levels = program.Segments.Select(s => new Level(s, autograd)).ToArray();
        Spacings = spacings;
        LevelWeights = ContrastiveOptions.LevelWeights(spacings);
        cachedPreActivations = new Tensor?[Levels.Count];
    }

    public NestedProgram Program { get; }
    public IReadOnlyList<Tensor> Weights { get; }
    public Tensor Inputs { get; }
    /// The step's forward pass (batch normalisation, dropout; null for other programs); owned.
    public ForwardPass? Pass { get; init; }
    public IReadOnlyList<Level> Levels { get; }
    /// β_1 … β_L: level k feels level k+1 with strength β_k.
    public IReadOnlyList<double> Spacings { get; }
    /// ω_1 … ω_L.
    public IReadOnlyList<double> LevelWeights { get; }
    public int Count => Levels.Count;

    /// ω_s/ω_k = Π_{j=k}^{s−1} β_j: how strongly level k feels its consumer s.
    public double Coupling(int k, int s)
    {
        double c = Spacings[k];
        for (int j = k + 1; j < s; j++) c *= Spacings[j];
        return c;
    }

    /// The values level k reads: the data, or the activations `z` of its input levels.
    public Tensor[] Below(IReadOnlyList<Tensor> z, int k) => Levels[k].Segment.InputsFrom(Inputs, z);

    /// a_k from its inputs (`Below`).
    public Tensor PreActivation(int k, Tensor[] below)
    {
        if (!Levels[k].Segment.ReadsOnlyInput) return Levels[k].PreActivation(below, Weights, Pass);
        return cachedPreActivations[k] ??= Levels[k].PreActivation(below, Weights, Pass).detach().DetachFromDisposeScope();
    }

    /// The forward pass: a_k and z_k = σ_k(a_k) for every level.
    public (Tensor[] PreActivations, Tensor[] Activations) ForwardPass()
    {
        var a = new Tensor[Count];
        var z = new Tensor[Count];
        for (int k = 0; k < Count; k++)
        {
            a[k] = PreActivation(k, Below(z, k));
            z[k] = Levels[k].Activation.Apply(a[k]);
        }
        return (a, z);
    }

    /// For every level s with lifted inputs, (∂a_s/∂z_k)ᵀ v_s for each of its input levels k, added
    /// into `into[k]` with coefficient `coefficient(k, s)`. All products are taken before any is
    /// added, so `into` may alias the `v`s.
    protected void AddInputProducts(IReadOnlyList<Tensor> z, Func<int, Tensor?> v, Tensor[] into, Func<int, int, double> coefficient)
    {
        var products = new (int Level, Tensor?[] Vjps)[Count];
        int n = 0;
        for (int s = 0; s < Count; s++)
        {
            if (!Levels[s].Lifted.Any(b => b)) continue;
            var vs = v(s);
            if (vs is null) continue;
            products[n++] = (s, Levels[s].InputVjps(Below(z, s), vs, Weights, Pass));
        }
        for (int i = 0; i < n; i++)
        {
            var (s, vjps) = products[i];
            var sources = Levels[s].Segment.InputSegments;
            for (int j = 0; j < vjps.Length; j++)
                if (vjps[j] is { } product) into[sources[j]].add_(product, alpha: Scalars.Of(coefficient(sources[j], s)));
        }
    }

    /// Divides each level's direction by a bound on its own curvature, c_k = 1 + Σ_s β_{k→s} ‖J_s‖₂²
    /// over its consumers s, J_s = ∂a_s/∂z_k (‖W_s‖₂² for a dense layer; estimated at the variables
    /// `z` of the first call of a batch for any other map of a graph; see `SquaredJacobianNorm`),
    /// activations' slopes taken as at most 1, and c_L = 1 + β_L (the loss's curvature taken as at
    /// most 1): a level-wise (block Jacobi) preconditioner. The solution is unchanged; a step size
    /// near 1 stays stable as the weights grow during training, where plain steps must shrink with
    /// 1/‖W‖², and on residual and recurrent graphs, whose maps' Jacobians are I + … .
    protected IReadOnlyList<Tensor> Preconditioned(Tensor[] d, IReadOnlyList<Tensor> z)
    {
        if (!precondition) return d;
        curvatures ??= Enumerable.Range(0, Count).Select(k =>
        {
            if (k == Count - 1) return 1 + Spacings[k];
            double c = 1;
            foreach (var s in Levels[k].Segment.Consumers)
            {
                var slot = Levels[s].Segment.InputSegments.ToList().IndexOf(k);
                c += Coupling(k, s) * Levels[s].SquaredJacobianNorm(Below(z, s), slot, Weights, Pass);
            }
            return c;
        }).ToArray();
        for (int k = 0; k < Count; k++)
        {
            using var c = curvatures[k].ToScalar(); // changes with the weights: held for the call, not cached
            d[k].div_(c);
        }
        return d;
    }

    public abstract IReadOnlyList<Tensor> Start();
    public abstract bool StartIsFreeSolution { get; }
    /// The penaliser and the Fenchel–Young gap are 0 at the forward pass.
    public bool VanishesAtFreeSolution => StartIsFreeSolution;
    public abstract Tensor Output(IReadOnlyList<Tensor> variables);
    public abstract IReadOnlyList<Tensor> Directions(IReadOnlyList<Tensor> variables, Tensor? pull);
    public abstract void AddWeightGradient(IReadOnlyList<Tensor> variables, double coefficient, IReadOnlyList<Tensor> into);
    public abstract Tensor Energy(IReadOnlyList<Tensor> variables);

    public void WeightsChanged()
    {
        for (int k = 0; k < cachedPreActivations.Length; k++)
        {
            cachedPreActivations[k]?.Dispose();
            cachedPreActivations[k] = null;
        }
        curvatures = null;
    }

    public void Dispose()
    {
        WeightsChanged();
        Pass?.Dispose();
    }
}
