using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Formulations;

/// Options of the multiple-shooting Lagrangian (seed 001 §2–3.1).
public sealed record MultipleShootingOptions
{
    /// ε of the ε-insensitive defect (seed 001 eq. 3): g_ε = g − ε if g > ε, g + ε if g < −ε,
    /// 0 otherwise (the equation is the soft-thresholding map, although the text calls it hard
    /// shrinkage). With `ReducedConstraint`, ε is the threshold of ReLU(‖g‖₁ − ε). 0 = exact.
    public double Epsilon { get; init; }

    /// Reparametrise each state through its block's output activation, h = σ̄(u) (h = ReLU(u) for
    /// ReLU blocks), so the state lies in the activation's range (seed 001 §3.1).
    public bool ReparametriseStates { get; init; }

    /// Project each state onto its block's output activation's range after every step (a box:
    /// h ≥ 0 for ReLU blocks, h ∈ [−1, 1] for tanh): the constrained alternative to
    /// `ReparametriseStates`, solved by projected steps (Stampacchia; projected extragradient).
    public bool ProjectStates { get; init; }

    /// Initialise the states by one forward pass (seed 001 §3.1); otherwise at zero.
    public bool ForwardInitialisation { get; init; } = true;

    /// With `ForwardInitialisation`: the states are that many Newton multiple-shooting iterations
    /// on H(h) = h − f(h) = 0 from zero (seed 000; every segment evaluated at once per iteration),
    /// instead of a sequential forward pass; from the lifted graph's depth on they are the forward
    /// pass itself, with fewer iterations the deeper states are linearisations. 0 = the sequential pass.
    public int NewtonInitialisation { get; init; }

    /// Initialise every example's multipliers at the adjoint of the forward pass at the initial
    /// weights, λ_v = −dℓ/dh_v (LeCun 1988), instead of at zero: the first weight step is then
    /// back-propagation's gradient for every example, where zero multipliers give the blocks below
    /// the top one no signal until their examples' multipliers have been visited.
    public bool AdjointInitialisation { get; init; }

    /// Replace the constraint of each block by the scalar ReLU(‖g‖₁ − ε) with one multiplier per
    /// example (seed 001 §5, the ImageNet memory reduction).
    public bool ReducedConstraint { get; init; }

    /// With `ReducedConstraint`: the inequality c = ‖g‖₁ − ε ≤ 0 (the feasible set of
    /// ReLU(‖g‖₁ − ε) = 0) with multipliers projected onto λ ≥ 0 after every step, the KKT
    /// multipliers of an inequality (projected extragradient; seed 000 §5). A row strictly inside
    /// has ∂L/∂λ = ‖g‖₁ − ε < 0: its multiplier falls to 0 (complementary slackness) and would go
    /// negative without the projection. Under the ReLU form ∂L/∂λ ≥ 0, so its multipliers never
    /// decrease and need no projection.
    public bool Inequality { get; init; }

    /// Coefficient c of the augmented Lagrangian term (c/2)‖g‖² (seed 001 §2.1); 0 = plain Lagrangian.
    public double Augmentation { get; init; }

    public void Validate()
    {
        if (!(Epsilon >= 0) || double.IsInfinity(Epsilon)) throw new ArgumentOutOfRangeException(nameof(Epsilon), $"Invalid epsilon: {Epsilon} (expected a finite value >= 0).");
        if (!(Augmentation >= 0) || double.IsInfinity(Augmentation)) throw new ArgumentOutOfRangeException(nameof(Augmentation), $"Invalid augmentation c: {Augmentation} (expected a finite value >= 0).");
        if (ReparametriseStates && ProjectStates) throw new ArgumentException("States are either reparametrised or projected onto the activation's range, not both.");
        if (NewtonInitialisation < 0) throw new ArgumentOutOfRangeException(nameof(NewtonInitialisation), $"Invalid newton-init: {NewtonInitialisation} (expected >= 0; 0 = a sequential forward pass).");
        if (NewtonInitialisation > 0 && !ForwardInitialisation) throw new ArgumentException($"Invalid newton-init: {NewtonInitialisation} with states initialised at zero (Newton iterations initialise them in place of the forward pass).");
        if (AdjointInitialisation && ReducedConstraint) throw new ArgumentException("Invalid adjoint-init: true with the reduced constraint (its one multiplier per example and block has no adjoint to start from).");
        if (AdjointInitialisation && !ForwardInitialisation) throw new ArgumentException("Invalid adjoint-init: true with states initialised at zero (the adjoint is taken at the forward-pass states).");
        if (Inequality && !ReducedConstraint) throw new ArgumentException("Invalid inequality: true without the reduced constraint (the inequality form is the reduced ‖g‖₁ − ε ≤ 0; set reduced too).");
        if (Inequality && Augmentation > 0) throw new ArgumentException($"Invalid augmentation c: {Augmentation} with the inequality form (expected 0: (c/2)‖g‖² is for equality constraints).");
    }
}

/// Multiple shooting with Lagrange multipliers (LeCun 1988; seed 001 §2 "ExtraProp"; seed 000 §2).
///
/// Per-example states h_l[i] for the outputs of blocks 1 … L−1 and multipliers λ_l[i]:
///
///     L(w, h, λ) = (1/B) Σ_i [ ℓ(f_L(h_{L−1}[i]; w_L), y_i) + Σ_l ⟨λ_l[i], g_l[i]⟩ + (c/2) ‖g_l[i]‖² ],
///     g_l[i] = h_l[i] − f_l(h_{l−1}[i]; w_l),  h_0[i] = x_i,
///
/// a saddle-point problem min_{w,h} max_λ L. At a stationary point the multipliers are the
/// negated back-propagation adjoints, λ_l = −∂ℓ/∂h_l, and ∇_w L is the back-propagation gradient.
/// Players: weights (min), states (min, per example), multipliers (max, per example).
public sealed class MultipleShooting : IFormulation
{
    public MultipleShooting(MultipleShootingOptions? options = null, string name = "multiple-shooting")
    {
        Options = options ?? new MultipleShootingOptions();
        Options.Validate();
        Name = name;
    }

    public MultipleShootingOptions Options { get; }
    public string Name { get; }
    public string Description => Options.Augmentation > 0
        ? $"augmented Lagrangian over per-example states and multipliers, + (c/2)‖g‖², c = {Options.Augmentation}"
        : "Lagrangian over per-example states h_l and multipliers λ_l, constraints h_l = f_l(h_{l−1})";
    public IReadOnlyList<string> PlayerNames { get; } =
        new[] { Formulations.PlayerNames.Weights, Formulations.PlayerNames.States, Formulations.PlayerNames.Multipliers };
    public IReadOnlyList<SubProblem> DefaultSchedule => PlayerNames.Select(p => new SubProblem(new[] { p }, 1)).ToArray();
    public bool HasMaximisingPlayers => true;

    public ILiftedProblem Lift(LiftContext context, Weights weights)
    {
        if (context.Program.Segments.Count < 2)
            throw new ArgumentException("Multiple shooting needs a program with at least two blocks; add a Cut().");
        return new Problem(this, context, weights);
    }

    /// The multipliers that satisfy the adjoint equations ∂L/∂h_v = 0 at the forward-pass states:
    /// λ_v = −∂(Σ_i ℓ_i)/∂h_v, the total derivative through every consumer of v (LeCun 1988).
    /// Returned per lifted value (segment order), shaped like the states; `pass` holds the batch
    /// statistics and dropout masks of programs that have them.
    public static Tensor[] AdjointMultipliers(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor x, Tensor labels, ForwardPass? pass = null)
    {
        using var _ = enable_grad();
        int hidden = program.Segments.Count - 1;
        var states = new Tensor[hidden];
        // The gradient with respect to an intermediate value is its total derivative; the input asks
        // for a graph in case no weight does.
        using var input = x.detach().requires_grad_(true);
        for (int l = 0; l < hidden; l++)
        {
            var segment = program.Segments[l];
            states[l] = segment.Forward(segment.InputsFrom(input, states), weights, pass);
        }
        var last = program.Segments[hidden];
        var output = last.Forward(last.InputsFrom(input, states), weights, pass);
        var loss = program.Loss.PerExample(output, labels).sum();
        return autograd.grad(new[] { loss }, states).Select(g => -g.detach()).ToArray();
    }

    private sealed class Problem : LiftedProblem, ILayerSplittable
    {
        private readonly MultipleShootingOptions options;
        private readonly RowGroup states, multipliers;
        private readonly int hidden;
        /// A layer-parallel segment's blocks and its link to the neighbours.
        private readonly SplitState split;
        private readonly IActivation?[] reparametrisation;
        private readonly IProjection[] stateProjections;

        public Problem(MultipleShooting formulation, LiftContext context, Weights weights) : base(formulation, context, weights)
        {
            using var scope = NewDisposeScope(); // temporaries; the store keeps its own handles
            options = formulation.Options;
            var segments = Program.Segments;
            hidden = segments.Count - 1;
            split = new SplitState(Program);
            reparametrisation = Enumerable.Range(0, hidden)
                .Select(l => options.ReparametriseStates ? segments[l].OutputActivation : null).ToArray();
            stateProjections = Enumerable.Range(0, hidden)
                .Select(l => options.ProjectStates && segments[l].OutputActivation is { } act ? Projections.Box(act.Range.Lower, act.Range.Upper) : Projections.None)
                .ToArray();

            var initial = options.ForwardInitialisation
                ? ForwardStatesOfTrainingSet(newtonIterations: options.NewtonInitialisation)
                : Enumerable.Range(0, hidden).Select(l => zeros(Shape(context.ExampleCount, segments[l].OutputShape), dtype: context.DType, device: context.Device)).ToArray();
            var adjoint = options.AdjointInitialisation ? context.AdjointMultipliers(weights) : null;
            var stateRows = new List<(string, Tensor)>();
            var multiplierRows = new List<(string, Tensor)>();
            using (no_grad())
            {
                for (int l = 0; l < hidden; l++)
                {
                    var free = reparametrisation[l] is { } act ? act.Preimage(initial[l]) : initial[l];
                    stateRows.Add(($"h{l + 1}", free));
                    var lambdaShape = options.ReducedConstraint ? new long[] { context.ExampleCount } : initial[l].shape;
                    multiplierRows.Add(($"lambda{l + 1}", adjoint?[l] ?? zeros(lambdaShape, dtype: context.DType, device: context.Device)));
                }
            }
            states = new RowGroup(Store, context, Formulations.PlayerNames.States, stateRows);
            multipliers = new RowGroup(Store, context, Formulations.PlayerNames.Multipliers, multiplierRows);
            foreach (var t in initial) t.Dispose();
            foreach (var t in adjoint ?? Array.Empty<Tensor>()) t.Dispose(); // the store holds its own handles
        }

        private static long[] Shape(long rows, long[] example) => new[] { rows }.Concat(example).ToArray();

        public override IBatchGame Batch(MiniBatch batch) => new Game(this, batch);

        public NestedProgram LiftedProgram => Program;

        public string Exchanges => "each operator evaluation, the two segments of a cut send each other their parts of the gradient of the batch's rows of the cut's state (B·H numbers each way; extragradient: two evaluations per step, more with inner iterations) and step their own players";

        /// Every block's term reads the mini-batch's rows.
        public long RowsOf(int block, long batchSize) => batchSize;

        public void Restrict(BlockRange blocks, IBoundaryExchange link) => split.Restrict(blocks, link);

        /// Its blocks' weights with their step states, and the state and multiplier rows of the cuts
        /// its blocks end in (a boundary cut's state belongs to the lower range; the upper keeps an
        /// equal copy).
        public IReadOnlyList<string> Owned(BlockRange blocks) =>
            split.Owned(StateTensors.Keys, blocks, Enumerable.Range(blocks.First, blocks.End - blocks.First).Where(l => l < hidden)
                .SelectMany(l => new[] { $"store/{states.Keys[l]}", $"store/{multipliers.Keys[l]}" }));

        /// The rows of the cuts the range touches, and everything that is not per example.
        public bool Reads(BlockRange blocks, string key)
        {
            if (!key.StartsWith("store/", StringComparison.Ordinal)) return true;
            var name = key["store/".Length..].Split('#')[0];
            return Enumerable.Range(0, hidden).Any(l => (SplitState.Touches(l, blocks) && name == states.Keys[l]) || (blocks.Contains(l) && name == multipliers.Keys[l]));
        }

        /// Each block's term reads only the states of its inputs: a split needs every block to read
        /// its own range's states or the state of the range's lower cut.
        public void Validate(IReadOnlyList<BlockRange> ranges, ISolver solver) => split.RequireNeighbouringCuts(ranges);

        public override IReadOnlyList<double> MeasureDefects(Tensor? rows = null) => MeasureDefects((l, rows) =>
        {
            var free = Store.Gather(states.Keys[l], rows);
            return reparametrisation[l] is { } act ? act.Reparametrise(free) : free;
        }, rows);

        /// L = ℓ + Σ_v ⟨λ_v, c(g_v)⟩ (+ (c/2)‖c(g_v)‖²) with g_v = h_v − f_v(inputs of v).
        private sealed class Game : ConstraintGame
        {
            private readonly Problem problem;
            private readonly Tensor[] h, lambda;
            private readonly StepState[] hStates, lambdaStates;

            public Game(Problem problem, MiniBatch batch) : base(batch, problem)
            {
                this.problem = problem;
                // A layer-parallel segment gathers only the rows of the cuts it touches.
                (h, hStates) = problem.states.Gather(batch.Indices, problem.split.Range is null ? null : problem.split.Touches);
                (lambda, lambdaStates) = problem.multipliers.Gather(batch.Indices, problem.split.Range is { } mine ? mine.Contains : null);
                if (problem.split.Range is not { } r)
                {
                    Players = new[]
                    {
                        problem.WeightsPlayer(),
                        new Player(Formulations.PlayerNames.States, Role.Minimise, h, problem.states.StepRule, hStates, rowIndexed: true, projections: problem.stateProjections),
                        new Player(Formulations.PlayerNames.Multipliers, Role.Maximise, lambda, problem.multipliers.StepRule, lambdaStates, rowIndexed: true,
                            projection: problem.options.Inequality ? Projections.NonNegative : null),
                    };
                    return;
                }
                // A segment of a layer-parallel run: its blocks' weights, the states of the cuts it
                // touches, the multipliers of the cuts its blocks end in (players without any are left out).
                var own = problem.split.Parameters(r);
                var touched = Enumerable.Range(0, h.Length).Where(problem.split.Touches).ToArray();
                var ownCuts = Enumerable.Range(r.First, r.End - r.First).Where(l => l < h.Length).ToArray();
                var players = new List<Player>();
                if (own.Length > 0) players.Add(problem.WeightsPlayer(own));
                if (touched.Length > 0)
                    players.Add(new Player(Formulations.PlayerNames.States, Role.Minimise, touched.Select(l => h[l]).ToArray(), problem.states.StepRule, touched.Select(l => hStates[l]).ToArray(),
                        rowIndexed: true, projections: touched.Select(l => problem.stateProjections[l]).ToArray()));
                if (ownCuts.Length > 0)
                    players.Add(new Player(Formulations.PlayerNames.Multipliers, Role.Maximise, ownCuts.Select(l => lambda[l]).ToArray(), problem.multipliers.StepRule, ownCuts.Select(l => lambdaStates[l]).ToArray(),
                        rowIndexed: true, projection: problem.options.Inequality ? Projections.NonNegative : null));
                Players = players;
            }

            public override IReadOnlyList<Player> Players { get; }

            protected override (int First, int End) Blocks => problem.split.Blocks;

            /// A segment adds the neighbours' parts of the gradient of its boundary cuts' states.
            protected override void CompleteGradients(IReadOnlyList<Tensor> inputs, Tensor?[] grads) =>
                problem.split.CompleteGradients(inputs, grads, h, l => l, l => problem.states.Keys[l]);

            /// The state h_v (through the activation when reparametrised).
            protected override Tensor Value(int l) => problem.reparametrisation[l] is { } act ? act.Reparametrise(h[l]) : h[l];

            protected override Tensor Defect(int l, Tensor f) => ValueOf(l) - f;

            protected override Tensor AddTerm(Tensor total, int l, Tensor g)
            {
                var constraint = Constraint(g, problem.options);
                total = total.Plus((lambda[l] * constraint).sum());
                if (problem.options.Augmentation > 0) total = total.Plus(constraint.Squared().sum().mul(Scalars.Of(0.5 * problem.options.Augmentation)));
                return total;
            }

            protected override Tensor LossSum(Tensor output) => problem.Program.Loss.PerExample(output, Batch.Labels).sum();

            protected override IReadOnlyList<Tensor> RecordedMultipliers =>
                problem.split.Range is { } r ? lambda.Where((_, l) => l >= r.First && l < r.End).ToArray() : lambda;

            public override void Commit()
            {
                problem.states.Scatter(Batch.Indices, h, hStates);
                problem.multipliers.Scatter(Batch.Indices, lambda, lambdaStates);
            }
        }
    }

    /// The constraint function of one block: the ε-insensitive defect (eq. 3) or, reduced, the
    /// per-example scalar ReLU(‖g‖₁ − ε) (= 0), or ‖g‖₁ − ε (≤ 0) in the inequality form.
    public static Tensor Constraint(Tensor g, MultipleShootingOptions options)
    {
        if (options.ReducedConstraint)
        {
            var excess = g.abs().reshape(g.shape[0], -1).sum(1) - Scalars.Of(options.Epsilon);
            return options.Inequality ? excess : F.relu(excess);
        }
        return options.Epsilon > 0 ? F.softshrink(g, options.Epsilon) : g;
    }
}
