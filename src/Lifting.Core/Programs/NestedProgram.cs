using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Programs;

/// One nesting level f_l of a chain program: the layers between two cuts. Lifting introduces a
/// state for the output of every block but the last.
public sealed class Block
{
    public Block(IReadOnlyList<ILayer> layers)
    {
        if (layers.Count == 0) throw new ArgumentException("A block needs at least one layer.", nameof(layers));
        for (int j = 1; j < layers.Count; j++)
            if (!layers[j - 1].OutputShape.SequenceEqual(layers[j].InputShape))
                throw new ArgumentException($"Layer {layers[j].Name} expects [{Shapes.Show(layers[j].InputShape)}] but {layers[j - 1].Name} produces [{Shapes.Show(layers[j - 1].OutputShape)}].");
        Layers = layers;
    }

    public IReadOnlyList<ILayer> Layers { get; }
    public long[] InputShape => Layers[0].InputShape;
    public long[] OutputShape => Layers[^1].OutputShape;

    /// The block's last layer's activation, if it ends in one (used for state reparametrisation).
    public IActivation? OutputActivation => (Layers[^1] as ActivationLayer)?.Activation;

    public override string ToString() => string.Join(" → ", Layers.Select(l => l.Name));
}

/// A node of a graph program: an operation applied to earlier values, with its parameters and
/// buffers given as indices into the program's tables (a parameter used by several nodes is one
/// tied parameter). A node computes the value with its own number; value 0 is the program's input.
public sealed class Node
{
    internal Node(int value, IOperation operation, IReadOnlyList<int> inputs, IReadOnlyList<int> parameters, IReadOnlyList<int> buffers, string name)
    {
        Value = value;
        Operation = operation;
        Inputs = inputs;
        Parameters = parameters;
        Buffers = buffers;
        Name = name;
        Derivatives = operation is LayerOperation l ? l.Layer as ILocalDerivatives : operation as ILocalDerivatives;
        Activation = (operation is LayerOperation la ? la.Layer as IActivationOperation : operation as IActivationOperation)?.Activation;
        FullyConnected = operation is LayerOperation lf ? lf.Layer as IFullyConnected : operation as IFullyConnected;
    }

    /// The value this node computes (1, 2, …; 0 is the program's input).
    public int Value { get; }
    public IOperation Operation { get; }
    /// The values it reads, in the operation's input order.
    public IReadOnlyList<int> Inputs { get; }
    /// Its parameters as indices into `NestedProgram.ParameterSpecs`, in the operation's order.
    public IReadOnlyList<int> Parameters { get; }
    public IReadOnlyList<int> Buffers { get; }
    /// Hierarchical name, the prefix of its parameters' names (e.g. "res2.dense1").
    public string Name { get; }
    public long[] OutputShape => Operation.OutputShape;
    /// The one-input layer behind an adapted node, or null.
    public ILayer? Layer => (Operation as LayerOperation)?.Layer;
    /// The operation's closed-form local derivatives, when it declares them.
    public ILocalDerivatives? Derivatives { get; }
    /// The activation σ when the node is an elementwise activation.
    public IActivation? Activation { get; }
    /// The dense layout when the node is a fully connected map.
    public IFullyConnected? FullyConnected { get; }

    /// This node computing its value with another operation (same inputs, parameters and name).
    internal Node WithOperation(IOperation operation) => new(Value, operation, Inputs, Parameters, Buffers, Name);

    public override string ToString() => $"{Name} = {Operation.Name}({string.Join(", ", Inputs.Select(i => i == 0 ? "x" : $"v{i}"))})";
}

/// An immutable nested program ŷ = φ(x; w) with a loss ℓ(ŷ, y), as a graph: values with shapes,
/// nodes (operation, input values, parameters), a parameter table keyed by hierarchical names in
/// which a parameter used by several nodes is one tied parameter, and lifted values ("cuts")
/// marked on any value. Build one with `Net.Input(…)`.
///
/// The lifted graph: every cut v and the output have a segment, the nodes from v's nearest lifted
/// ancestors (or the input) to v, so that the constraint of v is g_v = h_v − f_segment(inputs of v)
/// (`Segments`). A chain — every node one layer reading the node before it — is the nested
/// program f_L(… f_1(x; w_1) …; w_L) of the papers, and keeps its blocks (`Blocks`), the parameter
/// names it had before graph programs (block1.dense(64→128).weight) and its training, bit for bit.
public sealed class NestedProgram
{
    private readonly Block[]? blocks;
    private readonly int[][]? parameterIndex; // chains: [block][layer] → first index into the flat weight list

    /// A chain of blocks (each a list of one-input layers), cut between the blocks.
    public NestedProgram(long[] inputShape, IReadOnlyList<Block> blocks, ILoss loss)
    {
        if (blocks.Count == 0) throw new ArgumentException("A program needs at least one block.", nameof(blocks));
        if (!blocks[0].InputShape.SequenceEqual(inputShape))
            throw new ArgumentException($"The first block expects [{Shapes.Show(blocks[0].InputShape)}] but the input is [{Shapes.Show(inputShape)}].");
        for (int l = 1; l < blocks.Count; l++)
            if (!blocks[l - 1].OutputShape.SequenceEqual(blocks[l].InputShape))
                throw new ArgumentException($"Block {l + 1} expects [{Shapes.Show(blocks[l].InputShape)}] but block {l} produces [{Shapes.Show(blocks[l - 1].OutputShape)}].");
        InputShape = inputShape;
        Loss = loss;
        this.blocks = blocks.ToArray();
        parameterIndex = new int[blocks.Count][];
        var specs = new List<ParameterSpec>();
        var names = new List<string>();
        var bufferSpecs = new List<BufferSpec>();
        var bufferNames = new List<string>();
        var nodes = new List<Node>();
        var cuts = new List<int>();
        for (int l = 0; l < blocks.Count; l++)
        {
            // "block1.dense(64→128)"; a layer repeated within its block (dense(256→256) twice) is
            // numbered from its second occurrence on: "block1.dense(256→256)#2".
            var seen = new Dictionary<string, int>();
            parameterIndex[l] = new int[blocks[l].Layers.Count + 1];
            for (int j = 0; j < blocks[l].Layers.Count; j++)
            {
                var layer = blocks[l].Layers[j];
                seen[layer.Name] = seen.GetValueOrDefault(layer.Name) + 1;
                var nodeName = $"block{l + 1}.{(seen[layer.Name] == 1 ? layer.Name : $"{layer.Name}#{seen[layer.Name]}")}";
                parameterIndex[l][j] = specs.Count;
                var operation = new LayerOperation(layer);
                var parameters = new int[layer.Parameters.Count];
                for (int p = 0; p < parameters.Length; p++)
                {
                    parameters[p] = specs.Count;
                    specs.Add(layer.Parameters[p]);
                    names.Add($"{nodeName}.{layer.Parameters[p].Name}");
                }
                var buffers = new int[operation.Buffers.Count];
                for (int b = 0; b < buffers.Length; b++)
                {
                    buffers[b] = bufferSpecs.Count;
                    bufferSpecs.Add(operation.Buffers[b]);
                    bufferNames.Add($"{nodeName}.{operation.Buffers[b].Name}");
                }
                nodes.Add(new Node(nodes.Count + 1, operation, new[] { nodes.Count }, parameters, buffers, nodeName));
            }
            parameterIndex[l][blocks[l].Layers.Count] = specs.Count;
            if (l < blocks.Count - 1) cuts.Add(nodes.Count);
        }
        Nodes = nodes;
        Cuts = cuts;
        ParameterSpecs = specs;
        ParameterNames = names;
        BufferSpecs = bufferSpecs;
        BufferNames = bufferNames;
        Segments = LiftedGraph.Segments(this);
    }

    /// A graph program (from the builder): `nodes` in topological order, each reading earlier
    /// values; `cuts` the lifted values; the output is the last node's value.
    public NestedProgram(long[] inputShape, IReadOnlyList<Node> nodes, IEnumerable<int> cuts, ILoss loss,
        IReadOnlyList<ParameterSpec> parameterSpecs, IReadOnlyList<string> parameterNames,
        IReadOnlyList<BufferSpec> bufferSpecs, IReadOnlyList<string> bufferNames)
    {
        if (nodes.Count == 0) throw new ArgumentException("A program needs at least one node.", nameof(nodes));
        InputShape = inputShape;
        Nodes = nodes.ToArray();
        Loss = loss;
        ParameterSpecs = parameterSpecs.ToArray();
        ParameterNames = parameterNames.ToArray();
        BufferSpecs = bufferSpecs.ToArray();
        BufferNames = bufferNames.ToArray();
        Cuts = cuts.Distinct().OrderBy(c => c).ToArray();
        Validate();
        (blocks, parameterIndex) = ChainBlocks();
        Segments = LiftedGraph.Segments(this);
    }

    private NestedProgram(NestedProgram other, IReadOnlyList<ParameterSpec> specs, IReadOnlyList<int> cuts)
    {
        InputShape = other.InputShape;
        Nodes = other.Nodes;
        Loss = other.Loss;
        ParameterSpecs = specs;
        ParameterNames = other.ParameterNames;
        BufferSpecs = other.BufferSpecs;
        BufferNames = other.BufferNames;
        Cuts = cuts;
        (blocks, parameterIndex) = ChainBlocks();
        Segments = LiftedGraph.Segments(this);
    }

    public long[] InputShape { get; }
    public ILoss Loss { get; }
    /// Every node, in topological order; node i computes value i + 1.
    public IReadOnlyList<Node> Nodes { get; }
    /// The lifted values, ascending (the chain's block outputs but the last).
    public IReadOnlyList<int> Cuts { get; }
    /// The lifted graph: one segment per cut, in the cuts' order, then the output's.
    public IReadOnlyList<Segment> Segments { get; }
    /// The value the loss reads.
    public int OutputValue => Nodes.Count;
    public long[] OutputShape => Nodes[^1].OutputShape;

    /// The shape of value `value` (0: the input).
    public long[] ValueShape(int value) => value == 0 ? InputShape : Nodes[value - 1].OutputShape;

    /// The node computing `value` (value ≥ 1).
    public Node NodeOf(int value) => Nodes[value - 1];

    /// True when the program is a chain of one-input layers (then `Blocks` is defined).
    public bool IsChain => blocks is not null;

    /// A chain's blocks f_1 … f_L (the layers between its cuts); a graph program has segments instead.
    public IReadOnlyList<Block> Blocks => blocks
        ?? throw new InvalidOperationException("This program is a graph, not a chain of blocks; use Segments (one per lifted value and the output).");

    /// Every parameter of the program (a tied parameter once).
    public IReadOnlyList<ParameterSpec> ParameterSpecs { get; }
    public IReadOnlyList<string> ParameterNames { get; }
    public long ParameterCount => ParameterSpecs.Sum(s => Shapes.Size(s.Shape));
    /// True when some operation computes differently in training and evaluation or draws random
    /// numbers (batch normalisation, dropout): then the program runs through a `ForwardPass`.
    public bool HasModes => Nodes.Any(n => n.Operation.HasMode);

    /// Tensors the operations keep that are not parameters (running statistics).
    public IReadOnlyList<BufferSpec> BufferSpecs { get; }
    public IReadOnlyList<string> BufferNames { get; }

    /// Positions of a chain's block l's parameters in the flat parameter list.
    public Range BlockParameters(int block) => ChainIndex()[block][0]..ChainIndex()[block][^1];

    /// This program with each parameter's initialiser chosen by `choose`, given the parameter's
    /// position in the flat parameter list and its spec (e.g. `Initialisation.Apply`).
    public NestedProgram WithInitialisers(Func<int, ParameterSpec, Initialiser> choose) =>
        new(this, ParameterSpecs.Select((spec, i) => spec with { Init = choose(i, spec) }).ToArray(), Cuts);

    /// The same program lifted at other values (names, parameters and initialisers unchanged).
    public NestedProgram WithCuts(IEnumerable<int> cuts)
    {
        var sorted = cuts.Distinct().OrderBy(c => c).ToArray();
        foreach (var c in sorted)
            if (c < 1 || c >= OutputValue) throw new ArgumentException($"Invalid cut: value {c} (expected a value of the program between 1 and {OutputValue - 1}).");
        return new NestedProgram(this, ParameterSpecs, sorted);
    }

    /// Fresh parameters (and buffers) from a seed; the same seed gives the same values on every device.
    public Weights Initialise(int seed, Device? device = null, ScalarType dtype = ScalarType.Float32)
    {
        device ??= CPU;
        using var generator = new Generator((ulong)seed);
        using var scope = NewDisposeScope();
        var tensors = ParameterSpecs.Select(spec =>
        {
            var t = spec.Init(spec.Shape, generator, dtype, device).detach().requires_grad_(true);
            return t.DetachFromDisposeScope();
        }).ToArray();
        var buffers = BufferSpecs.Select(spec => spec.Init(spec.Shape, dtype, device).detach().DetachFromDisposeScope()).ToArray();
        return new Weights(this, tensors, buffers);
    }

    /// f_l(h; w_l): a chain's block l (0-based) applied to a batch, given that block's own parameters
    /// (`Weights.Block(l)`).
    public Tensor ForwardBlock(int block, Tensor h, IReadOnlyList<Tensor> weights)
    {
        var index = ChainIndex();
        var b = Blocks[block];
        for (int j = 0; j < b.Layers.Count; j++)
        {
            var from = index[block][j] - index[block][0];
            var count = b.Layers[j].Parameters.Count;
            var layerWeights = count == 0 ? Array.Empty<Tensor>() : Slice(weights, from, count);
            h = b.Layers[j].Forward(h, layerWeights);
        }
        return h;
    }

    /// The full forward pass φ(x; w), given all parameters (`Weights.Tensors`); programs with buffers
    /// or randomness (batch normalisation, dropout) need a pass (`ForwardPass.Evaluation(weights)`).
    public Tensor Forward(Tensor x, IReadOnlyList<Tensor> weights, ForwardPass? pass = null)
    {
        CheckWeights(weights);
        var values = new Tensor[Nodes.Count + 1];
        values[0] = x;
        foreach (var node in Nodes) values[node.Value] = ApplyTo(node, values, weights, pass);
        return values[^1];
    }

    /// The value of every segment of the forward pass, in segment order (for a chain the block
    /// outputs h_1 … h_L; the last is the program's output).
    public IReadOnlyList<Tensor> ForwardStates(Tensor x, IReadOnlyList<Tensor> weights, ForwardPass? pass = null)
    {
        CheckWeights(weights);
        var values = new Tensor[Nodes.Count + 1];
        values[0] = x;
        foreach (var node in Nodes) values[node.Value] = ApplyTo(node, values, weights, pass);
        return Segments.Select(s => values[s.Value]).ToArray();
    }

    /// A chain's block l's slice of a flat parameter list.
    public IReadOnlyList<Tensor> BlockWeights(IReadOnlyList<Tensor> weights, int block)
    {
        CheckWeights(weights);
        var index = ChainIndex();
        int from = index[block][0];
        return Slice(weights, from, index[block][^1] - from);
    }

    /// Node `node` applied to the values computed so far.
    internal Tensor ApplyTo(Node node, IReadOnlyList<Tensor> values, IReadOnlyList<Tensor> weights, ForwardPass? pass)
    {
        var inputs = new Tensor[node.Inputs.Count];
        for (int i = 0; i < inputs.Length; i++) inputs[i] = values[node.Inputs[i]];
        return Apply(node, inputs, weights, pass);
    }

    internal Tensor Apply(Node node, Tensor[] inputs, IReadOnlyList<Tensor> weights, ForwardPass? pass)
    {
        var parameters = node.Parameters.Count == 0 ? Array.Empty<Tensor>() : new Tensor[node.Parameters.Count];
        for (int p = 0; p < parameters.Length; p++) parameters[p] = weights[node.Parameters[p]];
        if (node.Operation is LayerOperation layer) return layer.Layer.Forward(inputs[0], parameters);
        IReadOnlyList<Tensor> buffers = Array.Empty<Tensor>();
        if (node.Buffers.Count > 0)
        {
            if (pass is null)
                throw new InvalidOperationException($"{node.Name} ({node.Operation.Name}) keeps buffers: evaluate the program through a ForwardPass (ForwardPass.Evaluation(weights)).");
            buffers = node.Buffers.Select(b => pass.Buffers[b]).ToArray();
        }
        return node.Operation.Forward(inputs, parameters, new OperationContext(pass, node.Value, buffers));
    }

    private void CheckWeights(IReadOnlyList<Tensor> weights)
    {
        if (weights.Count != ParameterSpecs.Count)
            throw new ArgumentException($"Expected {ParameterSpecs.Count} parameter tensors, got {weights.Count}.");
    }

    private int[][] ChainIndex() => parameterIndex
        ?? throw new InvalidOperationException("This program is a graph, not a chain of blocks; use Segments (one per lifted value and the output).");

    private static Tensor[] Slice(IReadOnlyList<Tensor> all, int from, int count)
    {
        var s = new Tensor[count];
        for (int i = 0; i < count; i++) s[i] = all[from + i];
        return s;
    }

    private void Validate()
    {
        for (int i = 0; i < Nodes.Count; i++)
        {
            var node = Nodes[i];
            if (node.Value != i + 1) throw new ArgumentException($"Node {node.Name} computes value {node.Value}; expected {i + 1} (nodes in order).");
            var shapes = node.Operation.InputShapes;
            if (shapes.Count != node.Inputs.Count)
                throw new ArgumentException($"{node.Name} ({node.Operation.Name}) takes {shapes.Count} input(s), given {node.Inputs.Count}.");
            for (int k = 0; k < node.Inputs.Count; k++)
            {
                var input = node.Inputs[k];
                if (input < 0 || input > i) throw new ArgumentException($"{node.Name} reads value {input}, which is not computed before it.");
                if (!ValueShape(input).SequenceEqual(shapes[k]))
                    throw new ArgumentException($"{node.Name} ({node.Operation.Name}) expects [{Shapes.Show(shapes[k])}] as input {k + 1} but receives [{Shapes.Show(ValueShape(input))}].");
            }
            if (node.Parameters.Count != node.Operation.Parameters.Count)
                throw new ArgumentException($"{node.Name} declares {node.Operation.Parameters.Count} parameter(s), given {node.Parameters.Count}.");
            for (int p = 0; p < node.Parameters.Count; p++)
            {
                var index = node.Parameters[p];
                if (index < 0 || index >= ParameterSpecs.Count) throw new ArgumentException($"{node.Name}: parameter index {index} is outside the table.");
                if (!ParameterSpecs[index].Shape.SequenceEqual(node.Operation.Parameters[p].Shape))
                    throw new ArgumentException($"{node.Name} ties parameter '{ParameterNames[index]}' of shape [{Shapes.Show(ParameterSpecs[index].Shape)}] to its [{Shapes.Show(node.Operation.Parameters[p].Shape)}] '{node.Operation.Parameters[p].Name}'.");
            }
        }
        if (ParameterNames.Count != ParameterSpecs.Count) throw new ArgumentException("Every parameter needs a name.");
        var twice = ParameterNames.GroupBy(n => n).FirstOrDefault(g => g.Count() > 1);
        if (twice is not null) throw new ArgumentException($"Two parameters are named '{twice.Key}'.");
        foreach (var c in Cuts)
            if (c < 1 || c >= OutputValue) throw new ArgumentException($"Invalid cut: value {c} (expected a value of the program between 1 and {OutputValue - 1}).");
    }

    /// The blocks of a chain (every node one layer reading the node before it, no tied parameter),
    /// or null for a graph.
    private (Block[]?, int[][]?) ChainBlocks()
    {
        var parameterUses = new int[ParameterSpecs.Count];
        for (int i = 0; i < Nodes.Count; i++)
        {
            var node = Nodes[i];
            if (node.Layer is null || node.Inputs.Count != 1 || node.Inputs[0] != i) return (null, null);
            foreach (var p in node.Parameters) if (++parameterUses[p] > 1) return (null, null);
            if (node.Parameters.Count > 0 && node.Parameters.Where((p, k) => k > 0 && p != node.Parameters[k - 1] + 1).Any()) return (null, null);
        }
        // Parameters in node order, contiguous.
        int next = 0;
        foreach (var node in Nodes)
            foreach (var p in node.Parameters)
                if (p != next++) return (null, null);
        var ends = Cuts.Append(OutputValue).ToArray();
        var result = new Block[ends.Length];
        var index = new int[ends.Length][];
        int start = 0;
        for (int l = 0; l < ends.Length; l++)
        {
            var layers = Nodes.Skip(start).Take(ends[l] - start).ToArray();
            result[l] = new Block(layers.Select(n => n.Layer!).ToArray());
            index[l] = new int[layers.Length + 1];
            int first = layers.SelectMany(n => n.Parameters).DefaultIfEmpty(-1).First();
            int cursor = first >= 0 ? first : Nodes.Take(start).SelectMany(n => n.Parameters).Count();
            for (int j = 0; j < layers.Length; j++)
            {
                index[l][j] = cursor;
                cursor += layers[j].Parameters.Count;
            }
            index[l][layers.Length] = cursor;
            start = ends[l];
        }
        return (result, index);
    }

    public override string ToString() => IsChain
        ? $"input [{Shapes.Show(InputShape)}] | " + string.Join(" | ", Blocks.Select(b => b.ToString())) + $" | loss {Loss.Name}"
        : $"input [{Shapes.Show(InputShape)}] | " + string.Join(" | ", Segments.Select(s => s.ToString())) + $" | loss {Loss.Name}";
}

/// The parameters of a program: a flat list of leaf tensors (a tied parameter once), plus the
/// program's buffers (running statistics), which training updates without a gradient.
public sealed class Weights : IDisposable
{
    internal Weights(NestedProgram program, IReadOnlyList<Tensor> tensors, IReadOnlyList<Tensor>? buffers = null)
    {
        Program = program;
        Tensors = tensors;
        Buffers = buffers ?? Array.Empty<Tensor>();
    }

    public NestedProgram Program { get; }
    public IReadOnlyList<Tensor> Tensors { get; }
    /// The program's buffers, in `NestedProgram.BufferSpecs` order (empty for most programs).
    public IReadOnlyList<Tensor> Buffers { get; }

    /// The tensors of a chain's block l.
    public IReadOnlyList<Tensor> Block(int l)
    {
        var r = Program.BlockParameters(l);
        var (start, length) = r.GetOffsetAndLength(Tensors.Count);
        return Tensors.Skip(start).Take(length).ToArray();
    }

    /// A detached deep copy (for checkpoints and comparisons).
    public Weights Clone()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        return new Weights(Program,
            Tensors.Select(t => t.detach().clone().requires_grad_(t.requires_grad).DetachFromDisposeScope()).ToArray(),
            Buffers.Select(t => t.detach().clone().DetachFromDisposeScope()).ToArray());
    }

    public void Dispose()
    {
        foreach (var t in Tensors) t.Dispose();
        foreach (var t in Buffers) t.Dispose();
    }
}
