using System.Collections.Immutable;

namespace Lifting.Programs;

/// Declarative builder for nested programs. Every call returns a new builder, so partial
/// networks can be shared and extended:
///
///     C#: Net.Input(1, 28, 28).Flatten().Dense(256).ReLU().Dense(10).CrossEntropy()
///     F#: Net.Input(1L, 28L, 28L).Flatten().Dense(256).ReLU().Dense(10).CrossEntropy()
///
/// Blocks (the nesting levels lifting may cut at) are explicit with `Cut()`; when a program has no
/// explicit cut, it is cut after each hidden activation.
public sealed class Net
{
    private readonly ImmutableList<ILayer> layers;
    private readonly ImmutableList<int> cuts; // layer counts at which a block ends

    private Net(long[] inputShape, ImmutableList<ILayer> layers, ImmutableList<int> cuts)
    {
        InputShape = inputShape;
        this.layers = layers;
        this.cuts = cuts;
    }

    /// Starts a program whose examples have the given shape (without the batch dimension).
    public static Net Input(params long[] shape)
    {
        if (shape.Length == 0 || shape.Any(d => d <= 0))
            throw new ArgumentException($"Input shape must be non-empty with positive sizes, got [{string.Join(", ", shape)}].", nameof(shape));
        return new Net((long[])shape.Clone(), ImmutableList<ILayer>.Empty, ImmutableList<int>.Empty);
    }

    /// An MLP program: flatten, then Dense layers of the given sizes with `hidden` after each
    /// but the last. `sizes[0]` must equal the flattened input size.
    public static NestedProgram Mlp(long[] inputShape, IReadOnlyList<long> sizes, IActivation hidden, ILoss loss)
    {
        if (sizes.Count < 2) throw new ArgumentException($"An MLP needs at least an input and an output size, got {sizes.Count} size(s).");
        var flat = inputShape.Aggregate(1L, (a, b) => a * b);
        if (sizes[0] != flat)
            throw new ArgumentException($"The network starts with {sizes[0]} inputs but the data has {flat} values per example.");
        var net = Input(inputShape);
        if (inputShape.Length != 1) net = net.Flatten();
        for (int i = 1; i < sizes.Count; i++)
        {
            net = net.Dense(sizes[i]);
            if (i < sizes.Count - 1) net = net.Activation(hidden);
        }
        return net.Loss(loss);
    }

    public long[] InputShape { get; }
    /// The shape the next layer receives.
    public long[] Shape => layers.IsEmpty ? InputShape : layers[^1].OutputShape;

    /// Appends any layer, built from the current shape (custom layers enter here).
    public Net Layer(Func<long[], ILayer> make)
    {
        var layer = make(Shape);
        if (!layer.InputShape.SequenceEqual(Shape))
            throw new ArgumentException($"Layer {layer.Name} expects [{Shapes.Show(layer.InputShape)}] but receives [{Shapes.Show(Shape)}].");
        return new Net(InputShape, layers.Add(layer), cuts);
    }

    public Net Dense(long units)
    {
        if (Shape.Length != 1) throw new InvalidOperationException($"Dense needs a flat input but receives [{Shapes.Show(Shape)}]; add Flatten() first.");
        return Layer(s => new Dense(s[0], units));
    }

    public Net Conv2d(long channels, long kernel, long stride = 1, long padding = 0) => Layer(s => new Conv2d(s, channels, kernel, stride, padding));
    public Net MaxPool2d(long kernel, long stride = 0) => Layer(s => new Pool2d(s, kernel, stride == 0 ? kernel : stride, max: true));
    public Net AvgPool2d(long kernel, long stride = 0) => Layer(s => new Pool2d(s, kernel, stride == 0 ? kernel : stride, max: false));
    public Net Flatten() => Layer(s => new Flatten(s));

    public Net Activation(IActivation activation) => Layer(s => new ActivationLayer(activation, s));
    public Net ReLU() => Activation(Activations.ReLU);
    public Net Tanh() => Activation(Activations.Tanh);
    public Net Sigmoid() => Activation(Activations.Sigmoid);
    public Net HardTanh() => Activation(Activations.HardTanh);
    public Net Identity() => Activation(Activations.Identity);
    public Net Softmax() => Activation(Activations.Softmax);
    public Net Sign() => Activation(Activations.Sign);
    public Net Step() => Activation(Activations.Step);

    /// Ends the current block here: lifting introduces a state for this point.
    public Net Cut()
    {
        if (layers.IsEmpty) throw new InvalidOperationException("Cut() needs at least one layer before it.");
        if (!cuts.IsEmpty && cuts[^1] == layers.Count) return this;
        return new Net(InputShape, layers, cuts.Add(layers.Count));
    }

    public NestedProgram CrossEntropy() => Loss(Losses.CrossEntropy);
    public NestedProgram Mse() => Loss(Losses.Mse);

    /// Finishes the program with a loss.
    public NestedProgram Loss(ILoss loss)
    {
        if (layers.IsEmpty) throw new InvalidOperationException("A program needs at least one layer.");
        var ends = cuts.IsEmpty ? DefaultCuts() : cuts.Where(c => c < layers.Count).ToList();
        var blocks = new List<Block>();
        int start = 0;
        foreach (var end in ends.Append(layers.Count))
        {
            if (end <= start) continue;
            blocks.Add(new Block(layers.GetRange(start, end - start)));
            start = end;
        }
        return new NestedProgram(InputShape, blocks, loss);
    }

    /// Cut after each activation that is followed by a layer with parameters.
    private List<int> DefaultCuts()
    {
        var ends = new List<int>();
        for (int i = 0; i < layers.Count; i++)
        {
            if (layers[i] is not ActivationLayer) continue;
            if (layers.Skip(i + 1).Any(l => l.Parameters.Count > 0)) ends.Add(i + 1);
        }
        return ends;
    }
}
