using System.Globalization;

namespace Lifting.Programs;

/// Networks from one line of text, for the host's `--net` and experiment files:
///
/// - layer sizes, "784-256-10": an MLP (flatten, dense layers, the hidden activation between them);
/// - a name from the zoo: "lenet5", "seed001-conv";
/// - a comma-separated layer list, e.g.
///   "conv:6:5:1:2, relu, maxpool:2, conv:16:5, relu, maxpool:2, cut, flatten, dense:120, relu, dense:84, relu, dense:10"
///   with conv:CHANNELS:KERNEL[:STRIDE[:PADDING]], maxpool:K[:STRIDE], avgpool:K[:STRIDE], flatten,
///   dense:UNITS, any activation name, batchnorm, layernorm, dropout:P, and cut (explicit block
///   boundaries; without any, the program is cut after each hidden activation, residual block and
///   recurrent step). Dense after an image flattens it first. Graphs:
///   - res:WIDTH[:BLOCKS[:DEPTH]]: BLOCKS residual blocks y = x + f(x) (default 1), f being DEPTH
///     dense layers of WIDTH units (default 2) with the hidden activation between them (a
///     projection on the skip when the input is not WIDTH wide), e.g.
///     "flatten, dense:128, relu, res:128:8, dense:10" (a residual MLP of 8 blocks);
///   - elman:HIDDEN[:CUT-EVERY[:VALUES]]: an Elman RNN h_t = tanh(W x_t + U h_(t−1) + b) with tied
///     weights, reading an image row by row (or VALUES values per step, 1 = pixel by pixel), cut after
///     every CUT-EVERY-th step (default 1, 0 = only the output), e.g. "elman:64, dense:10".
///
/// The last layer must produce one output per class.
public static class NetSpec
{
    public static NestedProgram Build(string? spec, long[] inputShape, int classes, IActivation hidden, ILoss loss)
    {
        var flat = Shapes.Size(inputShape);
        if (string.IsNullOrWhiteSpace(spec)) return Net.Mlp(inputShape, new[] { flat, 128L, classes }, hidden, loss);
        var text = spec.Trim();
        NestedProgram program;
        if (text.All(c => char.IsDigit(c) || c == '-'))
        {
            var sizes = text.Split('-').Select(p => long.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v > 0 ? v
                : throw new ArgumentException($"--net {spec}: '{p}' is not a positive layer size")).ToArray();
            if (sizes.Length < 2) throw new ArgumentException($"--net {spec}: give at least input and output sizes, e.g. {flat}-128-{classes}");
            if (sizes[0] != flat) throw new ArgumentException($"--net {spec}: the network starts with {sizes[0]} inputs but the data has {flat} values per example");
            program = Net.Mlp(inputShape, sizes, hidden, loss);
        }
        else if (!text.Contains(',') && !text.Contains(':')) program = Zoo.ByName(text, inputShape, classes, loss);
        else program = Layers(text, inputShape, hidden, loss);
        if (Shapes.Size(program.OutputShape) != classes || program.OutputShape.Length != 1)
            throw new ArgumentException($"--net {spec}: the network ends with [{Shapes.Show(program.OutputShape)}] outputs but the data has {classes} classes");
        return program;
    }

    private static NestedProgram Layers(string spec, long[] inputShape, IActivation hidden, ILoss loss)
    {
        var net = Net.Input(inputShape);
        foreach (var raw in spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = raw.Split(':', StringSplitOptions.TrimEntries);
            long Arg(int i, long fallback, string what)
            {
                if (i >= parts.Length) return fallback >= 0 ? fallback : throw new ArgumentException($"--net: '{raw}' needs {what}");
                return long.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v >= 0 ? v
                    : throw new ArgumentException($"--net: '{raw}': {what} '{parts[i]}' is not a non-negative integer");
            }
            void Arity(int most)
            {
                if (parts.Length > most) throw new ArgumentException($"--net: '{raw}' has {parts.Length - 1} arguments, at most {most - 1} expected");
            }
            var kind = parts[0].ToLowerInvariant();
            try
            {
                switch (kind)
                {
                    case "conv": Arity(5); net = net.Conv2d(Arg(1, -1, "a channel count"), Arg(2, -1, "a kernel size"), Arg(3, 1, "a stride"), Arg(4, 0, "a padding")); break;
                    case "maxpool": Arity(3); net = net.MaxPool2d(Arg(1, -1, "a kernel size"), Arg(2, 0, "a stride")); break;
                    case "avgpool": Arity(3); net = net.AvgPool2d(Arg(1, -1, "a kernel size"), Arg(2, 0, "a stride")); break;
                    case "flatten": Arity(1); net = net.Flatten(); break;
                    case "batchnorm": Arity(1); net = net.BatchNorm(); break;
                    case "layernorm": Arity(1); net = net.LayerNorm(); break;
                    case "dropout":
                        Arity(2);
                        net = net.Dropout(parts.Length > 1 && double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var p) && p >= 0 && p < 1 ? p
                            : throw new ArgumentException($"--net: '{raw}' needs a probability 0 <= P < 1"));
                        break;
                    case "res":
                    {
                        Arity(4);
                        long width = Arg(1, -1, "a width"), blocks = Arg(2, 1, "a block count"), depth = Arg(3, 2, "a depth");
                        if (width < 1 || blocks < 1 || depth < 1) throw new ArgumentException($"--net: '{raw}': width, blocks and depth must be >= 1");
                        if (net.Shape.Length != 1) net = net.Flatten();
                        for (long b = 0; b < blocks; b++)
                            net = net.Residual(body =>
                            {
                                for (long d = 0; d < depth; d++)
                                {
                                    body = body.Dense(width);
                                    if (d < depth - 1) body = body.Activation(hidden);
                                }
                                return body;
                            });
                        break;
                    }
                    case "elman":
                    {
                        Arity(4);
                        long units = Arg(1, -1, "a hidden size"), every = Arg(2, 1, "a cut interval"), values = Arg(3, 0, "a count of values per step");
                        if (units < 1) throw new ArgumentException($"--net: '{raw}': the hidden size must be >= 1");
                        net = net.Elman(units, cutEvery: (int)every, valuesPerStep: values);
                        break;
                    }
                    case "cut": Arity(1); net = net.Cut(); break;
                    case "dense":
                        Arity(2);
                        if (net.Shape.Length != 1) net = net.Flatten();
                        net = net.Dense(Arg(1, -1, "a unit count"));
                        break;
                    default: Arity(1); net = net.Activation(Activations.ByName(kind)); break;
                }
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException)
            {
                throw new ArgumentException(e.Message.StartsWith("--net", StringComparison.Ordinal) ? e.Message : $"--net: at '{raw}': {e.Message}");
            }
        }
        return net.Loss(loss);
    }
}
