using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Single shooting: min_w ℓ(φ(x; w), y) — plain back-propagation, nothing lifted. The reference
/// every other formulation is checked against. One player (the weights).
public sealed class SingleShooting : IFormulation
{
    public static SingleShooting Instance { get; } = new();

    public string Name => "single-shooting";
    public string Description => "min_w ℓ(φ(x; w), y): plain back-propagation, nothing lifted (the reference)";
    public IReadOnlyList<string> PlayerNames { get; } = new[] { Formulations.PlayerNames.Weights };
    public IReadOnlyList<SubProblem> DefaultSchedule => PlayerNames.Select(p => new SubProblem(new[] { p }, 1)).ToArray();
    public bool HasMaximisingPlayers => false;

    public ILiftedProblem Lift(LiftContext context, Weights weights) => new Problem(this, context, weights);

    private sealed class Problem : LiftedProblem
    {
        public Problem(IFormulation formulation, LiftContext context, Weights weights) : base(formulation, context, weights) { }

        public override IBatchGame Batch(MiniBatch batch) => new Game(this, batch);

        /// Back-propagation's pass: batch statistics recomputed (and differentiated) at every evaluation.
        public ForwardPass? Pass(MiniBatch batch) => PassFor(batch, holdFixed: false);

        private sealed class Game : BatchGame
        {
            private readonly Problem problem;
            private readonly ForwardPass? pass;

            public Game(Problem problem, MiniBatch batch) : base(batch)
            {
                this.problem = problem;
                pass = problem.Pass(batch);
                Players = new[] { problem.WeightsPlayer() };
            }

            public override IReadOnlyList<Player> Players { get; }

            protected override Tensor EvaluateSum()
            {
                var output = problem.Program.Forward(Batch.Inputs, problem.Weights.Tensors, pass);
                var loss = problem.Program.Loss.PerExample(output, Batch.Labels).sum();
                Record(loss, Array.Empty<Tensor>());
                return loss;
            }

            public override void Commit() { }

            public override void Dispose()
            {
                pass?.Dispose();
                base.Dispose();
            }
        }
    }
}
