using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Programs;

/// One nesting level f_l of the program: the layers between two cuts. Lifting introduces a state
/// for the output of every block but the last.
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

/// An immutable nested program ŷ = f_L(… f_1(x; w_1) …; w_L) with a loss ℓ(ŷ, y).
/// Build one with `Net.Input(…)`.
public sealed class NestedProgram
{
    private readonly int[][] parameterIndex; // [block][layer] → first index into the flat weight list

    public NestedProgram(long[] inputShape, IReadOnlyList<Block> blocks, ILoss loss)
    {
        if (blocks.Count == 0) throw new ArgumentException("A program needs at least one block.", nameof(blocks));
        if (!blocks[0].InputShape.SequenceEqual(inputShape))
            throw new ArgumentException($"The first block expects [{Shapes.Show(blocks[0].InputShape)}] but the input is [{Shapes.Show(inputShape)}].");
        for (int l = 1; l < blocks.Count; l++)
            if (!blocks[l - 1].OutputShape.SequenceEqual(blocks[l].InputShape))
                throw new ArgumentException($"Block {l + 1} expects [{Shapes.Show(blocks[l].InputShape)}] but block {l} produces [{Shapes.Show(blocks[l - 1].OutputShape)}].");
        InputShape = inputShape;
        Blocks = blocks;
        Loss = loss;
        parameterIndex = new int[blocks.Count][];
        int next = 0;
        var specs = new List<(int Block, int Layer, ParameterSpec Spec)>();
        for (int l = 0; l < blocks.Count; l++)
        {
            parameterIndex[l] = new int[blocks[l].Layers.Count + 1];
            for (int j = 0; j < blocks[l].Layers.Count; j++)
            {
                parameterIndex[l][j] = next;
                foreach (var spec in blocks[l].Layers[j].Parameters) { specs.Add((l, j, spec)); next++; }
            }
            parameterIndex[l][blocks[l].Layers.Count] = next;
        }
        ParameterSpecs = specs.Select(s => s.Spec).ToArray();
        // "block1.dense(64→128).weight"; a layer repeated within its block (dense(256→256) twice)
        // is numbered from its second occurrence on: "block1.dense(256→256)#2.weight".
        var layerNames = blocks.Select(b =>
        {
            var seen = new Dictionary<string, int>();
            return b.Layers.Select(layer =>
            {
                seen[layer.Name] = seen.GetValueOrDefault(layer.Name) + 1;
                return seen[layer.Name] == 1 ? layer.Name : $"{layer.Name}#{seen[layer.Name]}";
            }).ToArray();
        }).ToArray();
        ParameterNames = specs.Select(s => $"block{s.Block + 1}.{layerNames[s.Block][s.Layer]}.{s.Spec.Name}").ToArray();
    }

    public long[] InputShape { get; }
    public IReadOnlyList<Block> Blocks { get; }
    public ILoss Loss { get; }
    public long[] OutputShape => Blocks[^1].OutputShape;
    /// Every parameter of the program, block by block, layer by layer.
    public IReadOnlyList<ParameterSpec> ParameterSpecs { get; private init; }
    public IReadOnlyList<string> ParameterNames { get; }
    public long ParameterCount => ParameterSpecs.Sum(s => Shapes.Size(s.Shape));

    /// Positions of block l's parameters in the flat parameter list.
    public Range BlockParameters(int block) => parameterIndex[block][0]..parameterIndex[block][^1];

    /// This program with each parameter's initialiser chosen by `choose`, given the parameter's
    /// position in the flat parameter list and its spec (e.g. `Initialisation.Apply`); the blocks,
    /// layers and loss are shared.
    public NestedProgram WithInitialisers(Func<int, ParameterSpec, Initialiser> choose) =>
        new(InputShape, Blocks, Loss) { ParameterSpecs = ParameterSpecs.Select((spec, i) => spec with { Init = choose(i, spec) }).ToArray() };

    /// Fresh parameters from a seed; the same seed gives the same values on every device.
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
        return new Weights(this, tensors);
    }

    /// f_l(h; w_l): block l (0-based) applied to a batch, given that block's own parameters
    /// (`Weights.Block(l)`).
    public Tensor ForwardBlock(int block, Tensor h, IReadOnlyList<Tensor> weights)
    {
        var b = Blocks[block];
        for (int j = 0; j < b.Layers.Count; j++)
        {
            var from = parameterIndex[block][j] - parameterIndex[block][0];
            var count = b.Layers[j].Parameters.Count;
            var layerWeights = count == 0 ? Array.Empty<Tensor>() : Slice(weights, from, count);
            var next = b.Layers[j].Forward(h, layerWeights);
            h = next;
        }
        return h;
    }

    /// The full forward pass φ(x; w), given all parameters (`Weights.Tensors`).
    public Tensor Forward(Tensor x, IReadOnlyList<Tensor> weights)
    {
        var h = x;
        for (int l = 0; l < Blocks.Count; l++) h = ForwardBlock(l, h, BlockWeights(weights, l));
        return h;
    }

    /// Every block output h_1 … h_L of the forward pass (h_L is the program's output).
    public IReadOnlyList<Tensor> ForwardStates(Tensor x, IReadOnlyList<Tensor> weights)
    {
        var states = new Tensor[Blocks.Count];
        var h = x;
        for (int l = 0; l < Blocks.Count; l++) states[l] = h = ForwardBlock(l, h, BlockWeights(weights, l));
        return states;
    }

    /// Block l's slice of a flat parameter list.
    public IReadOnlyList<Tensor> BlockWeights(IReadOnlyList<Tensor> weights, int block)
    {
        if (weights.Count != ParameterSpecs.Count)
            throw new ArgumentException($"Expected {ParameterSpecs.Count} parameter tensors, got {weights.Count}.");
        int from = parameterIndex[block][0];
        return Slice(weights, from, parameterIndex[block][^1] - from);
    }

    private static Tensor[] Slice(IReadOnlyList<Tensor> all, int from, int count)
    {
        var s = new Tensor[count];
        for (int i = 0; i < count; i++) s[i] = all[from + i];
        return s;
    }

    public override string ToString() =>
        $"input [{Shapes.Show(InputShape)}] | " + string.Join(" | ", Blocks.Select(b => b.ToString())) + $" | loss {Loss.Name}";
}

/// The parameters of a program: a flat list of leaf tensors, block by block.
public sealed class Weights : IDisposable
{
    internal Weights(NestedProgram program, IReadOnlyList<Tensor> tensors)
    {
        Program = program;
        Tensors = tensors;
    }

    public NestedProgram Program { get; }
    public IReadOnlyList<Tensor> Tensors { get; }

    /// The tensors of block l.
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
        return new Weights(Program, Tensors.Select(t => t.detach().clone().requires_grad_(t.requires_grad).DetachFromDisposeScope()).ToArray());
    }

    public void Dispose() { foreach (var t in Tensors) t.Dispose(); }
}
