using TorchSharp;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// The μ schedule of the quadratic-penalty method: μ starts at `Initial`, is multiplied by
/// `Growth` after every epoch and capped at `Maximum`. Growth 1 keeps μ fixed ("Regularized").
public sealed record PenaltySchedule(double Initial = 1.0, double Growth = 1.0, double Maximum = double.PositiveInfinity)
{
    public static PenaltySchedule Fixed(double mu) => new(mu, 1.0, mu);

    public void Validate()
    {
        if (!(Initial > 0) || double.IsInfinity(Initial)) throw new ArgumentOutOfRangeException(nameof(Initial), $"Invalid initial mu: {Initial} (expected a finite value > 0).");
        if (!(Growth >= 1) || double.IsInfinity(Growth)) throw new ArgumentOutOfRangeException(nameof(Growth), $"Invalid mu growth: {Growth} (expected a finite value >= 1).");
        if (!(Maximum >= Initial)) throw new ArgumentOutOfRangeException(nameof(Maximum), $"Invalid mu maximum: {Maximum} (expected >= the initial mu {Initial}).");
    }

    public double At(int epochsDone) => Math.Min(Maximum, Initial * Math.Pow(Growth, epochsDone));
}

/// Quadratic penalty over per-example states (MAC, Carreira-Perpiñán & Wang 2014; BlockProp,
/// Gotmare et al. 2018; seed 000 §3):
///
///     Q_μ(w, h) = (1/B) Σ_i [ ℓ(f_L(h_{L−1}[i]; w_L), y_i) + (μ/2) Σ_l ‖h_l[i] − f_l(h_{l−1}[i]; w_l)‖² ],
///
/// minimised by alternating over states and weights while μ grows on a schedule; training ends
/// with a feasibility pass h_l = f_l(h_{l−1}). With a fixed μ this is the "Regularized" baseline
/// of seed 001 (the constraints as a regulariser, solved by plain gradient descent).
/// Players: weights (min), states (min, per example).
///
/// `RestartStates`: each batch's states start at the forward pass of the current weights, with a
/// fresh step-rule state, instead of the values stored from the example's last visit (online AM's
/// codes and PCN's activations start so). Stored states keep every step an example's states ever
/// took towards a lower loss, while the weights are fitted to them one step per batch; cut after
/// every layer, they drift from what the forward pass produces (docs/methods.md, "The penalty cut
/// after every layer").
public sealed class QuadraticPenalty : IFormulation
{
    public QuadraticPenalty(PenaltySchedule schedule, int stateSteps = 1, string name = "quadratic-penalty", bool restartStates = false)
    {
        schedule.Validate();
        if (stateSteps < 1) throw new ArgumentOutOfRangeException(nameof(stateSteps), $"Invalid state steps: {stateSteps} (expected >= 1).");
        Schedule = schedule;
        StateSteps = stateSteps;
        Name = name;
        RestartStates = restartStates;
    }

    /// Start each batch's states at the forward pass with a fresh step-rule state (above).
    public bool RestartStates { get; }

    public PenaltySchedule Schedule { get; }
    /// Inner steps on the states before each weight step in the default alternating schedule.
    public int StateSteps { get; }
    public string Name { get; }
    public string Description => Schedule.Growth > 1
        ? $"quadratic penalty (μ/2)‖h_l − f_l(h_(l−1))‖², μ from {Schedule.Initial} ×{Schedule.Growth}/epoch, feasibility pass at the end (MAC/BlockProp)"
        : $"fixed quadratic penalty (μ/2)‖h_l − f_l(h_(l−1))‖², μ = {Schedule.Initial} (\"Regularized\")";
    public IReadOnlyList<string> PlayerNames { get; } = new[] { Formulations.PlayerNames.Weights, Formulations.PlayerNames.States };
    public bool HasMaximisingPlayers => false;

    /// States first (`StateSteps` inner steps), then the weights.
    public IReadOnlyList<SubProblem> DefaultSchedule => new[]
    {
        new SubProblem(new[] { Formulations.PlayerNames.States }, StateSteps),
        new SubProblem(new[] { Formulations.PlayerNames.Weights }, 1),
    };

    public ILiftedProblem Lift(LiftContext context, Weights weights)
    {
        if (context.Program.Segments.Count < 2)
            throw new ArgumentException("The penalty method needs a program with at least two blocks; add a Cut().");
        return new Problem(this, context, weights);
    }

    private sealed class Problem : LiftedProblem, ILayerSplittable
    {
        private readonly QuadraticPenalty formulation;
        private readonly RowGroup states;
        private readonly SplitState split;
        private readonly int hidden;
        private double mu;

        public Problem(QuadraticPenalty formulation, LiftContext context, Weights weights) : base(formulation, context, weights)
        {
            this.formulation = formulation;
            split = new SplitState(Program);
            hidden = Program.Segments.Count - 1;
            mu = formulation.Schedule.At(0);
            var initial = ForwardStatesOfTrainingSet();
            states = new RowGroup(Store, context, Formulations.PlayerNames.States,
                initial.Select((t, l) => ($"h{l + 1}", t)).ToArray());
            foreach (var t in initial) t.Dispose();
        }

        public double Mu => mu;

        public NestedProgram LiftedProgram => Program;

        public string Exchanges => "each gradient evaluation, the two segments of a cut send each other their parts of the gradient of the batch's rows of the cut's state (B·H numbers each way) and step their own players";

        /// Every block's term reads the mini-batch's rows.
        public long RowsOf(int block, long batchSize) => batchSize;

        public void Restrict(BlockRange blocks, IBoundaryExchange link) => split.Restrict(blocks, link);

        /// Its blocks' weights with their step states and the state rows of the cuts its blocks end
        /// in (a boundary cut's state belongs to the lower range; the upper keeps an equal copy).
        public IReadOnlyList<string> Owned(BlockRange blocks) =>
            split.Owned(StateTensors.Keys, blocks, Enumerable.Range(blocks.First, blocks.End - blocks.First).Where(l => l < hidden).Select(l => $"store/{states.Keys[l]}"));

        /// The state rows of the cuts the range touches, and everything that is not per example.
        public bool Reads(BlockRange blocks, string key) =>
            !key.StartsWith("store/", StringComparison.Ordinal)
            || Enumerable.Range(0, hidden).Any(l => SplitState.Touches(l, blocks) && key["store/".Length..].Split('#')[0] == states.Keys[l]);

        /// Restarted states are a forward pass from the batch's inputs through every block below.
        public void Validate(IReadOnlyList<BlockRange> ranges, ISolver solver)
        {
            if (formulation.RestartStates && ranges.Count > 1)
                throw new ArgumentException($"layer-parallel training: {formulation.Name} restarts the batch's states by a forward pass through every block; a segment does not hold the blocks below it (drop the restart)");
            split.RequireNeighbouringCuts(ranges);
        }

        public override IBatchGame Batch(MiniBatch batch) => new Game(this, batch);

        public override IReadOnlyList<double> MeasureDefects(Tensor? rows = null) => MeasureDefects((l, indices) => Store.Gather(states.Keys[l], indices), rows);

        public override void EndEpoch(int epoch) => mu = formulation.Schedule.At(epoch);

        public override IReadOnlyDictionary<string, double> Diagnostics => new Dictionary<string, double> { ["mu"] = mu };

        public override IReadOnlyDictionary<string, double> StateScalars => new Dictionary<string, double> { ["mu"] = mu };

        public override void RestoreScalars(IReadOnlyDictionary<string, double> scalars)
        {
            base.RestoreScalars(scalars);
            mu = scalars["mu"];
        }

        /// The feasibility pass: h_l ← f_l(h_{l−1}) for every example.
        public override void Finish() => FeasibilityPass(states.Keys);

        /// Q = ℓ + (μ/2) Σ_v ‖h_v − f_v(inputs of v)‖².
        private sealed class Game : ConstraintGame
        {
            private readonly Problem problem;
            private readonly Tensor[] h;
            private readonly StepState[] hStates;

            public Game(Problem problem, MiniBatch batch) : base(batch, problem)
            {
                this.problem = problem;
                (h, hStates) = problem.states.Gather(batch.Indices, problem.split.Range is null ? null : problem.split.Touches); // a segment: the cuts it touches
                if (problem.formulation.RestartStates) Restart(batch);
                if (problem.split.Range is not { } r)
                {
                    Players = new[]
                    {
                        problem.WeightsPlayer(),
                        new Player(Formulations.PlayerNames.States, Role.Minimise, h, problem.states.StepRule, hStates, rowIndexed: true),
                    };
                    return;
                }
                // A segment of a layer-parallel run: its blocks' weights and the states of the cuts it touches.
                var own = problem.split.Parameters(r);
                var touched = Enumerable.Range(0, h.Length).Where(problem.split.Touches).ToArray();
                Players = new[]
                {
                    problem.WeightsPlayer(own),
                    new Player(Formulations.PlayerNames.States, Role.Minimise, touched.Select(l => h[l]).ToArray(), problem.states.StepRule,
                        touched.Select(l => hStates[l]).ToArray(), rowIndexed: true),
                };
            }

            public override IReadOnlyList<Player> Players { get; }

            protected override (int First, int End) Blocks => problem.split.Blocks;

            /// A segment adds the neighbours' parts of the gradient of its boundary cuts' states.
            protected override void CompleteGradients(IReadOnlyList<Tensor> inputs, Tensor?[] grads) =>
                problem.split.CompleteGradients(inputs, grads, h, l => l, l => problem.states.Keys[l]);

            /// h_l ← f_l(h_{l−1}) from the batch's inputs at the current weights, and the states'
            /// step-rule state and solver memory zeroed (the batch's gathered copies).
            private void Restart(MiniBatch batch)
            {
                using var _ = no_grad();
                for (int l = 0; l < h.Length; l++)
                {
                    var segment = problem.Program.Segments[l];
                    h[l].copy_(segment.Forward(segment.InputsFrom(batch.Inputs, h), problem.Weights.Tensors, Pass));
                }
                foreach (var state in hStates)
                    foreach (var t in state.Tensors) t.zero_();
            }

            protected override Tensor Value(int l) => h[l];

            protected override Tensor Defect(int l, Tensor f) => h[l] - f;

            protected override Tensor AddTerm(Tensor total, int l, Tensor g) => total.Plus(g.Squared().sum());

            protected override Tensor LossSum(Tensor output) => problem.Program.Loss.PerExample(output, Batch.Labels).sum();

            protected override Tensor Combine(Tensor lossSum, Tensor penalty)
            {
                using var m = (0.5 * problem.mu).ToScalar(); // μ follows the epochs: held for the call, not cached
                return lossSum.Plus(penalty.mul(m));
            }

            public override void Commit() => problem.states.Scatter(Batch.Indices, h, hStates);
        }
    }
}
