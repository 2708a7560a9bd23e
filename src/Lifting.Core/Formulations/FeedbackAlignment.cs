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

/// One layer with parameters of a chain program, seen by a feedback-alignment pass: its position
/// in the flat layer list, the position of its first parameter, and, for direct feedback alignment,
/// the layer whose output receives the output error (the last of the activations that directly
/// follow it, or the layer itself).
public sealed record FeedbackSite(int Number, int Layer, ILayer Definition, int FirstParameter, int InjectionLayer, long[] InjectionShape);

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

    /// The program's layers in order (flattened over the blocks).
    public static IReadOnlyList<ILayer> Layers(NestedProgram program) => program.Blocks.SelectMany(b => b.Layers).ToArray();

    /// The layers with parameters, numbered from 1 at the input. Checks that `kind` can send a
    /// signal through every one that needs to (FA and sign-symmetric: dense and conv2d layers).
    public static IReadOnlyList<FeedbackSite> Sites(NestedProgram program, FeedbackKind kind)
    {
        var layers = Layers(program);
        var sites = new List<FeedbackSite>();
        int parameter = 0;
        for (int j = 0; j < layers.Count; j++)
        {
            var layer = layers[j];
            if (layer.Parameters.Count > 0)
            {
                int t = j;
                while (t + 1 < layers.Count && layers[t + 1] is ActivationLayer) t++;
                sites.Add(new FeedbackSite(sites.Count + 1, j, layer, parameter, t, layers[t].OutputShape));
            }
            parameter += layer.Parameters.Count;
        }
        if (sites.Count == 0) throw new ArgumentException("Feedback alignment needs a program with at least one layer with parameters; this one has none.");
        if (kind != FeedbackKind.Direct)
            foreach (var s in sites.Skip(1))
                if (s.Definition is not (Dense or Conv2d))
                    throw new ArgumentException($"{DefaultName(kind)} sends its signal below dense and conv2d layers only; layer {s.Number} is '{s.Definition.Name}'.");
        return sites;
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
        using var generator = new Generator(FeedbackSeed(seed));
        long outputs = Shapes.Size(program.OutputShape);
        for (int k = 0; k < sites.Count; k++)
        {
            var site = sites[k];
            if (kind == FeedbackKind.Random && k > 0)
            {
                var spec = program.ParameterSpecs[site.FirstParameter];
                feedback[k] = spec.Init(spec.Shape, generator, dtype, device).detach();
            }
            else if (kind == FeedbackKind.Direct && k < sites.Count - 1)
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
    /// `feedback` has one entry per site (`Sites`, `DrawFeedback`).
    public static FeedbackPass Backward(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor labels,
        FeedbackKind kind, IReadOnlyList<Tensor?> feedback)
    {
        if (weights.Count != program.ParameterSpecs.Count)
            throw new ArgumentException($"Expected {program.ParameterSpecs.Count} parameter tensors, got {weights.Count}.");
        var sites = Sites(program, kind);
        if (feedback.Count != sites.Count)
            throw new ArgumentException($"Expected {sites.Count} feedback entries (one per layer with parameters), got {feedback.Count}.");
        var layers = Layers(program);
        int n = layers.Count;
        var siteAt = new FeedbackSite?[n];
        foreach (var s in sites) siteAt[s.Layer] = s;
        var top = sites[^1];
        int Number(FeedbackSite s) => s.Number - 1;

        // Which layers need the signal at their input: back-propagation's rule (a layer with
        // parameters lies below) for FA and sign-symmetric; for DFA only the layers above the top
        // site and the activations between a site and its injection point.
        var needsInput = new bool[n];
        if (kind == FeedbackKind.Direct)
        {
            for (int j = top.Layer + 1; j < n; j++) needsInput[j] = true;
            foreach (var s in sites)
                for (int j = s.Layer + 1; j <= s.InjectionLayer; j++) needsInput[j] = true;
        }
        else
            for (int j = 1; j < n; j++) needsInput[j] = needsInput[j - 1] || layers[j - 1].Parameters.Count > 0;
        var injection = new int[n];
        Array.Fill(injection, -1);
        if (kind == FeedbackKind.Direct)
            foreach (var s in sites.Take(sites.Count - 1)) injection[s.InjectionLayer] = Number(s);

        IReadOnlyList<Tensor> Params(int j, int first) => Enumerable.Range(first, layers[j].Parameters.Count).Select(i => weights[i]).ToArray();
        var firstParameter = new int[n];
        for (int j = 1; j < n; j++) firstParameter[j] = firstParameter[j - 1] + layers[j - 1].Parameters.Count;

        // Forward pass: every layer's input; layers other than dense and flatten keep a one-layer
        // graph when the backward pass goes through them (their parameters' VJP, their input's VJP).
        var inputsOf = new Tensor[n];
        var local = new (Tensor Input, Tensor Output)?[n];
        var h = inputs;
        using (no_grad())
            for (int j = 0; j < n; j++)
            {
                inputsOf[j] = h;
                var layer = layers[j];
                bool hasParameters = layer.Parameters.Count > 0;
                switch (layer)
                {
                    case Dense: h = F.linear(h, weights[firstParameter[j]], weights[firstParameter[j] + 1]); break;
                    case Flatten: h = h.reshape(h.shape[0], -1); break;
                    default:
                        if (!hasParameters && !needsInput[j]) { h = layer.Forward(h, Array.Empty<Tensor>()); break; }
                        using (enable_grad())
                        {
                            // A layer with parameters sends its input signal through its own rule
                            // (a separate graph), not through this one.
                            var input = needsInput[j] && !hasParameters ? h.detach().requires_grad_(true) : h.detach();
                            var output = layer.Forward(input, Params(j, firstParameter[j]));
                            local[j] = (input, output);
                            h = output.detach();
                        }
                        break;
                }
            }

        // e = ∂ℓ/∂ŷ of the batch's mean loss (so every direction below is already averaged).
        Tensor perExample, e;
        using (enable_grad())
        {
            var output = h.detach().requires_grad_(true);
            var losses = program.Loss.PerExample(output, labels);
            e = autograd.grad(new[] { losses.mean() }, new[] { output })[0].detach();
            perExample = losses.detach();
        }
        var errorRows = e.reshape(e.shape[0], -1);

        var gradients = new Tensor[weights.Count];
        Tensor? g = e;
        for (int j = n - 1; j >= 0; j--)
        {
            var layer = layers[j];
            if (injection[j] >= 0)
            {
                // DFA: B_l e arrives at this layer's output, whatever came from above.
                var b = feedback[injection[j]] ?? throw new ArgumentException($"Direct feedback alignment needs a feedback matrix for layer {injection[j] + 1}.");
                using (no_grad())
                    g = errorRows.mm(b.t()).reshape(new[] { e.shape[0] }.Concat(layer.OutputShape).ToArray());
            }
            if (g is null) continue;
            int first = firstParameter[j];
            var site = siteAt[j];
            switch (layer)
            {
                case Dense:
                    using (no_grad())
                    {
                        gradients[first] = g.t().mm(inputsOf[j]);
                        gradients[first + 1] = g.sum(0L);
                        g = needsInput[j] ? g.mm(FeedbackWeight(kind, weights[first], feedback[Number(site!)])) : null;
                    }
                    break;
                case Flatten:
                    g = needsInput[j] ? g.reshape(inputsOf[j].shape) : null;
                    break;
                default:
                    if (local[j] is not { } graph) { g = null; break; }
                    var (input, output) = graph;
                    bool hasParameters = layer.Parameters.Count > 0;
                    var wrt = (hasParameters ? Params(j, first) : new[] { input }).ToArray();
                    var vjp = autograd.grad(new[] { output }, wrt, grad_outputs: new[] { g });
                    if (hasParameters)
                    {
                        for (int p = 0; p < wrt.Length; p++) gradients[first + p] = vjp[p].detach();
                        g = needsInput[j] ? ConvInputSignal(layer, inputsOf[j], Params(j, first), kind, feedback[Number(site!)], g) : null;
                    }
                    else g = needsInput[j] ? vjp[0].detach() : null;
                    break;
            }
            if (kind != FeedbackKind.Direct && j <= sites[0].Layer) break; // nothing below learns
        }
        using (no_grad())
            for (int i = 0; i < gradients.Length; i++) gradients[i] ??= zeros_like(weights[i]);
        return new FeedbackPass(gradients, perExample);
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

    /// `angle-K` per layer with parameters K: the angle in degrees between this method's direction
    /// and back-propagation's gradient on the probe batch, at the current weights.
    public override IReadOnlyDictionary<string, double> Diagnostics
    {
        get
        {
            using var scope = NewDisposeScope();
            var (x, y) = LayerAngles.ProbeBatch(Context);
            var pass = FeedbackAlignment.Backward(Program, Weights.Tensors, x, y, Kind, feedback);
            return LayerAngles.ToBackprop(Program, Weights.Tensors, pass.Gradients, x, y);
        }
    }

    /// The game on one mini-batch: one player, the weights, whose operator is the feedback-alignment
    /// direction. Nothing is lifted: the lifted objective is the loss.
    private sealed class FeedbackGame : IBatchGame
    {
        private readonly FeedbackAlignmentProblem problem;
        private readonly MiniBatch batch;
        private Tensor? lastLoss;

        public FeedbackGame(FeedbackAlignmentProblem problem, MiniBatch batch)
        {
            this.problem = problem;
            this.batch = batch;
            Players = new[] { problem.WeightsPlayer() };
        }

        public IReadOnlyList<Player> Players { get; }

        public IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players)
        {
            foreach (var p in players)
                if (p.Name != Formulations.PlayerNames.Weights) throw new ArgumentException($"{problem.Formulation.Name} has no player '{p.Name}'.");
            Tensor[] directions;
            using (var scope = NewDisposeScope())
            {
                var pass = FeedbackAlignment.Backward(problem.Program, problem.Weights.Tensors, batch.Inputs, batch.Labels, problem.Kind, problem.feedback);
                lastLoss?.Dispose();
                using (no_grad()) lastLoss = pass.Losses.mean().DetachFromDisposeScope();
                directions = pass.Gradients.Select(t => t.MoveToOuterDisposeScope()).ToArray();
            }
            return players.Select(_ => (IReadOnlyList<Tensor>)directions).ToArray();
        }

        public double Objective()
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            return problem.Program.Loss.PerExample(problem.Program.Forward(batch.Inputs, problem.Weights.Tensors), batch.Labels).mean().ToDouble();
        }

        public IReadOnlyList<double> Defects => Array.Empty<double>();
        public IReadOnlyList<double> MultiplierNorms => Array.Empty<double>();
        public double Loss => lastLoss is null ? double.NaN : lastLoss.ToDouble();
        public double LiftedObjective => Loss;
        public void Commit() { }

        public void Dispose()
        {
            lastLoss?.Dispose();
            lastLoss = null;
        }
    }
}
