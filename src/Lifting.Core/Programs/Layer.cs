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
        return (rand(shape, dtype: dtype, generator: generator) * (2 * bound) - bound).to(device);
    };

    public static Initialiser Zeros { get; } = (shape, _, dtype, device) => zeros(shape, dtype: dtype, device: device);
}

internal static class Shapes
{
    public static long Size(long[] shape) => shape.Aggregate(1L, (a, b) => a * b);
    public static string Show(long[] shape) => string.Join("×", shape);
}
