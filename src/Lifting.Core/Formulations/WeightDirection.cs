using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// One pass of a weights-only method on a batch: the weights' direction for the batch's mean loss
/// (one tensor per parameter, in the program's order) and each example's loss at the forward pass.
public sealed record WeightDirection(IReadOnlyList<Tensor> Gradients, Tensor Losses);

/// A formulation whose only player is the weights and whose operator is a direction computed by a
/// pass of its own over the program's segments (Newton-shooting back-propagation, dual
/// propagation, error-based predictive coding): the per-batch variables of the pass (Newton
/// iterates, dyadic pairs, errors) live and die within the pass, nothing is kept per example
/// (`StateBytes` 0), and the lifted objective is the loss.
public abstract class WeightDirectionFormulation : IFormulation
{
    protected WeightDirectionFormulation(string name) => Name = name;

    public string Name { get; }
    public abstract string Description { get; }
    public IReadOnlyList<string> PlayerNames { get; } = new[] { Formulations.PlayerNames.Weights };
    public IReadOnlyList<SubProblem> DefaultSchedule => PlayerNames.Select(p => new SubProblem(new[] { p }, 1)).ToArray();
    public bool HasMaximisingPlayers => false;

    /// Refuses a program the pass cannot run on (one line naming why); called by `Lift`.
    public virtual void Validate(NestedProgram program) { }

    /// Whether a batch's forward pass (batch statistics, dropout masks) is held fixed from its first
    /// evaluation for the whole step, as a lifted step holds it.
    protected virtual bool HoldsPassFixed => true;

    /// The weights' direction on a batch and each example's loss.
    public abstract WeightDirection Direction(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor labels, ForwardPass? pass = null);

    public ILiftedProblem Lift(LiftContext context, Weights weights)
    {
        Validate(context.Program);
        return new Problem(this, context, weights);
    }

    private sealed class Problem : LiftedProblem
    {
        public Problem(WeightDirectionFormulation formulation, LiftContext context, Weights weights) : base(formulation, context, weights) =>
            Owner = formulation;

        public WeightDirectionFormulation Owner { get; }
        public ForwardPass? Pass(MiniBatch batch) => PassFor(batch, holdFixed: Owner.HoldsPassFixed);
        public override IBatchGame Batch(MiniBatch batch) => new Game(this, batch);
    }

    /// The game on one mini-batch: one player, the weights, whose operator is the pass's direction.
    private sealed class Game : ForwardLossGame
    {
        private readonly Problem problem;

        public Game(Problem problem, MiniBatch batch) : base(problem, batch, problem.Pass(batch), new[] { problem.WeightsPlayer() }) =>
            this.problem = problem;

        public override IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players)
        {
            foreach (var p in players)
                if (p.Name != Formulations.PlayerNames.Weights) throw new ArgumentException($"{problem.Formulation.Name} has no player '{p.Name}'.");
            var result = problem.Owner.Direction(problem.Program, problem.Weights.Tensors, Batch.Inputs, Batch.Labels, Pass);
            RecordLosses(result.Losses);
            return players.Select(_ => result.Gradients).ToArray();
        }

    }
}
