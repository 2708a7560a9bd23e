using static TorchSharp.torch;

namespace Lifting.Programs;

/// How a parameter tensor is initialised: a function of its shape and a seeded generator.
public delegate Tensor Initialiser(long[] shape, Generator generator, ScalarType dtype, Device device);

/// One parameter tensor of a layer: its name, shape and initialiser.
public sealed record ParameterSpec(string Name, long[] Shape, Initialiser Init);

/// A layer is a pure function f(h; w) of its input and its parameters, plus their shapes.
/// Shapes exclude the batch dimension. Implement this to add a layer without touching the engine.
public interface ILayer
{
    string Name { get; }
    long[] InputShape { get; }
    long[] OutputShape { get; }
    IReadOnlyList<ParameterSpec> Parameters { get; }

    /// f(h; w) on a batch [B, …InputShape] → [B, …OutputShape].
    Tensor Forward(Tensor input, IReadOnlyList<Tensor> parameters);
}

/// Parameter initialisers.
public static class Initialisers
{
    /// U(−1/√fan_in, 1/√fan_in), PyTorch's default for Linear and Conv2d weights and biases.
    public static Initialiser UniformFanIn(long fanIn) => (shape, generator, dtype, device) =>
    {
        var bound = 1.0 / Math.Sqrt(fanIn);
        return rand(shape, dtype: dtype, generator: generator).Times(2 * bound).Minus(bound).to(device);
    };

    public static Initialiser Zeros { get; } = (shape, _, dtype, device) => zeros(shape, dtype: dtype, device: device);

    /// Glorot-uniform (Glorot & Bengio 2010): U(−b, b) with b = √(6 / (fan_in + fan_out)).
    public static Initialiser GlorotUniform(long fanIn, long fanOut) => (shape, generator, dtype, device) =>
    {
        var bound = GlorotBound(fanIn, fanOut);
        return rand(shape, dtype: dtype, generator: generator).Times(2 * bound).Minus(bound).to(device);
    };

    /// He (Kaiming) uniform (He et al. 2015): U(−b, b) with b = √(6 / fan_in), the scale that keeps a
    /// ReLU layer's output variance equal to its input's.
    public static Initialiser HeUniform(long fanIn) => (shape, generator, dtype, device) =>
    {
        if (fanIn <= 0) throw new ArgumentOutOfRangeException(nameof(fanIn), $"Invalid fan-in: {fanIn} (expected > 0).");
        var bound = Math.Sqrt(6.0 / fanIn);
        return rand(shape, dtype: dtype, generator: generator).Times(2 * bound).Minus(bound).to(device);
    };

    /// All-negative Glorot-uniform: U(−b, 0) with b = √(6 / (fan_in + fan_out)), the first layer of
    /// seed 002's Fenchel back-propagation experiment (appendix C, `glorot_neg_uniform` = −|U(−b, b)|):
    /// with non-negative inputs and zero biases every first-layer pre-activation is ≤ 0, so every
    /// ReLU unit starts dead and back-propagation's gradient is zero below the output bias.
    public static Initialiser NegativeGlorotUniform(long fanIn, long fanOut) => (shape, generator, dtype, device) =>
    {
        var bound = GlorotBound(fanIn, fanOut);
        return rand(shape, dtype: dtype, generator: generator).Times(-bound).to(device);
    };

    /// (fan_in, fan_out) of a weight tensor laid out [out, in, …kernel] (Dense [out, in], Conv2d
    /// [out, in, k, k]): in·∏kernel and out·∏kernel, PyTorch's and Flux's convention.
    public static (long FanIn, long FanOut) Fans(long[] shape)
    {
        if (shape.Length < 2) throw new ArgumentException($"Fans need a weight of rank >= 2 laid out [out, in, …], got [{Shapes.Show(shape)}].");
        var receptive = shape.Skip(2).Aggregate(1L, (a, b) => a * b);
        return (shape[1] * receptive, shape[0] * receptive);
    }

    private static double GlorotBound(long fanIn, long fanOut)
    {
        if (fanIn <= 0 || fanOut <= 0) throw new ArgumentOutOfRangeException(nameof(fanIn), $"Invalid fans: {fanIn}, {fanOut} (expected > 0).");
        return Math.Sqrt(6.0 / (fanIn + fanOut));
    }
}

internal static class Shapes
{
    public static long Size(long[] shape) => shape.Aggregate(1L, (a, b) => a * b);
    public static string Show(long[] shape) => string.Join("×", shape);
}
