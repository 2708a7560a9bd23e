using Lifting.Programs;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Testing;

/// A small program with a batch of float64 data to run it on: the unit the checks work on.
public sealed record RandomProgram(NestedProgram Program, Tensor Inputs, Tensor Labels, int Classes, int Seed)
{
    /// Fresh float64 weights from `seed`.
    public Weights Initialise(int seed) => Program.Initialise(seed, CPU, ScalarType.Float64);
    public override string ToString() => $"seed {Seed}: {Program}";
}

/// Random small programs for property checks, deterministic in their seed (use any seed source:
/// a loop, FsCheck's Gen.choose, xUnit's theory data).
public static class RandomPrograms
{
    private static readonly IActivation[] Differentiable = { Activations.Tanh, Activations.Sigmoid, Activations.ReLU, Activations.Identity };

    /// A random MLP: 2–6 inputs, 1–3 hidden layers of 2–6 units, 2–4 classes, one of tanh, sigmoid,
    /// ReLU or identity, cross-entropy; a batch of 1–5 standard-normal inputs with random labels.
    public static RandomProgram Mlp(int seed)
    {
        var random = new Random(seed);
        var inputs = random.Next(2, 7);
        var hidden = Enumerable.Range(0, random.Next(1, 4)).Select(_ => (long)random.Next(2, 7));
        var classes = random.Next(2, 5);
        var activation = Differentiable[random.Next(Differentiable.Length)];
        var batch = random.Next(1, 6);
        var sizes = hidden.Prepend(inputs).Append(classes).ToArray();
        var program = Net.Mlp(new long[] { inputs }, sizes, activation, Losses.CrossEntropy);
        var (x, y) = Batch(seed, batch, inputs, classes);
        return new RandomProgram(program, x, y, classes, seed);
    }

    /// A random residual MLP (float64 batch): 2–6 inputs, a dense layer of width 3–6 with tanh or
    /// sigmoid, 1–3 residual blocks x + W₂σ(W₁x) (with `skipsAcrossCuts`, one in two with a cut
    /// inside its body, so the skip crosses a cut), cuts after the first activation and after a
    /// random subset of the blocks (every block without `skipsAcrossCuts`), and a dense output of
    /// 2–4 classes.
    public static RandomProgram ResidualGraph(int seed, bool skipsAcrossCuts = true)
    {
        var random = new Random(seed);
        var inputs = random.Next(2, 7);
        var width = random.Next(3, 7);
        var classes = random.Next(2, 5);
        var activation = random.Next(2) == 0 ? Activations.Tanh : Activations.Sigmoid;
        var net = Net.Input(inputs).Dense(width).Activation(activation).Cut();
        int blocks = random.Next(1, 4);
        for (int b = 0; b < blocks; b++)
        {
            bool inner = random.Next(2) == 0 && skipsAcrossCuts;
            net = net.Residual(body =>
            {
                body = body.Dense(width).Activation(activation);
                if (inner) body = body.Cut();
                return body.Dense(width);
            });
            if (b < blocks - 1 && (random.Next(2) == 0 || !skipsAcrossCuts)) net = net.Cut();
        }
        var program = net.Dense(classes).CrossEntropy();
        var batch = random.Next(2, 6);
        var (x, y) = Batch(seed, batch, inputs, classes);
        return new RandomProgram(program, x, y, classes, seed);
    }

    /// A random Elman RNN (float64 batch): 2–6 steps of 1–3 values, 2–5 tanh hidden units with tied
    /// weights, cut after every step or every second one, and a dense read-out of 2–4 classes.
    public static RandomProgram RecurrentGraph(int seed)
    {
        var random = new Random(seed);
        var steps = random.Next(2, 7);
        var values = random.Next(1, 4);
        var hidden = random.Next(2, 6);
        var classes = random.Next(2, 5);
        var every = random.Next(1, 3);
        var program = Net.Input(steps, values).Elman(hidden, cutEvery: every).Dense(classes).CrossEntropy();
        var batch = random.Next(2, 6);
        using var generator = new Generator((ulong)seed);
        var x = randn(new long[] { batch, steps, values }, dtype: ScalarType.Float64, generator: generator);
        var y = randint(classes, new long[] { batch }, generator: generator);
        return new RandomProgram(program, x, y, classes, seed);
    }

    /// A random graph program: `ResidualGraph` or `RecurrentGraph`.
    public static RandomProgram Graph(int seed) => seed % 2 == 0 ? ResidualGraph(seed) : RecurrentGraph(seed);

    /// A random graph whose segments each read one lifted value (and the input): a residual MLP
    /// cut at its blocks' sums only, or an Elman RNN.
    public static RandomProgram GraphWithoutSkipsAcrossCuts(int seed) => seed % 2 == 0 ? ResidualGraph(seed, skipsAcrossCuts: false) : RecurrentGraph(seed);

    /// A given program on a random batch of `batch` standard-normal examples with labels below `classes`.
    public static RandomProgram On(NestedProgram program, int seed, int batch, int classes)
    {
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), $"Invalid batch: {batch} (expected >= 1).");
        if (classes < 1) throw new ArgumentOutOfRangeException(nameof(classes), $"Invalid classes: {classes} (expected >= 1).");
        using var generator = new Generator((ulong)seed);
        var x = randn(new[] { (long)batch }.Concat(program.InputShape).ToArray(), dtype: ScalarType.Float64, generator: generator);
        var y = randint(classes, new long[] { batch }, generator: generator);
        return new RandomProgram(program, x, y, classes, seed);
    }

    /// The conformance suite's program: a 6-8-3 tanh MLP with cross-entropy on 24 random examples.
    public static RandomProgram Standard() =>
        On(Net.Mlp(new long[] { 6 }, new long[] { 6, 8, 3 }, Activations.Tanh, Losses.CrossEntropy), 17, 24, 3);

    private static (Tensor X, Tensor Y) Batch(int seed, long batch, long inputs, long classes)
    {
        using var generator = new Generator((ulong)seed);
        var x = randn(new[] { batch, inputs }, dtype: ScalarType.Float64, generator: generator);
        var y = randint(classes, new[] { batch }, generator: generator);
        return (x, y);
    }
}
