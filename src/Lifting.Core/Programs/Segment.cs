using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Programs;

/// A piece of a graph program between lifted values: the nodes computing `Output` from `Inputs`,
/// evaluated in order, with the local derivatives of the whole piece. A node reads values of the
/// piece computed before it or the piece's inputs.
///
/// Local derivatives: when every node declares its closed form (`ILocalDerivatives`), a product is a
/// backward sweep over the nodes, computing a node's forward value only when a product asks for it
/// (a dense layer's input product v W needs none); otherwise autograd through the whole piece, as
/// one local vector–Jacobian product. Signals reaching a value from several consumers add up.
public sealed class LocalGraph
{
    private readonly NestedProgram program;
    private readonly Dictionary<int, int> slot = new(); // value → local slot (inputs first)
    private readonly int[][] inputSlots;                 // per node, the slots of its inputs

    public LocalGraph(NestedProgram program, IReadOnlyList<int> inputs, IReadOnlyList<Node> nodes, int output)
    {
        this.program = program;
        Inputs = inputs.ToArray();
        Nodes = nodes.ToArray();
        Output = output;
        for (int i = 0; i < Inputs.Count; i++) slot[Inputs[i]] = i;
        for (int j = 0; j < Nodes.Count; j++) slot[Nodes[j].Value] = Inputs.Count + j;
        inputSlots = Nodes.Select(n => n.Inputs.Select(v => slot.TryGetValue(v, out var s) ? s
            : throw new ArgumentException($"{n.Name} reads value {v}, which is neither an input of the piece nor computed in it.")).ToArray()).ToArray();
        if (!slot.ContainsKey(output)) throw new ArgumentException($"Value {output} is not computed by the piece.");
        ClosedForm = Nodes.All(n => n.Derivatives is not null);
        Parameters = Nodes.SelectMany(n => n.Parameters).Distinct().OrderBy(p => p).ToArray();
    }

    /// The values the piece reads (0 is the program's input).
    public IReadOnlyList<int> Inputs { get; }
    public IReadOnlyList<Node> Nodes { get; }
    public int Output { get; }
    /// True when every node declares closed-form local derivatives.
    public bool ClosedForm { get; }
    /// The distinct parameters the nodes use, ascending.
    public IReadOnlyList<int> Parameters { get; }

    /// The piece applied to `inputs` (one per `Inputs`), given every parameter of the program.
    public Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> weights, ForwardPass? pass = null)
    {
        var values = Values(inputs);
        for (int j = 0; j < Nodes.Count; j++) values[Inputs.Count + j] = ApplyNode(j, values, weights, pass);
        return values[slot[Output]]!;
    }

    /// (∂Output/∂Inputs[i])ᵀ v for every input i with `wanted[i]`, null for the others.
    public Tensor?[] InputVjps(IReadOnlyList<Tensor> inputs, Tensor v, IReadOnlyList<Tensor> weights, IReadOnlyList<bool> wanted, ForwardPass? pass = null, bool autograd = false)
    {
        if (ClosedForm && !autograd) return Sweep(inputs, v, weights, wanted, null, 0, pass);
        var result = new Tensor?[Inputs.Count];
        var which = Enumerable.Range(0, Inputs.Count).Where(i => wanted[i]).ToArray();
        if (which.Length == 0) return result;
        using var _ = enable_grad();
        var leaves = inputs.Select((t, i) => wanted[i] ? t.detach().requires_grad_(true) : t.detach()).ToArray();
        var output = Forward(leaves, weights, pass);
        var grads = TorchSharp.torch.autograd.grad(new[] { output }, which.Select(i => leaves[i]).ToArray(), new[] { v });
        for (int k = 0; k < which.Length; k++) result[which[k]] = grads[k].detach();
        return result;
    }

    /// into[p] += scale · ∂⟨v, Output⟩/∂w_p for every parameter p the piece uses (`into` holds one
    /// tensor per parameter of the program), summed over the batch; a tied parameter sums its uses.
    public void AddParameterVjp(IReadOnlyList<Tensor> inputs, Tensor v, IReadOnlyList<Tensor> weights, IReadOnlyList<Tensor> into, double scale, ForwardPass? pass = null, bool autograd = false)
    {
        if (ClosedForm && !autograd)
        {
            Sweep(inputs, v, weights, new bool[Inputs.Count], into, scale, pass);
            return;
        }
        var trainable = Parameters.Where(p => weights[p].requires_grad).ToArray();
        if (trainable.Length == 0) return;
        Tensor[] grads;
        using (enable_grad())
        {
            var output = Forward(inputs.Select(t => t.detach()).ToArray(), weights, pass);
            grads = TorchSharp.torch.autograd.grad(new[] { (output * v).sum() }, trainable.Select(p => weights[p]).ToArray(), allow_unused: true).ToArray();
        }
        var alpha = Scalars.Of(scale);
        for (int k = 0; k < trainable.Length; k++)
            if (grads[k] is not null && !grads[k].IsInvalid) into[trainable[k]].add_(grads[k].detach(), alpha: alpha);
    }

    /// The closed-form backward sweep: input products for the wanted inputs and, when `into` is
    /// given, the parameter products.
    private Tensor?[] Sweep(IReadOnlyList<Tensor> inputs, Tensor v, IReadOnlyList<Tensor> weights, IReadOnlyList<bool> wanted, IReadOnlyList<Tensor>? into, double scale, ForwardPass? pass)
    {
        var values = Values(inputs);
        // Which slots need a signal: wanted inputs, and (for parameter products) everything a
        // node with parameters is downstream of... i.e. a node's input needs a signal when it is a
        // wanted input or feeds (through the piece) a node that does.
        int n = Inputs.Count + Nodes.Count;
        var needs = new bool[n];
        for (int i = 0; i < Inputs.Count; i++) needs[i] = wanted[i];
        for (int j = 0; j < Nodes.Count; j++)
        {
            bool self = into is not null && Nodes[j].Parameters.Count > 0;
            needs[Inputs.Count + j] = self || inputSlots[j].Any(s => needs[s]);
        }
        var signals = new Tensor?[n];
        signals[slot[Output]] = v;
        for (int j = Nodes.Count - 1; j >= 0; j--)
        {
            var s = signals[Inputs.Count + j];
            if (s is null) continue;
            var node = Nodes[j];
            var parameters = node.Parameters.Count == 0 ? Array.Empty<Tensor>() : node.Parameters.Select(p => weights[p]).ToArray();
            int k = j;
            var call = new LocalCall(i => Value(inputSlots[k][i]), node.Inputs.Count, parameters, () => Value(Inputs.Count + k));
            if (into is not null && node.Parameters.Count > 0)
                node.Derivatives!.AddParameterVjp(call, s, node.Parameters.Select(p => into[p]).ToArray(), scale);
            for (int i = 0; i < node.Inputs.Count; i++)
            {
                var target = inputSlots[j][i];
                if (!needs[target] || (target < Inputs.Count && !wanted[target])) continue;
                var g = node.Derivatives!.InputVjp(i, call, s);
                signals[target] = signals[target] is { } existing ? existing.Plus(g) : g;
            }
        }
        return Enumerable.Range(0, Inputs.Count).Select(i => wanted[i] ? signals[i] ?? zeros_like(inputs[i]) : null).ToArray();

        Tensor Value(int s)
        {
            if (values[s] is null) values[s] = ApplyNode(s - Inputs.Count, values, weights, pass, lazy: true);
            return values[s]!;
        }
    }

    private Tensor?[] Values(IReadOnlyList<Tensor> inputs)
    {
        if (inputs.Count != Inputs.Count) throw new ArgumentException($"The piece reads {Inputs.Count} value(s), given {inputs.Count}.");
        var values = new Tensor?[Inputs.Count + Nodes.Count];
        for (int i = 0; i < inputs.Count; i++) values[i] = inputs[i];
        return values;
    }

    private Tensor ApplyNode(int j, Tensor?[] values, IReadOnlyList<Tensor> weights, ForwardPass? pass, bool lazy = false)
    {
        var node = Nodes[j];
        var args = new Tensor[node.Inputs.Count];
        for (int i = 0; i < args.Length; i++)
        {
            var s = inputSlots[j][i];
            if (values[s] is null)
            {
                if (!lazy) throw new InvalidOperationException($"Value of slot {s} is not computed.");
                values[s] = ApplyNode(s - Inputs.Count, values, weights, pass, lazy: true);
            }
            args[i] = values[s]!;
        }
        return program.Apply(node, args, weights, pass);
    }

    public override string ToString() => string.Join(" → ", Nodes.Select(n => n.Operation.Name));
}

/// The constraint of one lifted value (or the program's output): the nodes from its nearest
/// lifted ancestors (or the input) to it. For a chain, segment l is block l. The segment's value
/// is h_v = f_v(inputs of v); a formulation says how g_v = h_v − f_v(…) enters its objective.
public sealed class Segment
{
    private LocalGraph? map;

    internal Segment(NestedProgram program, int index, int value, IReadOnlyList<int> inputs, IReadOnlyList<int> inputSegments, IReadOnlyList<Node> nodes, bool isOutput)
    {
        Program = program;
        Index = index;
        Value = value;
        Inputs = inputs;
        InputSegments = inputSegments;
        IsOutput = isOutput;
        Whole = new LocalGraph(program, inputs, nodes, value);
    }

    internal NestedProgram Program { get; }
    /// Position among the segments (topological; the output's is last).
    public int Index { get; }
    /// The lifted value (or the output) this segment computes.
    public int Value { get; }
    /// The lifted values (and 0, the input) it reads, ascending.
    public IReadOnlyList<int> Inputs { get; }
    /// For each input, the index of the segment that computes it, or −1 for the program's input.
    public IReadOnlyList<int> InputSegments { get; }
    /// The segments that read this segment's value (its consumers), ascending.
    public IReadOnlyList<int> Consumers { get; internal set; } = Array.Empty<int>();
    public bool IsOutput { get; }
    public IReadOnlyList<Node> Nodes => Whole.Nodes;
    /// Its distinct parameters, ascending.
    public IReadOnlyList<int> Parameters => Whole.Parameters;
    public long[] OutputShape => Program.ValueShape(Value);
    /// True when it reads nothing but the program's input (its value depends only on the batch and the weights).
    public bool ReadsOnlyInput => Inputs.All(i => i == 0);
    /// The whole segment as a local graph.
    public LocalGraph Whole { get; }

    /// The activation σ of the segment's last node when that node is an elementwise activation
    /// (z = σ(a)), else null (σ is the identity).
    public IActivation? OutputActivation => Nodes[^1].Activation;

    /// The segment without its trailing activation: a = A(inputs), the pre-activation, with
    /// z = σ(a) (`OutputActivation`); the whole segment when it does not end in an activation.
    public LocalGraph Map => map ??= OutputActivation is null ? Whole
        : new LocalGraph(Program, Inputs, Nodes.Take(Nodes.Count - 1).ToArray(), Nodes[^1].Inputs[0]);

    /// The segment's inputs: `x` for the program's input, `values[k]` for the value of segment k.
    public Tensor[] InputsFrom(Tensor x, IReadOnlyList<Tensor> values)
    {
        var inputs = new Tensor[InputSegments.Count];
        for (int i = 0; i < inputs.Length; i++) inputs[i] = InputSegments[i] < 0 ? x : values[InputSegments[i]];
        return inputs;
    }

    /// f_v applied to the values of `Inputs` (one per input, 0 being the batch's inputs).
    public Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> weights, ForwardPass? pass = null) => Whole.Forward(inputs, weights, pass);

    public override string ToString() =>
        $"v{Value} = f({string.Join(", ", Inputs.Select(i => i == 0 ? "x" : $"v{i}"))}): {Whole}";
}

/// The lifted graph of a program: its segments and their consumers.
internal static class LiftedGraph
{
    public static Segment[] Segments(NestedProgram program)
    {
        var lifted = new bool[program.Nodes.Count + 1];
        foreach (var c in program.Cuts) lifted[c] = true;
        var targets = program.Cuts.Append(program.OutputValue).ToArray();
        var producer = new Dictionary<int, int>();
        for (int s = 0; s < targets.Length; s++) producer[targets[s]] = s;
        var segments = new Segment[targets.Length];
        for (int s = 0; s < targets.Length; s++)
        {
            var members = new SortedSet<int>();
            var inputs = new SortedSet<int>();
            var stack = new Stack<int>();
            stack.Push(targets[s]);
            while (stack.Count > 0)
            {
                var v = stack.Pop();
                if (!members.Add(v)) continue;
                foreach (var u in program.NodeOf(v).Inputs)
                {
                    if (u == 0 || lifted[u]) inputs.Add(u);
                    else stack.Push(u);
                }
            }
            var inputList = inputs.ToArray();
            segments[s] = new Segment(program, s, targets[s], inputList, inputList.Select(u => u == 0 ? -1 : producer[u]).ToArray(),
                members.Select(program.NodeOf).ToArray(), isOutput: s == targets.Length - 1);
        }
        for (int s = 0; s < segments.Length; s++)
        {
            segments[s].Consumers = segments.Where(t => t.InputSegments.Contains(s)).Select(t => t.Index).ToArray();
            if (!segments[s].IsOutput && segments[s].Consumers.Count == 0)
            {
                var node = program.NodeOf(segments[s].Value);
                throw new ArgumentException($"The cut at {node.Name} ({node.Operation.Name}) does not reach the output.");
            }
        }
        return segments;
    }
}
