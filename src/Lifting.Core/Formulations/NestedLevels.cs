using Lifting.Programs;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Formulations;

/// One nesting level of a program as inference-learning formulations see it (seed 002 eq. 21):
/// block k computes z_k = σ_k(a_k) with a_k = A_k(z_{k−1}; θ_k), σ_k the block's trailing
/// activation (identity when it has none) and A_k the layers before it.
///
/// For the builder's blocks — parameter-free reshapes, one Dense layer, an optional built-in
/// activation — every local gradient has a closed form (a_k = W flat(z_{k−1}) + b, so
/// (∂a/∂z)ᵀv = vW and ∂⟨v, a⟩/∂W = vᵀ flat(z_{k−1})) and needs no autograd graph. Any other block
/// (convolutions, custom layers and activations) is differentiated by autograd, one local
/// vector-Jacobian product at a time.
internal sealed class Level
{
    private readonly ILayer[] pre;
    private readonly bool dense, affine;

    public Level(NestedProgram program, int block, bool autograd)
    {
        Block = block;
        var layers = program.Blocks[block].Layers;
        var trailing = layers[^1] as ActivationLayer;
        Activation = trailing?.Activation ?? Activations.Identity;
        pre = (trailing is null ? layers : layers.Take(layers.Count - 1)).ToArray();
        dense = pre.Length > 0 && pre[^1] is Dense && pre.Take(pre.Length - 1).All(l => l is Flatten);
        affine = !autograd && dense;
        ClosedFormActivation = !autograd && LocalGradients.HasClosedForm(Activation);
        InputShape = program.Blocks[block].InputShape;
    }

    public int Block { get; }
    public IActivation Activation { get; }
    public long[] InputShape { get; }
    /// True when A_k is one dense layer after reshapes (closed-form local gradients).
    public bool ClosedFormMap => affine;
    public bool ClosedFormActivation { get; }

    /// The activation's convex potential, required by Fenchel couplings.
    public IConvexPotential Potential => Activation.Potential
        ?? throw new ArgumentException($"Block {Block + 1}'s activation '{Activation.Name}' has no convex potential G (needed for a Fenchel coupling).");

    /// a_k = A_k(input; θ_k), given the block's own parameters.
    public Tensor PreActivation(Tensor input, IReadOnlyList<Tensor> w)
    {
        if (affine) return F.linear(input.reshape(input.shape[0], -1), w[0], w[1]);
        var h = input;
        int offset = 0;
        foreach (var layer in pre)
        {
            var count = layer.Parameters.Count;
            h = layer.Forward(h, w.Skip(offset).Take(count).ToArray());
            offset += count;
        }
        return h;
    }

    /// (∂a_k/∂input)ᵀ v, shaped like the input.
    public Tensor InputVjp(Tensor input, Tensor v, IReadOnlyList<Tensor> w)
    {
        if (affine) return v.mm(w[0]).reshape(input.shape);
        using var _ = enable_grad();
        var x = input.detach().requires_grad_(true);
        var a = PreActivation(x, w);
        return autograd.grad(new[] { a }, new[] { x }, new[] { v })[0].detach();
    }

    /// into += scale · ∂⟨v, A_k(input; θ_k)⟩/∂θ_k, summed over the batch (`into` is the block's slice).
    public void AddWeightGradient(Tensor input, Tensor v, IReadOnlyList<Tensor> w, IReadOnlyList<Tensor> into, double scale)
    {
        if (affine)
        {
            into[0].add_(v.t().mm(input.reshape(input.shape[0], -1)), alpha: scale);
            into[1].add_(v.sum(0, keepdim: false), alpha: scale);
            return;
        }
        var trainable = Enumerable.Range(0, w.Count).Where(i => w[i].requires_grad).ToArray();
        if (trainable.Length == 0) return;
        Tensor[] grads;
        using (enable_grad())
        {
            var a = PreActivation(input.detach(), w);
            grads = autograd.grad(new[] { (a * v).sum() }, trainable.Select(i => w[i]).ToArray(), allow_unused: true).ToArray();
        }
        for (int j = 0; j < trainable.Length; j++)
            if (grads[j] is not null && !grads[j].IsInvalid) into[trainable[j]].add_(grads[j].detach(), alpha: scale);
    }

    /// ‖W‖₂² of the dense layer by power iteration from a fixed start (‖∂a/∂z‖², approached from
    /// below); 0 when A_k is not one dense layer (no estimate: such levels are not preconditioned).
    public double SquaredSpectralNorm(IReadOnlyList<Tensor> w, int iterations = 8)
    {
        if (!dense) return 0;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var weight = w[0];
        var v = ones(weight.shape[1], dtype: weight.dtype, device: weight.device) / Math.Sqrt(weight.shape[1]);
        double norm = 0;
        for (int i = 0; i < iterations; i++)
        {
            var u = weight.mv(v);
            var back = weight.t().mv(u);
            norm = back.norm().ToDouble(); // ‖WᵀW v‖ → σ_max² for a unit v
            if (norm == 0) return 0;
            v = back / norm;
        }
        return norm;
    }

    /// σ'(a)ᵀ v, given f = σ(a).
    public Tensor ActivationVjp(Tensor a, Tensor f, Tensor v) =>
        ClosedFormActivation ? LocalGradients.ActivationVjp(Activation, a, f, v) : LocalGradients.AutogradVjp(Activation, a, v);
}

/// Closed-form local derivatives of the built-in activations and losses, with autograd for any other.
internal static class LocalGradients
{
    public static bool HasClosedForm(IActivation activation) =>
        activation == Activations.ReLU || activation == Activations.Tanh || activation == Activations.Sigmoid
        || activation == Activations.HardTanh || activation == Activations.Identity || activation == Activations.Softmax
        || activation == Activations.Sign || activation == Activations.Step;

    /// σ'(a)ᵀ v for a built-in activation, f = σ(a).
    public static Tensor ActivationVjp(IActivation activation, Tensor a, Tensor f, Tensor v)
    {
        if (activation == Activations.Identity) return v;
        if (activation == Activations.ReLU) return v * (a > 0).to_type(v.dtype);
        if (activation == Activations.Tanh) return v * (1 - f * f);
        if (activation == Activations.Sigmoid) return v * f * (1 - f);
        if (activation == Activations.HardTanh) return v * (a.abs() < 1).to_type(v.dtype);
        if (activation == Activations.Softmax) return f * (v - (f * v).sum(-1, keepdim: true));
        if (activation == Activations.Sign || activation == Activations.Step) return zeros_like(v);
        return AutogradVjp(activation, a, v);
    }

    public static Tensor AutogradVjp(IActivation activation, Tensor a, Tensor v)
    {
        using var _ = enable_grad();
        var x = a.detach().requires_grad_(true);
        return autograd.grad(new[] { activation.Apply(x) }, new[] { x }, new[] { v })[0].detach();
    }

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
/// Σ_k ω_k E_k(z_k, z_{k−1}) with z_0 = x, plus the outer loss on z_L applied by the surrogate. The
/// first level's input is the data, so its pre-activation a_1 = A_1(x) is computed once per batch
/// and reused until the weights change. Subclasses define E_k, the variables (z_k itself, or its
/// dual coordinate u_k with z_k = σ_k(u_k)) and the local gradients.
internal abstract class LevelEnergy : IContrastiveEnergy
{
    private Tensor? firstPreActivation;
    private double[]? curvatures;
    private readonly bool precondition;

    protected LevelEnergy(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, IReadOnlyList<double> spacings, bool autograd, bool precondition)
    {
        this.precondition = precondition;
        Program = program;
        Weights = weights;
        Inputs = inputs;
        Levels = Enumerable.Range(0, program.Blocks.Count).Select(b => new Level(program, b, autograd)).ToArray();
        Spacings = spacings;
        LevelWeights = ContrastiveOptions.LevelWeights(spacings);
    }

    public NestedProgram Program { get; }
    public IReadOnlyList<Tensor> Weights { get; }
    public Tensor Inputs { get; }
    public IReadOnlyList<Level> Levels { get; }
    /// β_1 … β_L: level k feels level k+1 with strength β_k.
    public IReadOnlyList<double> Spacings { get; }
    /// ω_1 … ω_L.
    public IReadOnlyList<double> LevelWeights { get; }
    public int Count => Levels.Count;

    public IReadOnlyList<Tensor> BlockWeights(int k) => Program.BlockWeights(Weights, k);

    /// The slice of a flat per-parameter list that belongs to block k.
    public IReadOnlyList<Tensor> BlockSlice(IReadOnlyList<Tensor> all, int k)
    {
        var (start, length) = Program.BlockParameters(k).GetOffsetAndLength(all.Count);
        return all.Skip(start).Take(length).ToArray();
    }

    /// a_k from the level below's activation (z_{k−1}, or x for the first level).
    public Tensor PreActivation(int k, Tensor below)
    {
        if (k > 0) return Levels[k].PreActivation(below, BlockWeights(k));
        if (firstPreActivation is null)
            firstPreActivation = Levels[0].PreActivation(Inputs, BlockWeights(0)).detach().DetachFromDisposeScope();
        return firstPreActivation;
    }

    /// The forward pass: a_k and z_k = σ_k(a_k) for every level.
    public (Tensor[] PreActivations, Tensor[] Activations) ForwardPass()
    {
        var a = new Tensor[Count];
        var z = new Tensor[Count];
        var below = Inputs;
        for (int k = 0; k < Count; k++)
        {
            a[k] = PreActivation(k, below);
            below = z[k] = Levels[k].Activation.Apply(a[k]);
        }
        return (a, z);
    }

    public Tensor Below(IReadOnlyList<Tensor> z, int k) => k == 0 ? Inputs : z[k - 1];

    /// Divides each level's direction by a bound on its own curvature, c_k = 1 + β_k ‖W_{k+1}‖₂²
    /// (the level's own term plus its coupling to the level above, activations' slopes taken as at
    /// most 1) and c_L = 1 + β_L (the loss's curvature taken as at most 1): a level-wise (block
    /// Jacobi) preconditioner. The solution is unchanged; a step size near 1 stays stable as the
    /// weights grow during training, where plain steps must shrink with 1/‖W‖².
    protected IReadOnlyList<Tensor> Preconditioned(Tensor[] d)
    {
        if (!precondition) return d;
        curvatures ??= Enumerable.Range(0, Count).Select(k => k == Count - 1 ? 1 + Spacings[k]
            : 1 + Spacings[k] * Levels[k + 1].SquaredSpectralNorm(BlockWeights(k + 1))).ToArray();
        for (int k = 0; k < Count; k++) d[k].div_(curvatures[k]);
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
        firstPreActivation?.Dispose();
        firstPreActivation = null;
        curvatures = null;
    }

    public void Dispose() => WeightsChanged();
}
