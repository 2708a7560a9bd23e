using System.Collections.Immutable;

namespace Lifting.Programs;

/// Declarative builder for nested programs. Every call returns a new builder, so partial
/// networks can be shared and extended:
///
///     C#: Net.Input(1, 28, 28).Flatten().Dense(256).ReLU().Dense(10).CrossEntropy()
///     F#: Net.Input(1L, 28L, 28L).Flatten().Dense(256).ReLU().Dense(10).CrossEntropy()
///
/// Beyond chains: `Residual(body)` (y = x + f(x)), `Add` and `Concat` of two branches of one
/// network, `Unroll(hidden, cell)` and `Elman(hidden)` for recurrent cells fed one slice of the
/// input per step with tied weights, `Apply(Net.Share(…))` for any block used several times with
/// one set of weights, and `BatchNorm`, `LayerNorm`, `Dropout`.
///
/// Lifted values are explicit with `Cut()`, on any value. Without an explicit cut, a program is cut
/// after each top-level activation that a parameterised layer follows, after each residual block
/// and after each step of an unrolled cell (every `cutEvery` steps). A chain — every layer reading
/// the one before it — keeps its blocks and its parameter names (block1.dense(64→128).weight); a
/// graph's parameters are named by where they were built (res2.dense1.weight, rnn1.cell.dense1.weight).
public sealed class Net
{
    /// A node under construction: an operation on earlier pieces (null: the program's input).
    internal sealed class Piece
    {
        public Piece(IOperation operation, Piece?[] inputs, ParameterRef[] parameters, string name, string kind, bool boundary = false, bool placeholder = false)
        {
            Operation = operation;
            Inputs = inputs;
            Parameters = parameters;
            Name = name;
            Kind = kind;
            Boundary = boundary;
            Placeholder = placeholder;
        }

        public IOperation Operation { get; }
        public Piece?[] Inputs { get; }
        public ParameterRef[] Parameters { get; }
        public string Name { get; }
        public string Kind { get; }
        /// A default cut (a residual block's sum, an unrolled step, a top-level activation).
        public bool Boundary { get; }
        /// A stand-in for a value given later (a recurrent cell's or a shared block's inputs).
        public bool Placeholder { get; }
        public long[] Shape => Operation.OutputShape;

        public Piece With(Piece?[] inputs, string name, bool boundary) => new(Operation, inputs, Parameters, name, Kind, boundary);
    }

    /// A parameter under construction: one object per tensor, so that a block used twice ties its
    /// parameters by using the same objects.
    internal sealed class ParameterRef
    {
        public ParameterRef(ParameterSpec spec, string name) { Spec = spec; Name = name; }
        public ParameterSpec Spec { get; }
        public string Name { get; }
    }

    private readonly ImmutableList<Piece> pieces;
    private readonly Piece? head;
    private readonly ImmutableHashSet<Piece> cuts;
    private readonly string scope;

    private Net(long[] inputShape, ImmutableList<Piece> pieces, Piece? head, ImmutableHashSet<Piece> cuts, string scope)
    {
        InputShape = inputShape;
        this.pieces = pieces;
        this.head = head;
        this.cuts = cuts;
        this.scope = scope;
    }

    /// Starts a program whose examples have the given shape (without the batch dimension).
    public static Net Input(params long[] shape)
    {
        if (shape.Length == 0 || shape.Any(d => d <= 0))
            throw new ArgumentException($"Input shape must be non-empty with positive sizes, got [{string.Join(", ", shape)}].", nameof(shape));
        return new Net((long[])shape.Clone(), ImmutableList<Piece>.Empty, null, ImmutableHashSet<Piece>.Empty, "");
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
    public long[] Shape => head?.Shape ?? InputShape;

    // ---- layers -------------------------------------------------------------------------------

    /// Appends any layer, built from the current shape (custom layers enter here).
    public Net Layer(Func<long[], ILayer> make)
    {
        var layer = make(Shape);
        if (!layer.InputShape.SequenceEqual(Shape))
            throw new ArgumentException($"Layer {layer.Name} expects [{Shapes.Show(layer.InputShape)}] but receives [{Shapes.Show(Shape)}].");
        return Append(new LayerOperation(layer), new[] { head }, Kind(layer));
    }

    /// Appends any one-input graph operation (with a mode, buffers or randomness), built from the
    /// current shape.
    public Net Apply(Func<long[], IOperation> make) => Combine(shapes => make(shapes[0]));

    /// Appends an operation reading this value and the values of `others` (branches of the same
    /// network), built from their shapes in that order.
    public Net Combine(Func<IReadOnlyList<long[]>, IOperation> make, params Net[] others)
    {
        var merged = this;
        foreach (var other in others) merged = merged.Merge(other);
        var inputs = new[] { head }.Concat(others.Select(o => o.head)).ToArray();
        var operation = make(inputs.Select((p, i) => p?.Shape ?? InputShape).ToArray());
        var shapes = operation.InputShapes;
        if (shapes.Count != inputs.Length) throw new ArgumentException($"{operation.Name} takes {shapes.Count} input(s), given {inputs.Length}.");
        for (int i = 0; i < inputs.Length; i++)
            if (!shapes[i].SequenceEqual(inputs[i]?.Shape ?? InputShape))
                throw new ArgumentException($"{operation.Name} expects [{Shapes.Show(shapes[i])}] as input {i + 1} but receives [{Shapes.Show(inputs[i]?.Shape ?? InputShape)}].");
        return merged.Append(operation, inputs, KindOf(operation));
    }

    public Net Dense(long units) => Dense(units, bias: true);

    /// y = W h + b, or y = W h without the bias.
    public Net Dense(long units, bool bias)
    {
        if (Shape.Length != 1) throw new InvalidOperationException($"Dense needs a flat input but receives [{Shapes.Show(Shape)}]; add Flatten() first.");
        return Layer(s => new Dense(s[0], units, bias));
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

    /// Batch normalisation over the features (flat inputs) or the channels (images).
    public Net BatchNorm(double epsilon = 1e-5, double momentum = 0.1) => Apply(s => new BatchNorm(s, epsilon, momentum));
    /// Layer normalisation over all of an example's values.
    public Net LayerNorm(double epsilon = 1e-5) => Apply(s => new LayerNorm(s, epsilon));
    /// Dropout with probability `probability` in training, the identity in evaluation.
    public Net Dropout(double probability) => Apply(s => new Dropout(s, probability));

    // ---- graphs -------------------------------------------------------------------------------

    /// y = x + f(x): the residual block `body` applied to this value, added to it. When the body
    /// changes the shape (or `projection` is set), the skip goes through a learned projection: a
    /// dense layer without bias for flat values, a 1×1 convolution for images. Cut after the sum
    /// by default.
    public Net Residual(Func<Net, Net> body, bool projection = false)
    {
        var name = NextScope("res");
        var start = new Net(InputShape, pieces, head, cuts, name + ".");
        var inner = body(start);
        if (inner.head == head) throw new ArgumentException($"The residual block {name} adds no layer.");
        var skip = start.WithScope(name + ".");
        if (projection || !inner.Shape.SequenceEqual(Shape))
        {
            var to = inner.Shape;
            if (Shape.Length == 1 && to.Length == 1) skip = skip.Dense(to[0], bias: false);
            else if (Shape.Length == 3 && to.Length == 3 && Shape[1] == to[1] && Shape[2] == to[2]) skip = skip.Conv2d(to[0], 1);
            else throw new ArgumentException($"The residual block {name} maps [{Shapes.Show(Shape)}] to [{Shapes.Show(to)}]; no projection fits (flat to flat, or images of one size).");
            skip = skip.Renamed("projection");
        }
        var sum = inner.Merge(skip).Combine(s => new Add(s[0]), skip);
        return sum.MarkBoundary().WithScope(scope);
    }

    /// The sum of this value and `other`, a branch of the same network.
    public Net Add(Net other) => Combine(s => new Add(s[0]), other);

    /// This value and `other`'s joined along the features (or channels).
    public Net Concat(Net other) => Combine(s => new Concat(s), other);

    /// A recurrent net: `cell(x_t, h)` maps the step's input slice and the previous state to the
    /// next state (of `hidden` values), with the same weights at every step. The input is read as a
    /// sequence of steps of `valuesPerStep` values (default: a [C, H, W] image row by row, C·W values
    /// per step; a [T, D] input D per step); h_0 = 0; the result is the last state. Cut after every
    /// `cutEvery`-th step (0: no cut inside the sequence).
    public Net Unroll(long hidden, Func<Net, Net, Net> cell, int cutEvery = 1, long valuesPerStep = 0)
    {
        if (hidden <= 0) throw new ArgumentOutOfRangeException(nameof(hidden), $"Invalid hidden size: {hidden} (expected > 0).");
        if (cutEvery < 0) throw new ArgumentOutOfRangeException(nameof(cutEvery), $"Invalid cut interval: {cutEvery} (expected >= 0).");
        var shape = Shape;
        var perStep = valuesPerStep > 0 ? valuesPerStep
            : shape.Length == 3 ? shape[0] * shape[2] : shape.Length == 2 ? shape[1]
            : throw new ArgumentException($"Unroll reads [C, H, W] images row by row or [T, D] sequences; give the values per step for [{Shapes.Show(shape)}].");
        var total = Shapes.Size(shape);
        if (total % perStep != 0) throw new ArgumentException($"A sequence of {total} values does not split into steps of {perStep}.");
        long steps = total / perStep;
        var name = NextScope("rnn");

        // The cell once, on stand-ins for x_t and h: its pieces are copied at every step with the
        // same parameters.
        var xIn = new Piece(new ZeroState(shape, new[] { perStep }), new Piece?[] { null }, Array.Empty<ParameterRef>(), name + ".x", "x", placeholder: true);
        var hIn = new Piece(new ZeroState(shape, new[] { hidden }), new Piece?[] { null }, Array.Empty<ParameterRef>(), name + ".h", "h", placeholder: true);
        var cellScope = name + ".cell.";
        var template = cell(Stand(xIn, cellScope), Stand(hIn, cellScope));
        if (!template.Shape.SequenceEqual(new[] { hidden }))
            throw new ArgumentException($"The cell of {name} returns [{Shapes.Show(template.Shape)}], expected [{hidden}] (the hidden size).");
        var body = template.pieces.Where(p => !p.Placeholder).ToArray();
        if (template.head is null || template.head.Placeholder) throw new ArgumentException($"The cell of {name} adds no layer.");

        var net = this;
        var source = head;
        var state = new Piece(new ZeroState(shape, new[] { hidden }), new[] { source }, Array.Empty<ParameterRef>(), name + ".h0", "zeros");
        net = net.With(state);
        for (long t = 0; t < steps; t++)
        {
            var x = new Piece(new SequenceStep(shape, t, perStep), new[] { source }, Array.Empty<ParameterRef>(), $"{name}.x{t + 1}", "step");
            net = net.With(x);
            var map = new Dictionary<Piece, Piece?> { [xIn] = x, [hIn] = state };
            bool cut = cutEvery > 0 && (t + 1) % cutEvery == 0;
            foreach (var p in body)
            {
                var local = p.Name.StartsWith(cellScope, StringComparison.Ordinal) ? p.Name[cellScope.Length..] : p.Name;
                var copy = p.With(p.Inputs.Select(i => i is not null && map.TryGetValue(i, out var m) ? m : i).ToArray(), $"{name}.t{t + 1}.{local}", boundary: cut && p == template.head);
                map[p] = copy;
                net = net.With(copy);
            }
            state = map[template.head]!;
        }
        return new Net(net.InputShape, net.pieces, state, net.cuts, scope);
    }

    /// An Elman network (Elman 1990) h_t = σ(W x_t + U h_{t−1} + b) with tied W, U, b (`Unroll`);
    /// σ is tanh unless given.
    public Net Elman(long hidden, IActivation? activation = null, int cutEvery = 1, long valuesPerStep = 0) =>
        Unroll(hidden, (x, h) => x.Dense(hidden).Named("input").Add(h.Dense(hidden, bias: false).Named("recurrent")).Activation(activation ?? Activations.Tanh),
            cutEvery, valuesPerStep);

    /// A block with one set of weights, to apply several times (`Apply(SharedBlock)`).
    public static SharedBlock Share(Func<Net, Net> body, string name = "shared") => new(body, name);

    /// `block` applied to this value: every application uses the same parameters.
    public Net Apply(SharedBlock block)
    {
        var (input, template, output) = block.Template(Shape);
        var net = this;
        var map = new Dictionary<Piece, Piece?> { [input] = head };
        int use = pieces.Count(p => p.Name.StartsWith(block.Name + ".use", StringComparison.Ordinal) && p.Kind == "shared-end") + 1;
        foreach (var p in template)
        {
            var local = p.Name.StartsWith(block.Name + ".", StringComparison.Ordinal) ? p.Name[(block.Name.Length + 1)..] : p.Name;
            var copy = new Piece(p.Operation, p.Inputs.Select(i => i is not null && map.TryGetValue(i, out var m) ? m : i).ToArray(), p.Parameters,
                $"{scope}{block.Name}.use{use}.{local}", p == output ? "shared-end" : p.Kind);
            map[p] = copy;
            net = net.With(copy);
        }
        return new Net(net.InputShape, net.pieces, map[output], net.cuts, net.scope);
    }

    /// The last layer named `name` within its scope (its parameters become `name.weight`, …).
    public Net Named(string name)
    {
        if (head is null) throw new InvalidOperationException("Named() needs a layer before it.");
        if (string.IsNullOrWhiteSpace(name) || name.Contains('.') || name.Contains('#'))
            throw new ArgumentException($"Invalid layer name '{name}' (expected a word without '.' or '#').");
        return Renamed(name);
    }

    /// `body` built in the scope `name`: its layers' and parameters' names start with "name."
    /// (e.g. encoder.dense1.weight).
    public Net Scope(string name, Func<Net, Net> body)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Contains('.') || name.Contains('#'))
            throw new ArgumentException($"Invalid scope name '{name}' (expected a word without '.' or '#').");
        return body(WithScope($"{scope}{name}.")).WithScope(scope);
    }

    /// Ends the current block here: lifting introduces a state for this value.
    public Net Cut()
    {
        if (head is null) throw new InvalidOperationException("Cut() needs at least one layer before it.");
        return new Net(InputShape, pieces, head, cuts.Add(head), scope);
    }

    public NestedProgram CrossEntropy() => Loss(Losses.CrossEntropy);
    public NestedProgram Mse() => Loss(Losses.Mse);

    /// Finishes the program with a loss.
    public NestedProgram Loss(ILoss loss)
    {
        if (head is null) throw new InvalidOperationException("A program needs at least one layer.");
        var used = Reachable();
        if (IsChain(used)) return ChainProgram(loss);
        return GraphProgram(loss, used);
    }

    // ---- construction ---------------------------------------------------------------------------

    private Net Append(IOperation operation, Piece?[] inputs, string kind)
    {
        int count = pieces.Count(p => p.Kind == kind && p.Name.StartsWith(scope, StringComparison.Ordinal) && p.Name.IndexOf('.', scope.Length) < 0) + 1;
        var name = $"{scope}{kind}{count}";
        var parameters = operation.Parameters.Select(spec => new ParameterRef(spec, $"{name}.{spec.Name}")).ToArray();
        var piece = new Piece(operation, inputs, parameters, name, kind);
        return new Net(InputShape, pieces.Add(piece), piece, cuts, scope);
    }

    private Net With(Piece piece) => new(InputShape, pieces.Add(piece), piece, cuts, scope);

    private Net WithScope(string newScope) => new(InputShape, pieces, head, cuts, newScope);

    /// The head renamed `name` within its scope (a residual block's projection).
    private Net Renamed(string name)
    {
        var renamedName = $"{scope}{name}";
        var renamed = new Piece(head!.Operation, head.Inputs, head.Operation.Parameters.Select(s => new ParameterRef(s, $"{renamedName}.{s.Name}")).ToArray(), renamedName, name);
        return new Net(InputShape, pieces.Replace(head, renamed), renamed, cuts, scope);
    }

    private Net MarkBoundary()
    {
        var marked = head!.With(head.Inputs, head.Name, boundary: true);
        return new Net(InputShape, pieces.Replace(head, marked), marked, cuts, scope);
    }

    /// This builder's pieces and `other`'s (a branch of the same network) in one list.
    private Net Merge(Net other)
    {
        if (!other.InputShape.SequenceEqual(InputShape)) throw new ArgumentException("Only branches of one network can be combined (their inputs differ).");
        var mine = pieces.ToHashSet();
        var extra = other.pieces.Where(p => !mine.Contains(p)).ToArray();
        return new Net(InputShape, pieces.AddRange(extra), head, cuts.Union(other.cuts), scope);
    }

    private string NextScope(string kind)
    {
        int k = 1;
        while (pieces.Any(p => p.Name.StartsWith($"{scope}{kind}{k}.", StringComparison.Ordinal))) k++;
        return $"{scope}{kind}{k}";
    }

    internal static (Piece Input, Net Net) StandIn(long[] shape, string name)
    {
        var input = new Piece(new ZeroState(shape, shape), new Piece?[] { null }, Array.Empty<ParameterRef>(), name + ".input", "input", placeholder: true);
        return (input, Stand(input, name + "."));
    }

    internal static Piece? HeadOf(Net net) => net.head;
    internal static IReadOnlyList<Piece> PiecesOf(Net net) => net.pieces;

    private static Net Stand(Piece placeholder, string scope) =>
        new(placeholder.Operation.InputShapes[0], ImmutableList.Create(placeholder), placeholder, ImmutableHashSet<Piece>.Empty, scope);

    private static string Kind(ILayer layer) => layer switch
    {
        Programs.Dense => "dense",
        Programs.Conv2d => "conv",
        Pool2d p => p.IsMax ? "maxpool" : "avgpool",
        Programs.Flatten => "flatten",
        ActivationLayer a => a.Activation.Name,
        _ => layer.Name.Split('(')[0],
    };

    private static string KindOf(IOperation operation) => operation switch
    {
        LayerOperation l => Kind(l.Layer),
        Programs.Add => "add",
        Programs.Concat => "concat",
        Programs.BatchNorm => "batchnorm",
        Programs.LayerNorm => "layernorm",
        Programs.Dropout => "dropout",
        _ => operation.Name.Split('(')[0],
    };

    /// The pieces the head depends on, in order.
    private List<Piece> Reachable()
    {
        var needed = new HashSet<Piece> { head! };
        for (int i = pieces.Count - 1; i >= 0; i--)
            if (needed.Contains(pieces[i]))
                foreach (var input in pieces[i].Inputs)
                    if (input is not null) needed.Add(input);
        return pieces.Where(needed.Contains).ToList();
    }

    private static bool IsChain(List<Piece> used)
    {
        var seen = new HashSet<ParameterRef>();
        for (int i = 0; i < used.Count; i++)
        {
            var p = used[i];
            if (p.Operation is not LayerOperation || p.Inputs.Length != 1 || p.Inputs[0] != (i == 0 ? null : used[i - 1])) return false;
            if (p.Parameters.Any(r => !seen.Add(r))) return false;
        }
        return true;
    }

    /// A chain: blocks between the cuts (after each activation followed by a parameterised layer
    /// when no cut is explicit), its parameters named by block and layer.
    private NestedProgram ChainProgram(ILoss loss)
    {
        var layers = pieces.Select(p => ((LayerOperation)p.Operation).Layer).ToList();
        var explicitCuts = pieces.Select((p, i) => (p, i)).Where(x => cuts.Contains(x.p)).Select(x => x.i + 1).Where(c => c < layers.Count).ToList();
        var ends = explicitCuts.Count == 0 ? DefaultCuts(layers) : explicitCuts;
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
    private static List<int> DefaultCuts(List<ILayer> layers)
    {
        var ends = new List<int>();
        for (int i = 0; i < layers.Count; i++)
        {
            if (layers[i] is not ActivationLayer) continue;
            if (layers.Skip(i + 1).Any(l => l.Parameters.Count > 0)) ends.Add(i + 1);
        }
        return ends;
    }

    private NestedProgram GraphProgram(ILoss loss, List<Piece> used)
    {
        var value = new Dictionary<Piece, int>();
        for (int i = 0; i < used.Count; i++) value[used[i]] = i + 1;
        var parameterIndex = new Dictionary<ParameterRef, int>();
        var specs = new List<ParameterSpec>();
        var names = new List<string>();
        var bufferSpecs = new List<BufferSpec>();
        var bufferNames = new List<string>();
        var nodes = new List<Node>();
        var nodeNames = Unique(used.Select(p => p.Name).ToList());
        foreach (var (p, i) in used.Select((p, i) => (p, i)))
        {
            var parameters = p.Parameters.Select(r =>
            {
                if (!parameterIndex.TryGetValue(r, out var index))
                {
                    parameterIndex[r] = index = specs.Count;
                    specs.Add(r.Spec);
                    names.Add(r.Name);
                }
                return index;
            }).ToArray();
            var buffers = p.Operation.Buffers.Select(b =>
            {
                bufferSpecs.Add(b);
                bufferNames.Add($"{nodeNames[i]}.{b.Name}");
                return bufferSpecs.Count - 1;
            }).ToArray();
            nodes.Add(new Node(i + 1, p.Operation, p.Inputs.Select(x => x is null ? 0 : value[x]).ToArray(), parameters, buffers, nodeNames[i]));
        }
        var explicitCuts = used.Where(cuts.Contains).Select(p => value[p]).Where(v => v < used.Count).ToList();
        List<int> chosen;
        if (explicitCuts.Count > 0) chosen = explicitCuts;
        else
        {
            // Residual sums and unrolled steps; and top-level activations a parameterised node
            // follows, where the segment ending there would hold parameters (not a ReLU right after
            // an RNN's last state, say).
            var candidates = new SortedSet<int>(used.Where(p => p.Boundary).Select(p => value[p]).Where(v => v < used.Count));
            for (int i = 0; i < used.Count; i++)
                if (used[i].Operation is LayerOperation { Layer: ActivationLayer } && !used[i].Name.Contains('.')
                    && used.Skip(i + 1).Any(p => p.Parameters.Length > 0)) candidates.Add(i + 1);
            chosen = new List<int>();
            foreach (var v in candidates)
                if (used[v - 1].Boundary || HoldsParameters(v)) chosen.Add(v);

            bool HoldsParameters(int target)
            {
                var stack = new Stack<int>(new[] { target });
                var seen = new HashSet<int>();
                while (stack.Count > 0)
                {
                    var v = stack.Pop();
                    if (!seen.Add(v)) continue;
                    var piece = used[v - 1];
                    if (piece.Parameters.Length > 0) return true;
                    foreach (var input in piece.Inputs)
                        if (input is not null && !chosen.Contains(value[input])) stack.Push(value[input]);
                }
                return false;
            }
        }
        return new NestedProgram(InputShape, nodes, chosen, loss, specs, Unique(names), bufferSpecs, Unique(bufferNames));
    }

    /// Names made unique by numbering repeats (two branches built from one value both name their
    /// first dense layer dense1): the second is "dense1#2".
    private static List<string> Unique(List<string> names)
    {
        var seen = new Dictionary<string, int>();
        return names.Select(n =>
        {
            seen[n] = seen.GetValueOrDefault(n) + 1;
            return seen[n] == 1 ? n : $"{n}#{seen[n]}";
        }).ToList();
    }
}

/// A block with one set of weights, applied several times with `Net.Apply(block)` (weight tying).
/// Built on the first input shape it is applied to; every later application must have that shape.
public sealed class SharedBlock
{
    private readonly Func<Net, Net> body;
    private (long[] Shape, Net.Piece Input, Net.Piece[] Pieces, Net.Piece Output)? built;

    internal SharedBlock(Func<Net, Net> body, string name)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Contains('.')) throw new ArgumentException($"Invalid shared block name '{name}' (expected a word without dots).");
        this.body = body;
        Name = name;
    }

    public string Name { get; }

    internal (Net.Piece Input, Net.Piece[] Pieces, Net.Piece Output) Template(long[] shape)
    {
        if (built is { } b)
        {
            if (!b.Shape.SequenceEqual(shape))
                throw new ArgumentException($"The shared block {Name} was built for [{Shapes.Show(b.Shape)}] and cannot take [{Shapes.Show(shape)}].");
            return (b.Input, b.Pieces, b.Output);
        }
        var (input, net) = Net.StandIn(shape, Name);
        var result = body(net);
        var output = Net.HeadOf(result) ?? throw new ArgumentException($"The shared block {Name} adds no layer.");
        if (output == input) throw new ArgumentException($"The shared block {Name} adds no layer.");
        var pieces = Net.PiecesOf(result).Where(p => !p.Placeholder).ToArray();
        built = (shape, input, pieces, output);
        return (input, pieces, output);
    }
}
