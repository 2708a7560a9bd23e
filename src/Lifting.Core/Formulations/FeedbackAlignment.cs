using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Formulations;

/// Which signal a feedback-alignment backward pass sends below a layer with parameters.
public enum FeedbackKind
{
    /// Feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016): a fixed random B_l in place of W_lᵀ.
    Random,
    /// Sign-symmetric feedback (Liao, Leibo & Poggio 2016): sign(W_l)ᵀ·mean|W_l|, recomputed every step.
    SignSymmetric,
    /// Direct feedback alignment (Nøkland 2016): the output error straight to every hidden layer through a fixed random B_l.
    Direct,
}

/// One weight of a program seen by a feedback-alignment pass: the nodes that use it (one, or every
/// step of an unrolled cell), its number from the input, its first parameter (the weight), and for
/// direct feedback alignment the value where each use receives the output error (after the
/// activations that directly follow the node, or the node's own output) and that value's shape.
public sealed record FeedbackSite(int Number, IReadOnlyList<int> Nodes, IOperation Definition, int FirstParameter, IReadOnlyList<int> InjectionValues, long[] InjectionShape)
{
    /// The value of the first node using the weight.
    public int Node => Nodes[0];
}

/// Feedback alignment: back-propagation's backward pass with a per-layer rule for the one thing it
/// changes, the signal a layer with parameters sends to its input. With ℓ the batch's mean loss,
/// a_l = W_l h_{l−1} + b_l, h_l = σ(a_l) and e = ∂ℓ/∂ŷ at the output:
///
///   back-propagation             δ_l = (W_{l+1}ᵀ δ_{l+1}) ⊙ σ'(a_l)
///   FA (Lillicrap et al. 2016)   δ_l = (B_{l+1} δ_{l+1}) ⊙ σ'(a_l),  B_{l+1} fixed random, drawn once
///   sign-symmetric (Liao et al. 2016)   B_{l+1} = sign(W_{l+1})ᵀ · mean|W_{l+1}|, recomputed every step
///   DFA (Nøkland 2016)           δ_l = (B_l e) ⊙ σ'(a_l),  B_l fixed random [size of h_l, size of ŷ]
///
/// and in every case the weight direction is the forward-input outer product ∇W_l = δ_l h_{l−1}ᵀ,
/// ∇b_l = δ_l (summed over the batch); the top layer's δ_L = e ⊙ σ'(a_L) is back-propagation's, so
/// its direction is exact. Activations, pooling and flatten pass the signal through their exact
/// local vector–Jacobian products (a one-layer autograd graph; flatten is a reshape).
///
/// Per layer kind:
/// - dense: FA keeps F_l in the weight's layout [out, in] and sends g F_l below (so B_l = F_lᵀ
///   replaces W_lᵀ); F_l is drawn with the weight's own initialiser (same distribution and scale as
///   W_l at initialisation) from a generator seeded by the run's seed. Sign-symmetric uses
///   F_l = sign(W_l)·mean|W_l|: a positive scale per layer, which leaves every layer's direction
///   unchanged (it multiplies all signals below by one number) and keeps their magnitudes near
///   back-propagation's; Liao et al.'s "uniform sign-concordant feedback" is sign(W) alone. With
///   W_l's entries all ±c, the rule gives W_l exactly.
/// - conv2d: FA's F_l is a fixed random kernel of the conv's weight shape, drawn as above, and the
///   signal below is the conv's own input vector–Jacobian product with F_l in place of the kernel
///   (a transposed convolution); sign-symmetric uses sign(K)·mean|K|. The weight direction is the
///   conv's exact weight VJP at the forward input.
/// - DFA: the output error enters each hidden layer l with parameters at the output of the
///   activations that directly follow it (h_l = σ(a_l)): the signal there is B_l e with B_l of shape
///   [flattened size of h_l, size of ŷ] (for a conv layer, the flattened conv output), drawn
///   U(±1/√size of ŷ) like a dense layer's weight of that shape; the activations' VJPs give
///   δ_l = (B_l e) ⊙ σ'(a_l). Layers between two layers with parameters that are not activations
///   (pooling, flatten) see no signal. DFA needs no VJP through any parameter, so it takes any
///   layer with parameters; FA and sign-symmetric need a feedback rule and take dense and conv2d.
///
/// The fixed matrices are shared state of the lifted problem (`shared/feedbackK` in checkpoints,
/// K numbering the layers with parameters from the input); sign-symmetric keeps none. With F_l = W_l
/// FA is back-propagation, and so is DFA on one hidden layer with B_1 = W_2ᵀ.
///
/// The lifted problem reports, per layer with parameters K, `angle-K`: the angle in degrees between
/// the method's direction for that layer's parameters and back-propagation's gradient, on a probe
/// batch (the first 256 training examples) at the end of each epoch (`LayerAngles`).
public sealed class FeedbackAlignment : IFormulation
{
    public FeedbackAlignment(FeedbackKind kind, string? name = null)
    {
        if (!Enum.IsDefined(kind)) throw new ArgumentOutOfRangeException(nameof(kind), $"Invalid feedback kind: {kind}.");
        Kind = kind;
        Name = name ?? DefaultName(kind);
    }

    public FeedbackKind Kind { get; }
    public string Name { get; }

    public string Description => Kind switch
    {
        FeedbackKind.Random => "feedback alignment: backprop's backward pass with each W^T replaced by a fixed random matrix (Lillicrap et al. 2016)",
        FeedbackKind.SignSymmetric => "sign-symmetric feedback: backprop's backward pass with each W^T replaced by sign(W)^T mean|W| (Liao, Leibo & Poggio 2016)",
        _ => "direct feedback alignment: the output error sent to every hidden layer through fixed random matrices (Nøkland 2016)",
    };

    public IReadOnlyList<string> PlayerNames { get; } = new[] { Formulations.PlayerNames.Weights };
    public IReadOnlyList<SubProblem> DefaultSchedule => PlayerNames.Select(p => new SubProblem(new[] { p }, 1)).ToArray();
    public bool HasMaximisingPlayers => false;

    public ILiftedProblem Lift(LiftContext context, Weights weights) => new FeedbackAlignmentProblem(this, context, weights);

    public static string DefaultName(FeedbackKind kind) => kind switch
    {
        FeedbackKind.Random => "fa",
        FeedbackKind.SignSymmetric => "sign-symmetric",
        _ => "dfa",
    };

    /// The weights of the program's nodes with parameters, numbered from 1 at the input (a tied
    /// weight once, with all its uses). Checks that `kind` can send a signal through every node that
    /// needs to: FA and sign-symmetric replace the weight transport of dense and conv2d layers and
    /// pass through batch and layer normalisation exactly; any other node with parameters above the
    /// first is refused by name.
    public static IReadOnlyList<FeedbackSite> Sites(NestedProgram program, FeedbackKind kind)
    {
        var nodes = program.Nodes;
        var consumers = new List<int>[nodes.Count + 1];
        for (int v = 0; v <= nodes.Count; v++) consumers[v] = new List<int>();
        foreach (var node in nodes) foreach (var i in node.Inputs) consumers[i].Add(node.Value);
        // The value where a use of a weight receives DFA's signal: through the activations that
        // directly (and only) follow it.
        int Injection(int value)
        {
            while (consumers[value].Count == 1 && program.NodeOf(consumers[value][0]) is { Activation: not null } next && next.Inputs.Count == 1) value = next.Value;
            return value;
        }
        var byWeight = new Dictionary<int, List<Node>>();
        var order = new List<int>();
        foreach (var node in nodes.Where(n => n.Parameters.Count > 0))
        {
            var key = node.Parameters[0];
            if (!byWeight.TryGetValue(key, out var uses)) { byWeight[key] = uses = new List<Node>(); order.Add(key); }
            uses.Add(node);
        }
        if (order.Count == 0) throw new ArgumentException("Feedback alignment needs a program with at least one layer with parameters; this one has none.");
        var sites = order.Select((key, k) =>
        {
            var uses = byWeight[key];
            var injections = uses.Select(u => Injection(u.Value)).ToArray();
            var shape = program.ValueShape(injections[0]);
            if (injections.Any(v => !program.ValueShape(v).SequenceEqual(shape)))
                throw new ArgumentException($"Direct feedback alignment needs the uses of a tied weight to inject into values of one shape; {uses[0].Name}'s differ.");
            return new FeedbackSite(k + 1, uses.Select(u => u.Value).ToArray(), uses[0].Operation, key, injections, shape);
        }).ToList();
        if (kind != FeedbackKind.Direct)
        {
            var learns = Learns(program);
            foreach (var site in sites)
                foreach (var value in site.Nodes)
                {
                    var node = program.NodeOf(value);
                    if (!node.Inputs.Any(i => learns[i])) continue;
                    if (node.Layer is Dense or Conv2d || node.Operation is BatchNorm or LayerNorm) continue;
                    throw new ArgumentException($"{DefaultName(kind)} sends its signal below dense and conv2d layers only; layer {site.Number} is '{node.Operation.Name}'.");
                }
        }
        return sites;
    }

    /// Whether each value needs a signal: a node with parameters computes it or lies below it.
    private static bool[] Learns(NestedProgram program)
    {
        var learns = new bool[program.Nodes.Count + 1];
        foreach (var node in program.Nodes) learns[node.Value] = node.Parameters.Count > 0 || node.Inputs.Any(i => learns[i]);
        return learns;
    }

    /// Whether each value has a node with parameters among its consumers, transitively (a hidden
    /// site's output does; the top's does not).
    private static bool[] Above(NestedProgram program)
    {
        var above = new bool[program.Nodes.Count + 1];
        for (int j = program.Nodes.Count - 1; j >= 0; j--)
        {
            var node = program.Nodes[j];
            foreach (var i in node.Inputs) above[i] |= node.Parameters.Count > 0 || above[node.Value];
        }
        return above;
    }

    /// The fixed random feedback of each site (null where the kind needs none): FA, for every site
    /// above the first, a tensor of the site's weight shape drawn with the weight's own initialiser;
    /// DFA, for every site below the top, a [flattened injection size, output size] matrix
    /// U(±1/√output size); sign-symmetric, none. Drawn in site order from one generator seeded by `seed`.
    public static Tensor?[] DrawFeedback(NestedProgram program, FeedbackKind kind, int seed, ScalarType dtype, Device device)
    {
        var sites = Sites(program, kind);
        var feedback = new Tensor?[sites.Count];
        if (kind == FeedbackKind.SignSymmetric) return feedback;
        var learns = Learns(program);
        var above = Above(program);
        using var generator = new Generator(FeedbackSeed(seed));
        long outputs = Shapes.Size(program.OutputShape);
        for (int k = 0; k < sites.Count; k++)
        {
            var site = sites[k];
            // FA: a weight whose nodes send a signal below (not the first layer); DFA: a weight below the top.
            if (kind == FeedbackKind.Random && site.Nodes.Any(v => program.NodeOf(v).Inputs.Any(i => learns[i])))
            {
                var spec = program.ParameterSpecs[site.FirstParameter];
                feedback[k] = spec.Init(spec.Shape, generator, dtype, device).detach();
            }
            else if (kind == FeedbackKind.Direct && site.Nodes.All(v => above[v]))
                feedback[k] = Initialisers.UniformFanIn(outputs)(new[] { Shapes.Size(site.InjectionShape), outputs }, generator, dtype, device).detach();
        }
        return feedback;
    }

    /// A generator seed for the feedback matrices, apart from the weights' (which use the seed itself).
    private static ulong FeedbackSeed(int seed) => unchecked((ulong)(uint)seed * 6364136223846793005UL + 1442695040888963407UL);

    /// The rule of the pass: the tensor a dense or conv2d layer's input VJP uses in place of its
    /// weight W (the signal below is g·M for dense, the transposed convolution with kernel M for
    /// conv2d): the fixed F for FA, sign(W)·mean|W| for sign-symmetric.
    public static Tensor FeedbackWeight(FeedbackKind kind, Tensor weight, Tensor? feedback)
    {
        switch (kind)
        {
            case FeedbackKind.Random:
                return feedback ?? throw new ArgumentException("Feedback alignment needs a feedback matrix for every layer with parameters above the first.");
            case FeedbackKind.SignSymmetric:
                using (no_grad())
                {
                    var w = weight.detach();
                    return w.sign().mul_(w.abs().mean());
                }
            default:
                throw new ArgumentException("Direct feedback alignment sends no signal through a layer's weights.");
        }
    }

    /// One forward and one feedback-alignment backward pass on a batch: the weight direction for the
    /// batch's mean loss (one tensor per parameter, in the program's order) and each example's loss.
    /// `feedback` has one entry per site (`Sites`, `DrawFeedback`). On a graph the backward pass
    /// visits the nodes in reverse topological order, a value's signal being the sum its consumers
    /// send; a tied weight sums the directions of its uses, each use's signal below going through
    /// the weight's one feedback.
    public static FeedbackPass Backward(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor labels,
        FeedbackKind kind, IReadOnlyList<Tensor?> feedback, ForwardPass? pass = null)
    {
        if (weights.Count != program.ParameterSpecs.Count)
            throw new ArgumentException($"Expected {program.ParameterSpecs.Count} parameter tensors, got {weights.Count}.");
        var sites = Sites(program, kind);
        if (feedback.Count != sites.Count)
            throw new ArgumentException($"Expected {sites.Count} feedback entries (one per layer with parameters), got {feedback.Count}.");
        var nodes = program.Nodes;
        int n = nodes.Count;
        var siteOf = new FeedbackSite?[n + 1];
        var injection = new int[n + 1];
        Array.Fill(injection, -1);
        foreach (var s in sites)
            foreach (var v in s.Nodes) siteOf[v] = s;
        var learns = Learns(program);
        var above = Above(program);
        if (kind == FeedbackKind.Direct)
            foreach (var s in sites)
                if (feedback[s.Number - 1] is not null)
                    foreach (var v in s.InjectionValues) injection[v] = s.Number - 1;

        IReadOnlyList<Tensor> Params(Node node) => node.Parameters.Select(i => weights[i]).ToArray();

        // Forward pass: every value; a node whose products go through autograd (conv, pooling, a
        // layer without closed-form derivatives, normalisation) keeps a one-node graph.
        var values = new Tensor[n + 1];
        var local = new (Tensor[] Inputs, Tensor Output)?[n + 1];
        values[0] = inputs;
        using (no_grad())
            foreach (var node in nodes)
            {
                var args = node.Inputs.Select(i => values[i]).ToArray();
                bool closed = node.Derivatives is not null && (node.Parameters.Count == 0 || node.Layer is Dense);
                if (closed || !learns[node.Value])
                {
                    values[node.Value] = program.Apply(node, args, weights, pass);
                    continue;
                }
                using (enable_grad())
                {
                    // A node with parameters sends its input signal through its own rule (a separate
                    // graph), unless it is a normalisation layer, whose exact product it uses.
                    bool exactInput = node.Parameters.Count == 0 || node.Operation is BatchNorm or LayerNorm;
                    var leaves = node.Inputs.Select((i, k) => exactInput && learns[i] ? args[k].detach().requires_grad_(true) : args[k].detach()).ToArray();
                    var output = program.Apply(node, leaves, weights, pass);
                    local[node.Value] = (leaves, output);
                    values[node.Value] = output.detach();
                }
            }

        // e = ∂ℓ/∂ŷ of the batch's mean loss (so every direction below is already averaged).
        Tensor perExample, e;
        using (enable_grad())
        {
            var output = values[n].detach().requires_grad_(true);
            var losses = program.Loss.PerExample(output, labels);
            e = autograd.grad(new[] { losses.mean() }, new[] { output })[0].detach();
            perExample = losses.detach();
        }
        var errorRows = e.reshape(e.shape[0], -1);

        var gradients = new Tensor?[weights.Count];
        void AddGradient(int index, Tensor g)
        {
            using var _ = no_grad();
            gradients[index] = gradients[index] is { } sum ? sum.PlusInPlace(g) : g;
        }
        var signals = new Tensor?[n + 1];
        signals[n] = e;
        void Send(int value, Tensor signal) => signals[value] = signals[value] is { } existing ? existing.Plus(signal) : signal;
        for (int j = n - 1; j >= 0; j--)
        {
            var node = nodes[j];
            int v = node.Value;
            if (injection[v] >= 0)
                using (no_grad())
                    // DFA: B_l e arrives at this value, whatever came from above.
                    signals[v] = errorRows.mm(feedback[injection[v]]!.t()).reshape(new[] { e.shape[0] }.Concat(program.ValueShape(v)).ToArray());
            var g = signals[v];
            if (g is null || !learns[v]) continue;
            signals[v] = null;
            bool sendsBelow = kind != FeedbackKind.Direct || node.Parameters.Count == 0;
            if (node.Parameters.Count > 0 && node.Layer is Dense dense)
            {
                using (no_grad())
                {
                    AddGradient(node.Parameters[0], g.t().mm(values[node.Inputs[0]]));
                    if (dense.HasBias) AddGradient(node.Parameters[1], g.sum(0L));
                    if (sendsBelow && learns[node.Inputs[0]])
                        Send(node.Inputs[0], g.mm(FeedbackWeight(kind, weights[node.Parameters[0]], feedback[siteOf[v]!.Number - 1])));
                }
                continue;
            }
            if (node.Parameters.Count == 0 && node.Derivatives is { } derivatives)
            {
                var call = new LocalCall(i => values[node.Inputs[i]], node.Inputs.Count, Array.Empty<Tensor>(), () => values[v]);
                using (no_grad())
                    for (int i = 0; i < node.Inputs.Count; i++)
                        if (learns[node.Inputs[i]]) Send(node.Inputs[i], derivatives.InputVjp(i, call, g));
                continue;
            }
            if (local[v] is not { } graph) continue;
            var (leaves, output) = graph;
            var inputsWanted = Enumerable.Range(0, leaves.Length).Where(i => leaves[i].requires_grad && learns[node.Inputs[i]] && sendsBelow).ToArray();
            var wrt = inputsWanted.Select(i => leaves[i]).Concat(Params(node)).ToArray();
            var vjp = autograd.grad(new[] { output }, wrt, grad_outputs: new[] { g });
            int k = 0;
            foreach (var i in inputsWanted) Send(node.Inputs[i], vjp[k++].detach());
            for (int p = 0; p < node.Parameters.Count; p++, k++) AddGradient(node.Parameters[p], vjp[k].detach());
            if (node.Parameters.Count > 0 && node.Layer is Conv2d && sendsBelow && learns[node.Inputs[0]])
                Send(node.Inputs[0], ConvInputSignal(node.Layer, values[node.Inputs[0]], Params(node), kind, feedback[siteOf[v]!.Number - 1], g));
        }
        using (no_grad())
            for (int i = 0; i < gradients.Length; i++) gradients[i] ??= zeros_like(weights[i]);
        return new FeedbackPass(gradients!, perExample);
    }

    /// The signal below a conv2d layer: its input VJP with the rule's kernel in place of its own.
    private static Tensor ConvInputSignal(ILayer layer, Tensor input, IReadOnlyList<Tensor> parameters, FeedbackKind kind, Tensor? feedback, Tensor g)
    {
        if (layer is not Conv2d) throw new ArgumentException($"{DefaultName(kind)} sends its signal below dense and conv2d layers only, not '{layer.Name}'.");
        var kernel = FeedbackWeight(kind, parameters[0], feedback);
        using var _ = enable_grad();
        var leaf = input.detach().requires_grad_(true);
        var output = layer.Forward(leaf, new[] { kernel, parameters[1].detach() });
        return autograd.grad(new[] { output }, new[] { leaf }, grad_outputs: new[] { g })[0].detach();
    }
}

/// One feedback-alignment pass: the weight direction for the batch's mean loss (one tensor per
/// parameter) and the loss of every example at the forward pass.
public sealed record FeedbackPass(IReadOnlyList<Tensor> Gradients, Tensor Losses);

/// The lifted problem of a feedback-alignment method: the weights and the fixed feedback matrices
/// (shared state, saved in checkpoints as `shared/feedbackK`).
public sealed class FeedbackAlignmentProblem : LiftedProblem
{
    private readonly Tensor?[] feedback;

    internal FeedbackAlignmentProblem(FeedbackAlignment formulation, LiftContext context, Weights weights) : base(formulation, context, weights)
    {
        using var scope = NewDisposeScope(); // the draws' temporaries; the matrices are registered below
        Kind = formulation.Kind;
        Sites = FeedbackAlignment.Sites(context.Program, Kind);
        feedback = FeedbackAlignment.DrawFeedback(context.Program, Kind, context.Seed, context.DType, context.Device);
        for (int k = 0; k < feedback.Length; k++)
            if (feedback[k] is { } b) feedback[k] = AddShared($"feedback{k + 1}", b);
    }

    public FeedbackKind Kind { get; }
    /// The layers with parameters, from the input.
    public IReadOnlyList<FeedbackSite> Sites { get; }
    /// The fixed feedback tensor of each site (null where the method keeps none); owned by the
    /// problem. Tests may overwrite them in place (e.g. with the forward weights).
    public IReadOnlyList<Tensor?> Feedback => feedback;

    public override IBatchGame Batch(MiniBatch batch) => new FeedbackGame(this, batch);

    /// Back-propagation's pass for programs with batch normalisation or dropout.
    internal ForwardPass? TrainingPass(MiniBatch batch) => PassFor(batch, holdFixed: false);

    /// `angle-K` per layer with parameters K: the angle in degrees between this method's direction
    /// and back-propagation's gradient on the probe batch, at the current weights.
    public override IReadOnlyDictionary<string, double> Diagnostics
    {
        get
        {
            using var scope = NewDisposeScope();
            var (x, y) = LayerAngles.ProbeBatch(Context);
            using var measuring = ForwardPass.Measuring(Program, Weights, Context.Seed);
            var pass = FeedbackAlignment.Backward(Program, Weights.Tensors, x, y, Kind, feedback, measuring);
            return LayerAngles.ToBackprop(Program, Weights.Tensors, pass.Gradients, x, y, measuring);
        }
    }

    /// The game on one mini-batch: one player, the weights, whose operator is the feedback-alignment
    /// direction. Nothing is lifted: the lifted objective is the loss.
    private sealed class FeedbackGame : ForwardLossGame
    {
        private readonly FeedbackAlignmentProblem problem;

        public FeedbackGame(FeedbackAlignmentProblem problem, MiniBatch batch)
            : base(problem, batch, problem.TrainingPass(batch), new[] { problem.WeightsPlayer() }) =>
            this.problem = problem;

        public override IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players)
        {
            foreach (var p in players)
                if (p.Name != Formulations.PlayerNames.Weights) throw new ArgumentException($"{problem.Formulation.Name} has no player '{p.Name}'.");
            Tensor[] directions;
            using (var scope = NewDisposeScope())
            {
                var pass = FeedbackAlignment.Backward(problem.Program, problem.Weights.Tensors, Batch.Inputs, Batch.Labels, problem.Kind, problem.feedback, Pass);
                RecordLosses(pass.Losses);
                directions = pass.Gradients.Select(t => t.MoveToOuterDisposeScope()).ToArray();
            }
            return players.Select(_ => (IReadOnlyList<Tensor>)directions).ToArray();
        }

    }
}
