using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Formulations;

/// The μ schedule of seed 004 appendix B: μ starts at `Initial`, grows by `Increment` after every
/// mini-batch (batch-wise increment) and is multiplied by `Multiplier` after every epoch (epoch-wise
/// multiplier), never above `Maximum`. Offline AM (one iteration per epoch) increments once per epoch,
/// before the multiplier.
public sealed record MuSchedule(double Initial = 0.01, double Increment = 0, double Multiplier = 1, double Maximum = double.PositiveInfinity)
{
    public void Validate()
    {
        if (!(Initial > 0) || double.IsInfinity(Initial)) throw new ArgumentOutOfRangeException(nameof(Initial), $"Invalid mu: {Initial} (expected a finite value > 0).");
        if (!(Increment >= 0) || double.IsInfinity(Increment)) throw new ArgumentOutOfRangeException(nameof(Increment), $"Invalid mu increment: {Increment} (expected a finite value >= 0).");
        if (!(Multiplier >= 1) || double.IsInfinity(Multiplier)) throw new ArgumentOutOfRangeException(nameof(Multiplier), $"Invalid mu multiplier: {Multiplier} (expected a finite value >= 1).");
        if (!(Maximum >= Initial)) throw new ArgumentOutOfRangeException(nameof(Maximum), $"Invalid mu maximum: {Maximum} (expected >= the initial mu {Initial}).");
    }

    public double AfterBatch(double mu) => Math.Min(Maximum, mu + Increment);
    public double AfterEpoch(double mu) => Math.Min(Maximum, mu * Multiplier);
}

/// The weight sub-problem of a hidden block whose activation is a step (sign, step): the squared
/// distance to the code, as for every other block (seed 004's binary-net experiment), or the hinge
/// Σ relu(−sign(c) ⊙ f^lin(a)) that only asks the pre-activation to have the code's sign (the
/// perceptron criterion the authors' code offers for non-differentiable networks).
public enum StepBlockLoss { Squared, Hinge }

/// How a block's squared residual ‖c_l − f_l^lin(σ(c_{l−1}))‖² enters Q_μ: summed over the code's
/// units (seed 004 eq. 3 as written), or averaged over them, as the authors' code does (its
/// `F.mse_loss`). With `UnitMean` a block of n_l units weighs μ/n_l, so one μ weighs wide and narrow
/// codes alike, and the authors' code step η at batch B is η/B here.
public enum ResidualScale { Sum, UnitMean }

/// Options of online alternating minimisation.
public sealed record OnlineAlternatingMinimisationOptions
{
    public MuSchedule Mu { get; init; } = new();
    /// AM-mem: hidden blocks solve the co-activation-memory surrogate (seed 004 eq. 7) instead of
    /// the current mini-batch's squared distance (AM-Adam). Needs one fully connected layer per block.
    public bool Memory { get; init; }
    /// AM-Adam-off / AM-mem-off: the training set is one mini-batch; one AM iteration per epoch.
    public bool Offline { get; init; }
    public StepBlockLoss StepBlocks { get; init; } = StepBlockLoss.Squared;
    public ResidualScale Residuals { get; init; } = ResidualScale.Sum;
    /// Code l's sub-problem E_l is scaled by `CodeStepGrowth`^k, k its distance from the top code
    /// (0 for the top code): with one step from the forward values a code moves about η‖∂f‖ times the
    /// code above it, so the move shrinks geometrically down a deep net; a growth above 1 gives lower
    /// codes larger steps. 1 is seed 004's single code step.
    public double CodeStepGrowth { get; init; } = 1;

    public void Validate()
    {
        Mu.Validate();
        if (!(CodeStepGrowth > 0) || double.IsInfinity(CodeStepGrowth))
            throw new ArgumentOutOfRangeException(nameof(CodeStepGrowth), $"Invalid code step growth: {CodeStepGrowth} (expected a finite value > 0).");
    }
}

/// How a segment of the lifted graph splits for alternating minimisation: `Activation` is the run
/// of parameter-free one-input nodes at the segment's end (walking back from its value until a node
/// with parameters or several inputs), `Linear` everything before it. The code of the segment is the
/// output of `Linear` (the pre-activation; for a convolutional block, the convolution's output; for
/// a residual block that ends in an addition, the sum itself). For a chain's block: every layer up
/// to and including the last parameterised one (parameter-free layers before it, such as pooling
/// and flattening, belong to it), and the layers after it. Activations that are steps are replaced
/// by their straight-through versions, which compute the same values and give the code steps a
/// surrogate derivative.
public sealed class BlockSplit
{
    private readonly LocalGraph linear, activation;
    private readonly Node[] denseInput;

    internal BlockSplit(Segment segment)
    {
        Segment = segment;
        if (segment.Parameters.Count == 0)
            throw new ArgumentException($"Online alternating minimisation needs a parameterised layer in every block; block {segment.Index + 1} ({segment.Whole}) has none.");
        var nodes = segment.Nodes.Select(Surrogate).ToArray();
        var byValue = nodes.ToDictionary(n => n.Value);
        // Walk back from the segment's value through parameter-free one-input nodes.
        var chain = new List<Node>();
        int code = segment.Value;
        while (byValue.TryGetValue(code, out var node) && node.Parameters.Count == 0 && node.Inputs.Count == 1 && byValue.ContainsKey(node.Inputs[0]))
        {
            chain.Insert(0, node);
            code = node.Inputs[0];
        }
        CodeValue = code;
        var linearNodes = nodes.Where(n => !chain.Contains(n)).ToArray();
        var activationNodes = chain.ToArray();
        linear = new LocalGraph(segment.Program, segment.Inputs, linearNodes, CodeValue);
        activation = new LocalGraph(segment.Program, new[] { CodeValue }, activationNodes, segment.Value);
        Linear = linearNodes.Select(n => n.Operation).ToArray();
        Activation = activationNodes.Select(n => n.Operation).ToArray();
        StepActivation = chain.Any(n => n.Activation is { Differentiable: false });
        // Co-activation memories need the linear part to be one fully connected layer after
        // parameter-free one-input nodes, reading one input.
        var last = linearNodes[^1];
        if (last.FullyConnected is { HasBias: true } && segment.Inputs.Count == 1 && linearNodes.Count(n => n.Parameters.Count > 0) == 1
            && linearNodes.All(n => n.Inputs.Count == 1))
        {
            Dense = last.FullyConnected;
            denseInput = linearNodes.Take(linearNodes.Length - 1).ToArray();
        }
        else denseInput = Array.Empty<Node>();
    }

    public Segment Segment { get; }
    /// The operations of the linear part and of the activation part, in order.
    public IReadOnlyList<IOperation> Linear { get; }
    public IReadOnlyList<IOperation> Activation { get; }
    /// The value the code stands for.
    public int CodeValue { get; }
    /// The shape of the code (without the batch dimension).
    public long[] CodeShape => Segment.Program.ValueShape(CodeValue);
    /// True when the activation part contains a step (sign, step).
    public bool StepActivation { get; }
    /// The fully connected layer when `Linear` is one after parameter-free layers (co-activation memories need it).
    internal IFullyConnected? Dense { get; }

    private static Node Surrogate(Node node) =>
        node.Activation is { Differentiable: false } step && node.Layer is ActivationLayer layer
            ? node.WithOperation(new LayerOperation(new ActivationLayer(Activations.StraightThrough(step), layer.InputShape)))
            : node;

    /// f^lin(inputs; w): the segment's inputs (one per `Segment.Inputs`), every parameter of the program.
    public Tensor ApplyLinear(Tensor[] inputs, IReadOnlyList<Tensor> weights, ForwardPass? pass = null) => linear.Forward(inputs, weights, pass);

    /// σ(c): the activation part (straight-through for steps).
    public Tensor ApplyActivation(Tensor code, ForwardPass? pass = null) => activation.Forward(new[] { code }, Array.Empty<Tensor>(), pass);

    /// The input of the fully connected layer: the parameter-free layers before it applied to `input`.
    internal Tensor DenseInput(Tensor input)
    {
        var h = input;
        foreach (var node in denseInput) h = Segment.Program.Apply(node, new[] { h }, Array.Empty<Tensor>(), null);
        return h;
    }
}

/// Online alternating minimisation with auxiliary variables (Choromanska et al. 2019; seed 004 §2,
/// Algorithms 1–3; AM-Adam, AM-mem and their offline variants).
///
/// Codes c_l are the pre-activations of the hidden blocks l = 1 … L−1, the outputs of each block's
/// linear part (`BlockSplit`): c_l = f_l^lin(σ_{l−1}(c_{l−1})), with σ_0(c_0) = x and σ_l the block's
/// activation part. On a mini-batch, seed 004 eq. 3 reads
///
///     Q_μ(W, c) = Σ_i [ ℓ(f_L(σ_{L−1}(c_{L−1,i})), y_i) + μ Σ_l w_l ‖c_{l,i} − f_l^lin(σ_{l−1}(c_{l−1,i}))‖² ],
///
/// with w_l = 1 (`ResidualScale.Sum`, eq. 3 as written) or 1/n_l for a code of n_l units
/// (`ResidualScale.UnitMean`, the authors' code).
///
/// The codes are created from the mini-batch's forward pass inside the batch game and die with it:
/// nothing is stored per example. AM alternates over blocks of Q_μ (`AlternatingMinimisationSolver`):
///
/// - code sub-problems (eqs. 4–5), top-down. Because the codes below c_l are still at their forward
///   values when c_l is visited, c_l's own penalty is the distance to its forward value c_l⁰, and
///   each code descends its part of Q_μ divided by μ (the authors' scaling: same minimiser, a step
///   size whose stability does not depend on μ):
///       E_{L−1}(c) = (1/μ) ℓ(f_L(σ(c)), y) + w_{L−1} ‖c − c_{L−1}⁰‖²,
///       E_l(c)     = w_{l+1} ‖c_{l+1} − f_{l+1}^lin(σ(c))‖² + w_l ‖c − c_l⁰‖²   (c_{l+1} already updated);
///   the gradient through a step σ is that of its straight-through surrogate (hard-tanh for sign);
/// - weight sub-problems (eq. 6), independent once the codes are fixed: the output block on the loss,
///   (1/B) Σ_i ℓ(f_L(σ(c_{L−1,i}); W_L), y_i); a hidden block on (w_l/B) Σ_i ‖c_{l,i} − f_l^lin(σ(c_{l−1,i}); W_l)‖²
///   (μ is a constant factor of it), the current mini-batch's codes (AM-Adam), or, with `Memory`,
///   on the surrogate of all codes seen so far, ½ tr(W̃ A W̃ᵀ) − tr(W̃ Bᵀ) with co-activation
///   memories (eq. 7) A ← β_t A + Σ_i ã_i ã_iᵀ, B ← β_t B + Σ_i c_i ã_iᵀ, ã = [a; 1], kept for the run
///   (`StateBytes`), with Mairal et al. (2009)'s mini-batch forgetting factor β_t = (θ + 1 − η)/(θ + 1),
///   θ = tη for t < η and η² + t − η after (η the mini-batch size, t the update count).
///   A hidden block whose activation is a step may use the hinge of `StepBlockLoss` instead.
///
/// The codes take per-example gradients (the engine's convention for per-example players). The
/// authors' code averages each squared residual over the batch and the code's units: that is
/// `UnitMean` with a code step of η/B here for their η at batch B. With summed norms their settings
/// have no single-μ equivalent: a block of n_l units would need μ/n_l, and a hidden code's first
/// step toward the code above it is n_{l+1} times theirs (docs/methods.md, LeNet-5).
///
/// Offline (`Offline`): the training set is one mini-batch, one AM iteration per epoch. The
/// trainer's mini-batches are chunks of it: each chunk's codes are encoded and updated (they are
/// independent across examples), the weight sub-problems' gradients (and memories) are summed over
/// the chunks, and the last chunk of the epoch takes the weight step, one gradient step per block
/// (more would need the epoch's codes again) or BCD sweeps on the epoch's memories.
///
/// For solvers other than the alternating-minimisation solver the game is the gradient of Q_μ
/// (players: weights, codes per example), a quadratic penalty whose states live for one mini-batch.
/// Players: weights (min), codes (min, per example of the mini-batch).
public sealed class OnlineAlternatingMinimisation : IFormulation
{
    public const string CodesPlayer = "codes";

    public OnlineAlternatingMinimisation(OnlineAlternatingMinimisationOptions? options = null, string name = "online-alternating-minimisation")
    {
        Options = options ?? new OnlineAlternatingMinimisationOptions();
        Options.Validate();
        Name = name;
    }

    public OnlineAlternatingMinimisationOptions Options { get; }
    public string Name { get; }
    public string Description =>
        $"{(Options.Offline ? "offline" : "online")} alternating minimisation over per-batch codes (pre-activations), μ‖c_l − W_l σ(c_(l−1))‖², " +
        $"μ from {Options.Mu.Initial} +{Options.Mu.Increment}/batch ×{Options.Mu.Multiplier}/epoch ≤ {Options.Mu.Maximum}; hidden weights on " +
        (Options.Memory ? "co-activation memories (AM-mem)" : "the mini-batch's codes (AM-Adam)");
    public IReadOnlyList<string> PlayerNames { get; } = new[] { Formulations.PlayerNames.Weights, CodesPlayer };
    public bool HasMaximisingPlayers => false;

    /// For the generic alternating solver: the codes, then the weights.
    public IReadOnlyList<SubProblem> DefaultSchedule => new[]
    {
        new SubProblem(new[] { CodesPlayer }, 1),
        new SubProblem(new[] { Formulations.PlayerNames.Weights }, 1),
    };

    /// How each segment of `program` splits into its linear part (whose output is the code) and its
    /// activation part.
    public static IReadOnlyList<BlockSplit> Split(NestedProgram program) =>
        program.Segments.Select(s => new BlockSplit(s)).ToArray();

    /// The weight sub-problems: segments that share a parameter (a tied weight, e.g. an unrolled
    /// recurrent cell) form one sub-problem that sums their local objectives (seed 004 appendix C);
    /// every other segment is its own. Each group lists its segments and its parameters, ascending.
    public static IReadOnlyList<(int[] Segments, int[] Parameters)> WeightGroups(NestedProgram program)
    {
        var segments = program.Segments;
        var parent = Enumerable.Range(0, segments.Count).ToArray();
        int Find(int i) => parent[i] == i ? i : parent[i] = Find(parent[i]);
        var owner = new Dictionary<int, int>();
        foreach (var segment in segments)
            foreach (var p in segment.Parameters)
            {
                if (owner.TryGetValue(p, out var other)) parent[Find(segment.Index)] = Find(other);
                else owner[p] = segment.Index;
            }
        return segments.GroupBy(s => Find(s.Index)).OrderBy(g => g.Min(s => s.Index))
            .Select(g => (g.Select(s => s.Index).OrderBy(i => i).ToArray(), g.SelectMany(s => s.Parameters).Distinct().OrderBy(i => i).ToArray()))
            .ToArray();
    }

    public ILiftedProblem Lift(LiftContext context, Weights weights)
    {
        if (context.Program.Segments.Count < 2)
            throw new ArgumentException("Alternating minimisation needs a program with at least two blocks (one code); add a Cut().");
        var splits = Split(context.Program);
        var groups = WeightGroups(context.Program);
        if (Options.Memory)
        {
            for (int l = 0; l < splits.Count - 1; l++)
                if (splits[l].Dense is null)
                    throw new ArgumentException($"AM-mem needs every hidden block's linear part to be one fully connected layer (after parameter-free layers); block {l + 1}'s is {string.Join(" → ", splits[l].Linear.Select(x => x.Name))}.");
            if (groups.FirstOrDefault(g => g.Segments.Length > 1) is { Segments: { } tied })
                throw new ArgumentException($"AM-mem keeps co-activation memories per block; blocks {string.Join(", ", tied.Select(i => i + 1))} share weights (use am-adam for tied weights).");
        }
        return new Problem(this, context, weights, splits, groups);
    }

    private sealed class Problem : LiftedProblem, ILayerSplittable
    {
        private readonly OnlineAlternatingMinimisationOptions options;
        private readonly Tensor[] memoryA, memoryB;
        private readonly long[] memoryUpdates;
        // Offline: sums over the epoch's chunks of every weight gradient (and of the memories).
        private readonly Tensor[] gradientSums;
        private long seen;

        public Problem(OnlineAlternatingMinimisation formulation, LiftContext context, Weights weights, IReadOnlyList<BlockSplit> splits,
            IReadOnlyList<(int[] Segments, int[] Parameters)> groups)
            : base(formulation, context, weights)
        {
            options = formulation.Options;
            split = new SplitState(context.Program);
            Splits = splits;
            Groups = groups;
            ResidualWeights = splits.Take(splits.Count - 1)
                .Select(b => options.Residuals == ResidualScale.UnitMean ? 1.0 / b.CodeShape.Aggregate(1L, (n, d) => n * d) : 1.0)
                .ToArray();
            Mu = options.Mu.Initial;
            CodeRule = context.StepRuleFor(CodesPlayer);
            int hidden = splits.Count - 1;
            memoryA = new Tensor[options.Memory ? hidden : 0];
            memoryB = new Tensor[memoryA.Length];
            memoryUpdates = new long[memoryA.Length];
            for (int l = 0; l < memoryA.Length; l++)
            {
                var dense = splits[l].Dense!;
                var zerosLike = (long rows, long cols) => zeros(rows, cols, dtype: context.DType, device: context.Device);
                memoryA[l] = AddShared($"A{l + 1}", zerosLike(dense.Inputs + 1, dense.Inputs + 1));
                memoryB[l] = AddShared($"B{l + 1}", zerosLike(dense.Outputs, dense.Inputs + 1));
            }
            gradientSums = options.Offline
                ? weights.Tensors.Select((w, k) => AddShared($"offline.gradient{k}", zeros_like(w))).ToArray()
                : Array.Empty<Tensor>();
        }

        public IReadOnlyList<BlockSplit> Splits { get; }
        /// The weight sub-problems' segments and parameters (`WeightGroups`).
        public IReadOnlyList<(int[] Segments, int[] Parameters)> Groups { get; }
        /// w_l of every hidden block's squared residual (see the class comment).
        public double[] ResidualWeights { get; }
        public double Mu { get; private set; }
        public IStepRule CodeRule { get; }
        public OnlineAlternatingMinimisationOptions Options => options;

        public override IBatchGame Batch(MiniBatch batch) => new Game(this, batch);

        /// A layer-parallel segment's blocks (null: every block) and its link to the neighbours.
        private readonly SplitState split;
        public BlockRange? Range => split.Range;
        public IBoundaryExchange? Link => split.Link;

        public NestedProgram LiftedProgram => Program;

        public string Exchanges => "each AM iteration, the segment below a cut sends the cut's forward codes up (B·H numbers), the segment above sends them down once its code sub-problems have moved them (B·H); then every segment solves its blocks' weight sub-problems concurrently with the others";

        /// Every block's sub-problems read the mini-batch's codes, one row per example.
        public long RowsOf(int block, long batchSize) => batchSize;

        public void Restrict(BlockRange blocks, IBoundaryExchange link) => split.Restrict(blocks, link);

        /// A range's blocks' weights with their step states, co-activation memories and offline
        /// gradient sums.
        public IReadOnlyList<string> Owned(BlockRange blocks) =>
            split.Owned(StateTensors.Keys, blocks, Groups.Where(g => blocks.Contains(g.Segments[0]))
                .SelectMany(g => g.Parameters.Select(k => $"shared/offline.gradient{k}")
                    .Concat(g.Segments.SelectMany(l => new[] { $"shared/A{l + 1}", $"shared/B{l + 1}" }))));

        public IReadOnlyList<string> OwnedScalars(BlockRange blocks) =>
            Enumerable.Range(0, memoryUpdates.Length).Where(blocks.Contains).Select(l => $"memory-updates{l + 1}").ToArray();

        /// A split AM iteration runs the alternating-minimisation solver's protocol on each range:
        /// the forward codes go up a cut, the code updated above it comes down. A block may read
        /// the input, blocks of its own range and the code at its range's lower cut, nothing below;
        /// blocks sharing weights stay in one range.
        public void Validate(IReadOnlyList<BlockRange> ranges, ISolver solver)
        {
            if (solver is not AlternatingMinimisationSolver)
                throw new ArgumentException($"layer-parallel training: {Formulation.Name} splits by blocks under the alternating-minimisation solver only (this method's solver: {solver.Name})");
            split.RequireNeighbouringCuts(ranges);
            foreach (var (group, _) in Groups)
                if (ranges.Count(r => group.Any(r.Contains)) > 1)
                    throw new ArgumentException($"layer-parallel training: blocks {string.Join(", ", group.Select(i => i + 1))} share weights and would fall in different segments (use fewer segments)");
        }

        public override void EndEpoch(int epoch) => Mu = options.Mu.AfterEpoch(Mu);

        public override IReadOnlyDictionary<string, double> Diagnostics => new Dictionary<string, double> { ["mu"] = Mu };

        /// μ, the memories' update counts and offline AM's examples seen this epoch: the schedule
        /// and counters a resumed run must continue from.
        public override IReadOnlyDictionary<string, double> StateScalars
        {
            get
            {
                var scalars = new Dictionary<string, double> { ["mu"] = Mu };
                for (int l = 0; l < memoryUpdates.Length; l++) scalars[$"memory-updates{l + 1}"] = memoryUpdates[l];
                if (options.Offline) scalars["offline-seen"] = seen;
                return scalars;
            }
        }

        public override void RestoreScalars(IReadOnlyDictionary<string, double> scalars)
        {
            base.RestoreScalars(scalars);
            Mu = scalars["mu"];
            for (int l = 0; l < memoryUpdates.Length; l++) memoryUpdates[l] = (long)scalars[$"memory-updates{l + 1}"];
            if (options.Offline) seen = (long)scalars["offline-seen"];
        }

        /// After a mini-batch (online) or the last chunk of the training set (offline).
        public void AfterIteration() => Mu = options.Mu.AfterBatch(Mu);

        /// Updates block l's memories with a mini-batch of inputs ã (with the ones column) and codes.
        public CoActivationMemory UpdateMemory(int l, Tensor augmentedInputs, Tensor codes)
        {
            using var _ = no_grad();
            double eta = augmentedInputs.shape[0], t = ++memoryUpdates[l];
            double theta = t < eta ? t * eta : eta * eta + t - eta;
            double beta = (theta + 1 - eta) / (theta + 1);
            using var forget = beta.ToScalar(); // changes with every update: held for the call, not cached
            memoryA[l].mul_(forget).addmm_(augmentedInputs.t(), augmentedInputs);
            memoryB[l].mul_(forget).addmm_(codes.t(), augmentedInputs);
            return new CoActivationMemory(memoryA[l], memoryB[l]);
        }

        /// Offline: adds a chunk to block l's memories of the epoch (no forgetting: the epoch's codes only).
        public void AccumulateMemory(int l, Tensor augmentedInputs, Tensor codes)
        {
            using var _ = no_grad();
            memoryA[l].addmm_(augmentedInputs.t(), augmentedInputs);
            memoryB[l].addmm_(codes.t(), augmentedInputs);
        }

        public CoActivationMemory Memory(int l) => new(memoryA[l], memoryB[l]);

        /// Offline: adds a chunk's gradient sums; true when the chunk completes the training set.
        public bool Accumulate(IReadOnlyList<(int Index, Tensor Sum)> gradients, long examples)
        {
            using var _ = no_grad();
            foreach (var (k, sum) in gradients) gradientSums[k].PlusInPlace(sum);
            seen += examples;
            if (seen > Context.ExampleCount)
                throw new InvalidOperationException($"Offline alternating minimisation saw {seen} examples in an epoch of {Context.ExampleCount}: one AM iteration per mini-batch, every example once per epoch.");
            return seen == Context.ExampleCount;
        }

        public Tensor GradientSum(int k) => gradientSums[k];

        /// Offline: clears the epoch's sums once the weights have moved.
        public void ResetOffline()
        {
            using var _ = no_grad();
            foreach (var g in gradientSums) g.zero_();
            foreach (var a in memoryA) a.zero_();
            foreach (var b in memoryB) b.zero_();
            seen = 0;
        }
    }

    private sealed class Game : BatchGame, IAlternatingMinimisationGame
    {
        private readonly Problem problem;
        private readonly NestedProgram program;
        /// The step's forward pass (batch statistics and dropout masks of the encoding held).
        private readonly ForwardPass? pass;
        private readonly IReadOnlyList<BlockSplit> splits;
        private readonly IReadOnlyList<Segment> segments;
        private readonly int hidden;
        private readonly double mu;
        private readonly double[] w;
        /// The blocks this game evaluates, [first, end): all of them, or a layer-parallel segment's,
        /// which receives its lower cut's forward code from below and sends it its updated code;
        /// sends its upper cut's forward code up and receives it updated.
        private readonly int first, end;
        private readonly IBoundaryExchange? link;
        private bool topReceived, bottomSent;
        private const string ForwardCode = "forward-code", UpdatedCode = "code";
        private readonly Tensor[] codes;
        private readonly StepState[] codeStates;
        private readonly Player[] codePlayers, groupPlayers;
        // The last encoding: forward values c⁰, the segments' outputs with their graphs (f^lin of the
        // input codes' activations, a first segment from x) and the loss sum, kept to reuse for the
        // first step of each sub-problem whose variables are still where the forward pass left them.
        private readonly List<Tensor> owned = new();
        private Tensor[] forward = Array.Empty<Tensor>(), outputs = Array.Empty<Tensor>();
        private Tensor? lossGraph;
        private bool encoded, graphsValid, stepped;
        private bool[] graphUsed = Array.Empty<bool>();
        // What the weight sub-problems saw, for the iteration's record.
        private readonly double[] penalties, meanDefects;
        private double lossSum;
        private bool completesEpoch;

        public Game(Problem problem, MiniBatch batch) : base(batch)
        {
            this.problem = problem;
            program = problem.Program;
            // Dropout masks held for the step; batch statistics recomputed, with their gradient, in
            // every sub-problem, as the reference code's BatchNorm in training mode does (held
            // statistics cost 6 points on Fashion-MNIST 784-100-100-10, docs/methods.md).
            pass = ForwardPass.For(program, problem.Weights, problem.Context.Seed, batch.Step, holdFixed: true, recomputeStatistics: true);
            splits = problem.Splits;
            segments = program.Segments;
            hidden = splits.Count - 1;
            mu = problem.Mu;
            w = problem.ResidualWeights;
            (first, end) = problem.Range is { } r ? (r.First, r.End) : (0, splits.Count);
            link = problem.Link;
            codes = new Tensor[hidden];
            codeStates = new StepState[hidden];
            penalties = new double[hidden];
            meanDefects = new double[hidden];
            for (int l = 0; l < hidden; l++)
            {
                var shape = new[] { BatchSize }.Concat(splits[l].CodeShape).ToArray();
                codes[l] = zeros(shape, dtype: Batch.Inputs.dtype, device: Batch.Inputs.device).requires_grad_(true);
                codeStates[l] = problem.Context.NewState(CodesPlayer, codes[l], rowIndexed: true);
            }
            codePlayers = Enumerable.Range(0, hidden)
                .Select(l => new Player($"{CodesPlayer}{l + 1}", Role.Minimise, new[] { codes[l] }, problem.CodeRule, new[] { codeStates[l] }, rowIndexed: true))
                .ToArray();
            var weightsPlayer = problem.WeightsPlayer();
            groupPlayers = problem.Groups.Select(g => new Player($"{Formulations.PlayerNames.Weights}{g.Segments[0] + 1}", Role.Minimise,
                g.Parameters.Select(i => weightsPlayer.Variables[i]).ToArray(), weightsPlayer.StepRule,
                g.Parameters.Select(i => weightsPlayer.StepStates[i]).ToArray())).ToArray();
            Players = new[]
            {
                weightsPlayer,
                new Player(CodesPlayer, Role.Minimise, codes, problem.CodeRule, codeStates, rowIndexed: true),
            };
            Encode();
        }

        public override IReadOnlyList<Player> Players { get; }

        private IReadOnlyList<Tensor> Weights => problem.Weights.Tensors;
        /// w_l times block l's summed squared residual (no work when w_l = 1).
        private Tensor Weighted(int l, Tensor residual) => w[l] == 1 ? residual : residual * Scalars.Of(w[l]);

        /// The inputs of segment l: the batch's inputs, or σ of the input codes (detached: a weight
        /// sub-problem sees the codes as data).
        private Tensor[] Input(int l) => Inputs(l, u => splits[u].ApplyActivation(codes[u].detach(), pass));

        private Tensor[] Inputs(int l, Func<int, Tensor> activationOf)
        {
            var sources = segments[l].InputSegments;
            var inputs = new Tensor[sources.Count];
            for (int i = 0; i < inputs.Length; i++) inputs[i] = sources[i] < 0 ? Batch.Inputs : activationOf(sources[i]);
            return inputs;
        }

        /// The output block: its linear part and its activation part (e.g. a softmax before an MSE loss).
        private Tensor Output(Tensor[] inputs) => splits[hidden].ApplyActivation(splits[hidden].ApplyLinear(inputs, Weights, pass), pass);

        /// Q_μ on the batch, for solvers that take the gradient of the whole game.
        protected override Tensor EvaluateSum()
        {
            if (problem.Range is not null)
                throw new InvalidOperationException("A layer-parallel segment of alternating minimisation is stepped by the alternating-minimisation solver only.");
            graphsValid = false; // a generic solver may move the weights: the next AM iteration re-encodes
            var defects = new Tensor[hidden];
            var activations = new Tensor[hidden];
            Tensor penalty = zeros(1, dtype: codes[0].dtype, device: codes[0].device).squeeze();
            for (int l = 0; l < hidden; l++)
            {
                var g = codes[l] - splits[l].ApplyLinear(Inputs(l, u => activations[u]), Weights, pass);
                defects[l] = g;
                penalty = penalty.Plus(Weighted(l, g.Squared().sum()));
                activations[l] = splits[l].ApplyActivation(codes[l], pass);
            }
            var loss = program.Loss.PerExample(Output(Inputs(hidden, u => activations[u])), Batch.Labels).sum();
            Record(loss, defects);
            using var m = mu.ToScalar(); // μ changes with every batch: held for the call, not cached
            return loss.Plus(penalty.mul(m));
        }

        public void Encode()
        {
            if (encoded && graphsValid) return;
            if (stepped && problem.Options.Offline)
                throw new InvalidOperationException("Offline alternating minimisation takes one iteration per chunk of the training set (iterations per batch = 1).");
            DisposeEncoding();
            using var _ = enable_grad();
            forward = new Tensor[hidden];
            outputs = new Tensor[splits.Count];
            var activations = new Tensor[hidden];
            if (first > 0)
            {
                // A segment above the first: the forward code of its lower cut comes from below.
                forward[first - 1] = Keep(link!.Receive(first - 1, ForwardCode));
                using (no_grad()) codes[first - 1].copy_(forward[first - 1]);
                activations[first - 1] = splits[first - 1].ApplyActivation(codes[first - 1], pass);
            }
            for (int l = first; l < Math.Min(end, hidden); l++)
            {
                outputs[l] = Keep(splits[l].ApplyLinear(Inputs(l, u => activations[u]), Weights, pass));
                forward[l] = Keep(outputs[l].detach());
                using (no_grad()) codes[l].copy_(forward[l]);
                activations[l] = splits[l].ApplyActivation(codes[l], pass);
            }
            if (end <= hidden) link!.Send(end - 1, ForwardCode, forward[end - 1]);
            else
            {
                outputs[hidden] = Keep(Output(Inputs(hidden, u => activations[u])));
                lossGraph = Keep(program.Loss.PerExample(outputs[hidden], Batch.Labels).sum());
            }
            topReceived = bottomSent = false;
            using (no_grad())
                foreach (var s in codeStates) foreach (var t in s.Tensors) t.zero_();
            graphUsed = new bool[splits.Count];
            encoded = graphsValid = true;
        }

        private Tensor Keep(Tensor t)
        {
            owned.Add(t.DetachFromDisposeScope());
            return t;
        }

        private void DisposeEncoding()
        {
            foreach (var t in owned) t.Dispose();
            owned.Clear();
            lossGraph = null;
        }

        /// The graph of segment `l`'s output (or of the loss, for the output segment), if the forward
        /// pass left it usable for the current variables: valid, unused, reading one value, and `code`
        /// still equal to its forward value. Each such graph serves one gradient.
        private Tensor? Reusable(int l, Tensor? code, int codeIndex)
        {
            if (!graphsValid || graphUsed[l] || segments[l].Inputs.Count != 1) return null;
            if (code is not null)
            {
                using var __ = no_grad();
                using var same = code.eq(forward[codeIndex]).all();
                if (!same.ToBoolean()) return null;
            }
            graphUsed[l] = true;
            return l == hidden ? lossGraph : outputs[l];
        }

        /// The codes this game updates, top-down: every code of a whole program; in a layer-parallel
        /// segment, the codes its blocks read (its lower cut's too: the blocks reading a code are
        /// the ones its sub-problem needs).
        public IReadOnlyList<CodeProblem> CodeProblems =>
            Enumerable.Range(first - 1, end - first).Where(l => l >= 0 && l < hidden).Reverse()
                .Select(l => new CodeProblem(codePlayers[l], () => { ReceiveTop(); return CodeDirection(l); })).ToArray();

        /// A segment below the last: the code of its upper cut, as the segment above updated it.
        private void ReceiveTop()
        {
            if (end > hidden || topReceived) return;
            using (var c = link!.Receive(end - 1, UpdatedCode))
            using (no_grad()) codes[end - 1].copy_(c);
            topReceived = true;
        }

        /// A segment above the first, once its codes are updated: its lower cut's code goes down.
        private void SendBottom()
        {
            if (first == 0 || bottomSent) return;
            link!.Send(first - 1, UpdatedCode, codes[first - 1].detach());
            bottomSent = true;
        }

        /// ∇E_l at the current code, per example (see the class comment): the terms of every
        /// segment reading the code (the loss, or the code above's residual), plus the distance to
        /// the code's forward value.
        private IReadOnlyList<Tensor> CodeDirection(int l)
        {
            if (!encoded) Encode();
            using var _ = enable_grad();
            var c = codes[l];
            Tensor? objective = null;
            Tensor? own = null;
            foreach (var s in segments[l].Consumers)
            {
                Tensor term;
                if (s == hidden)
                {
                    var loss = Reusable(hidden, c, l)
                        ?? program.Loss.PerExample(Output(Inputs(s, u => u == l ? Own() : splits[u].ApplyActivation(codes[u].detach(), pass))), Batch.Labels).sum();
                    using var m = mu.ToScalar(); // μ changes with every batch: held for the call, not cached
                    term = loss / m;
                }
                else
                {
                    var prediction = Reusable(s, c, l)
                        ?? splits[s].ApplyLinear(Inputs(s, u => u == l ? Own() : splits[u].ApplyActivation(codes[u].detach(), pass)), Weights, pass);
                    term = Weighted(s, (codes[s].detach() - prediction).Squared().sum());
                }
                objective = objective is null ? term : objective.Plus(term);
            }
            objective = objective!.Plus(Weighted(l, (c - forward[l]).Squared().sum()));
            var scale = Math.Pow(problem.Options.CodeStepGrowth, hidden - 1 - l);
            if (scale != 1) objective = objective * Scalars.Of(scale);
            return new[] { autograd.grad(new[] { objective }, new[] { c }).Single().detach() };

            Tensor Own() => own ??= splits[l].ApplyActivation(c, pass);
        }

        public IReadOnlyList<WeightProblem> WeightProblems()
        {
            if (!encoded) Encode();
            ReceiveTop();
            SendBottom();
            var groups = problem.Groups;
            var mine = Enumerable.Range(0, groups.Count).Where(g => groups[g].Segments[0] >= first && groups[g].Segments[0] < end).ToArray();
            var problems = mine.Select(g => new WeightProblem(groupPlayers[g], () => LocalGradient(g), MemoryOf(g))).ToArray();
            if (!problem.Options.Offline) return problems;
            // Offline: this chunk's share of every block's gradient (and memory), summed over the epoch.
            var sums = new List<(int, Tensor)>();
            var batchSize = Scalars.Of(BatchSize);
            foreach (var g in mine)
            {
                using var scope = NewDisposeScope();
                if (problem.Options.Memory && groups[g].Segments[0] < hidden)
                {
                    int l = groups[g].Segments[0];
                    var (inputs, target) = MemoryInputs(l);
                    RecordPenalty(l, target, l == 0 ? forward[0] : splits[l].ApplyLinear(Input(l), Weights, pass));
                    problem.AccumulateMemory(l, inputs, target);
                    continue;
                }
                var gradients = LocalGradient(g);
                for (int i = 0; i < gradients.Count; i++)
                    sums.Add((groups[g].Parameters[i], (gradients[i] * batchSize).MoveToOuterDisposeScope()));
            }
            completesEpoch = problem.Accumulate(sums, BatchSize);
            if (!completesEpoch) return Array.Empty<WeightProblem>();
            double n = problem.Context.ExampleCount;
            return mine.Select(g => new WeightProblem(groupPlayers[g], OfflineDirection(g, n),
                () => problem.Options.Memory && groups[g].Segments[0] < hidden ? problem.Memory(groups[g].Segments[0]) : null)).ToArray();
        }

        private Func<IReadOnlyList<Tensor>> OfflineDirection(int g, double examples)
        {
            bool given = false;
            return () =>
            {
                if (given) throw new InvalidOperationException("Offline alternating minimisation takes one gradient step per block and epoch (weight steps = 1).");
                given = true;
                var count = Scalars.Of(examples);
                return problem.Groups[g].Parameters.Select(k => problem.GradientSum(k) / count).ToArray();
            };
        }

        private Func<CoActivationMemory?> MemoryOf(int g)
        {
            var group = problem.Groups[g];
            int l = group.Segments[0];
            if (!problem.Options.Memory || l == hidden || problem.Options.Offline) return () => null;
            CoActivationMemory? updated = null;
            return () =>
            {
                if (updated is null)
                {
                    var (inputs, target) = MemoryInputs(l);
                    // Block 1's prediction at the weights of this iteration is its forward value.
                    RecordPenalty(l, target, l == 0 ? forward[0] : splits[l].ApplyLinear(Input(l), Weights, pass));
                    updated = problem.UpdateMemory(l, inputs, target);
                }
                return updated;
            };
        }

        /// ã = [a; 1] at the fully connected layer of block l, and its code.
        private (Tensor Inputs, Tensor Codes) MemoryInputs(int l)
        {
            using var _ = no_grad();
            var a = splits[l].DenseInput(Input(l)[0]);
            var ones = torch.ones(a.shape[0], 1, dtype: a.dtype, device: a.device);
            return (cat(new[] { a, ones }, 1), codes[l].detach());
        }

        /// ∇ of a weight sub-problem's objective at the current weights: the sum over its segments of
        /// the mean loss for the output segment and the mean squared distance to the codes (or the
        /// hinge for a step block) for a hidden one.
        private IReadOnlyList<Tensor> LocalGradient(int g)
        {
            using var _ = enable_grad();
            var group = problem.Groups[g];
            var parameters = group.Parameters.Select(i => Weights[i]).ToArray();
            var batchSize = Scalars.Of(BatchSize);
            Tensor? objective = null;
            foreach (var l in group.Segments)
            {
                Tensor term;
                if (l == hidden)
                {
                    var output = Output(Input(l));
                    var loss = program.Loss.PerExample(output, Batch.Labels).sum();
                    lossSum = loss.ToDouble();
                    term = loss / batchSize;
                }
                else
                {
                    var reuse = segments[l].ReadsOnlyInput ? Reusable(l, null, 0) : null; // a segment reading only x: its input never changes
                    var prediction = reuse ?? splits[l].ApplyLinear(Input(l), Weights, pass);
                    var target = codes[l].detach();
                    RecordPenalty(l, target, prediction);
                    term = problem.Options.StepBlocks == StepBlockLoss.Hinge && splits[l].StepActivation
                        ? Weighted(l, F.relu(-prediction * target.sign()).sum()) / batchSize
                        : Weighted(l, (target - prediction).Squared().sum()) / batchSize;
                }
                objective = objective is null ? term : objective.Plus(term);
            }
            return autograd.grad(new[] { objective! }, parameters).Select(t => t.detach()).ToArray();
        }

        private void RecordPenalty(int l, Tensor target, Tensor prediction)
        {
            using var _ = no_grad();
            var g = target - prediction.detach();
            penalties[l] = w[l] * g.Squared().sum().ToDouble();
            meanDefects[l] = g.abs().mean().ToDouble();
        }

        public void EndIteration()
        {
            stepped = true;
            graphsValid = false;
            DisposeEncoding();
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            var dtype = codes[0].dtype;
            var objective = lossSum + mu * penalties.Sum();
            RecordWithObjective(tensor(lossSum, dtype: dtype), meanDefects.Select(d => tensor(d, dtype: dtype)).ToArray(), tensor(objective, dtype: dtype));
            if (problem.Options.Offline && completesEpoch) problem.ResetOffline();
        }

        public override void Commit()
        {
            if (!problem.Options.Offline || completesEpoch) problem.AfterIteration();
        }

        public override void Dispose()
        {
            DisposeEncoding();
            pass?.Dispose();
            foreach (var s in codeStates) s.Dispose();
            foreach (var c in codes) c.Dispose();
            base.Dispose();
        }
    }
}
