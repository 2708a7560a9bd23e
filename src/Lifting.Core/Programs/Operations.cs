using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Programs;

/// Base of the built-in graph operations: shapes, no parameters or buffers unless given.
public abstract class Operation : IOperation
{
    protected Operation(IReadOnlyList<long[]> inputShapes, long[] outputShape)
    {
        InputShapes = inputShapes;
        OutputShape = outputShape;
    }

    public abstract string Name { get; }
    public IReadOnlyList<long[]> InputShapes { get; }
    public long[] OutputShape { get; }
    public virtual IReadOnlyList<ParameterSpec> Parameters => Array.Empty<ParameterSpec>();
    public virtual IReadOnlyList<BufferSpec> Buffers => Array.Empty<BufferSpec>();
    public virtual bool HasMode => false;
    public abstract Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> parameters, OperationContext context);
    public override string ToString() => Name;

    protected static long[] Batched(long batch, long[] shape)
    {
        var result = new long[shape.Length + 1];
        result[0] = batch;
        shape.CopyTo(result, 1);
        return result;
    }
}

/// y = x_1 + … + x_k for inputs of one shape (a residual connection's sum). (∂y/∂x_i)ᵀv = v.
public sealed class Add : Operation, ILocalDerivatives
{
    public Add(long[] shape, int inputs = 2) : base(Enumerable.Repeat(shape, CheckCount(inputs)).ToArray(), shape) { }

    private static int CheckCount(int inputs) => inputs >= 2 ? inputs
        : throw new ArgumentOutOfRangeException(nameof(inputs), $"Add needs at least two inputs, got {inputs}.");

    public override string Name => "add";

    public override Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> parameters, OperationContext context)
    {
        var sum = inputs[0].Plus(inputs[1]);
        for (int i = 2; i < inputs.Count; i++) sum = sum.Plus(inputs[i]);
        return sum;
    }

    public Tensor InputVjp(int input, LocalCall call, Tensor v) => v;
    public void AddParameterVjp(LocalCall call, Tensor v, IReadOnlyList<Tensor> into, double scale) { }
}

/// y = [x_1, …, x_k] joined along the first non-batch dimension (features, or channels of images).
/// (∂y/∂x_i)ᵀv is x_i's slice of v.
public sealed class Concat : Operation, ILocalDerivatives
{
    private readonly long[] offsets;

    public Concat(IReadOnlyList<long[]> shapes) : base(shapes, Joined(shapes))
    {
        offsets = new long[shapes.Count];
        for (int i = 1; i < shapes.Count; i++) offsets[i] = offsets[i - 1] + shapes[i - 1][0];
    }

    private static long[] Joined(IReadOnlyList<long[]> shapes)
    {
        if (shapes.Count < 2) throw new ArgumentException($"Concat needs at least two inputs, got {shapes.Count}.");
        foreach (var s in shapes)
            if (s.Length != shapes[0].Length || !s.Skip(1).SequenceEqual(shapes[0].Skip(1)))
                throw new ArgumentException($"Concat joins along the first dimension; [{Shapes.Show(s)}] and [{Shapes.Show(shapes[0])}] differ elsewhere.");
        var joined = (long[])shapes[0].Clone();
        joined[0] = shapes.Sum(s => s[0]);
        return joined;
    }

    public override string Name => "concat";
    public override Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> parameters, OperationContext context) => cat(inputs.ToArray(), 1);
    public Tensor InputVjp(int input, LocalCall call, Tensor v) => v.narrow(1, offsets[input], InputShapes[input][0]);
    public void AddParameterVjp(LocalCall call, Tensor v, IReadOnlyList<Tensor> into, double scale) { }
}

/// One step's slice of a sequence: x[:, t] of inputs shaped [T, D] (a recurrent net's input at step
/// t), or of [C, H, W] images read as H rows of C·W values, or as H·W steps of C values
/// (`values` per step). (∂y/∂x)ᵀv places v at step t, zeros elsewhere.
public sealed class SequenceStep : Operation, ILocalDerivatives
{
    public SequenceStep(long[] inputShape, long step, long values) : base(new[] { inputShape }, new[] { values })
    {
        var total = Shapes.Size(inputShape);
        if (values <= 0 || total % values != 0)
            throw new ArgumentException($"A sequence of [{Shapes.Show(inputShape)}] ({total} values) does not split into steps of {values} values.");
        Steps = total / values;
        if (step < 0 || step >= Steps) throw new ArgumentOutOfRangeException(nameof(step), $"Invalid step {step} (the sequence has {Steps}).");
        Step = step;
        Values = values;
    }

    public long Step { get; }
    public long Steps { get; }
    public long Values { get; }
    public override string Name => $"step[{Step}]";

    public override Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> parameters, OperationContext context) =>
        inputs[0].reshape(inputs[0].shape[0], Steps, Values).select(1, Step);

    public Tensor InputVjp(int input, LocalCall call, Tensor v)
    {
        var full = zeros(new[] { v.shape[0], Steps, Values }, dtype: v.dtype, device: v.device);
        full.select(1, Step).copy_(v);
        return full.reshape(Batched(v.shape[0], InputShapes[0]));
    }

    public void AddParameterVjp(LocalCall call, Tensor v, IReadOnlyList<Tensor> into, double scale) { }
}

/// Zeros of a given shape for every example of the batch its input comes from (a recurrent net's
/// initial state h_0 = 0). Its derivative is zero.
public sealed class ZeroState : Operation, ILocalDerivatives
{
    public ZeroState(long[] inputShape, long[] shape) : base(new[] { inputShape }, shape) { }
    public override string Name => $"zeros({Shapes.Show(OutputShape)})";
    public override Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> parameters, OperationContext context) =>
        zeros(Batched(inputs[0].shape[0], OutputShape), dtype: inputs[0].dtype, device: inputs[0].device);
    public Tensor InputVjp(int input, LocalCall call, Tensor v) => zeros(Batched(v.shape[0], InputShapes[0]), dtype: v.dtype, device: v.device);
    public void AddParameterVjp(LocalCall call, Tensor v, IReadOnlyList<Tensor> into, double scale) { }
}

/// Batch normalisation (Ioffe & Szegedy 2015) over [F] features or the channels of [C, H, W]
/// images: y = γ (x − m) / √(s + ε) + β with the batch's mean m and (biased) variance s in training
/// and the running statistics in evaluation; the running statistics (buffers, saved with the
/// weights) follow m and the unbiased variance with momentum 0.1, once per training pass (the first
/// evaluation of a step), however often a solver evaluates the step.
///
/// Back-propagation differentiates through the batch statistics. A lifted step holds the
/// statistics of its first evaluation fixed (`OperationContext.Hold`), so that within the step the
/// layer is the affine map γ (x − m)/√(s + ε) + β of its input and the step's game is one function
/// of its variables (docs/methods.md, "Normalisation and dropout").
public sealed class BatchNorm : Operation
{
    private readonly long[] dimensions;

    public BatchNorm(long[] shape, double epsilon = 1e-5, double momentum = 0.1) : base(new[] { shape }, shape)
    {
        if (shape.Length != 1 && shape.Length != 3) throw new ArgumentException($"BatchNorm needs [features] or [channels, height, width] inputs, got [{Shapes.Show(shape)}].");
        if (!(epsilon > 0)) throw new ArgumentOutOfRangeException(nameof(epsilon), $"Invalid epsilon: {epsilon} (expected > 0).");
        if (!(momentum > 0 && momentum <= 1)) throw new ArgumentOutOfRangeException(nameof(momentum), $"Invalid momentum: {momentum} (expected 0 < momentum <= 1).");
        Epsilon = epsilon;
        Momentum = momentum;
        Features = shape[0];
        dimensions = shape.Length == 1 ? new long[] { 0 } : new long[] { 0, 2, 3 };
        Parameters = new[]
        {
            new ParameterSpec("weight", new[] { Features }, (s, g, dtype, device) => ones(s, dtype: dtype, device: device)),
            new ParameterSpec("bias", new[] { Features }, Initialisers.Zeros),
        };
        Buffers = new[]
        {
            new BufferSpec("running_mean", new[] { Features }, (s, dtype, device) => zeros(s, dtype: dtype, device: device)),
            new BufferSpec("running_var", new[] { Features }, (s, dtype, device) => ones(s, dtype: dtype, device: device)),
        };
    }

    public long Features { get; }
    public double Epsilon { get; }
    public double Momentum { get; }
    public override string Name => $"batchnorm({Features})";
    public override bool HasMode => true;
    public override IReadOnlyList<ParameterSpec> Parameters { get; }
    public override IReadOnlyList<BufferSpec> Buffers { get; }

    public override Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> parameters, OperationContext context)
    {
        var x = inputs[0];
        Tensor mean, variance;
        if (context.Training)
        {
            var (m, _) = context.HoldStatistic("mean", () => x.mean(dimensions, keepdim: false));
            var (v, _) = context.HoldStatistic("variance", () => x.var(dimensions, unbiased: false, keepdim: false));
            mean = m;
            variance = v;
            if (context.FirstTime("running statistics"))
                using (no_grad())
                {
                    long n = x.NumberOfElements / Features;
                    using var keep = (1 - Momentum).ToScalar();
                    using var take = Momentum.ToScalar();
                    using var unbiased = (n / (double)Math.Max(1, n - 1)).ToScalar();
                    context.Buffers[0].mul_(keep).add_(m.detach(), alpha: take);
                    context.Buffers[1].mul_(keep).add_(v.detach().mul(unbiased), alpha: take);
                }
        }
        else
        {
            mean = context.Buffers[0];
            variance = context.Buffers[1];
        }
        var shape = x.dim() == 2 ? new long[] { 1, Features } : new long[] { 1, Features, 1, 1 };
        using var eps = Epsilon.ToScalar();
        var scale = variance.add(eps, Scalars.IntOne).rsqrt() * parameters[0];
        return ((x - mean.reshape(shape)) * scale.reshape(shape)).Plus(parameters[1].reshape(shape));
    }
}

/// Layer normalisation (Ba et al. 2016): each example normalised over all its features,
/// y = γ ⊙ (x − mean) / √(var + ε) + β. No buffers, the same in training and evaluation.
public sealed class LayerNorm : Operation
{
    public LayerNorm(long[] shape, double epsilon = 1e-5) : base(new[] { shape }, shape)
    {
        if (!(epsilon > 0)) throw new ArgumentOutOfRangeException(nameof(epsilon), $"Invalid epsilon: {epsilon} (expected > 0).");
        Epsilon = epsilon;
        Parameters = new[]
        {
            new ParameterSpec("weight", shape, (s, g, dtype, device) => ones(s, dtype: dtype, device: device)),
            new ParameterSpec("bias", shape, Initialisers.Zeros),
        };
    }

    public double Epsilon { get; }
    public override string Name => $"layernorm({Shapes.Show(OutputShape)})";
    public override IReadOnlyList<ParameterSpec> Parameters { get; }

    public override Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> parameters, OperationContext context) =>
        F.layer_norm(inputs[0], OutputShape, parameters[0], parameters[1], Epsilon);
}

/// Dropout (Srivastava et al. 2014): in training each value is kept with probability 1 − p and
/// scaled by 1/(1 − p); in evaluation the identity. The mask comes from the pass's seeded generator
/// (the same in every process and after a resume) and is held fixed for a lifted step.
public sealed class Dropout : Operation
{
    public Dropout(long[] shape, double probability) : base(new[] { shape }, shape)
    {
        if (!(probability >= 0 && probability < 1)) throw new ArgumentOutOfRangeException(nameof(probability), $"Invalid dropout probability: {probability} (expected 0 <= p < 1).");
        Probability = probability;
    }

    public double Probability { get; }
    public override string Name => $"dropout({Probability.ToString(System.Globalization.CultureInfo.InvariantCulture)})";
    public override bool HasMode => true;

    public override Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> parameters, OperationContext context)
    {
        var x = inputs[0];
        if (!context.Training || Probability == 0) return x;
        var generator = context.Random;
        var (mask, _) = context.Hold("mask", () =>
        {
            using var keep = (1 - Probability).ToScalar();
            using var scale = (1 / (1 - Probability)).ToScalar();
            return rand(x.shape, dtype: x.dtype, generator: generator).to(x.device).lt(keep).to_type(x.dtype).mul_(scale);
        });
        return x * mask;
    }
}
