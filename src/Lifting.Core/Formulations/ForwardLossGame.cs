using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// A batch game of a method that lifts nothing (feedback alignment, Fenchel back-propagation, DTP,
/// the weights-only passes of `WeightDirectionFormulation`): its objective is the program's loss
/// at the batch's forward pass, it has no defects or multipliers, and its loss is the one its last
/// operator evaluation recorded (`RecordLosses`). The derived game supplies the players and the
/// operator.
public abstract class ForwardLossGame : IBatchGame
{
    private readonly LiftedProblem problem;
    private Tensor? lastLoss;

    protected ForwardLossGame(LiftedProblem problem, MiniBatch batch, ForwardPass? pass, IReadOnlyList<Player> players)
    {
        this.problem = problem;
        Batch = batch;
        Pass = pass;
        Players = players;
    }

    protected MiniBatch Batch { get; }
    /// The batch's forward pass (null for a program without batch statistics or dropout).
    protected ForwardPass? Pass { get; }

    public IReadOnlyList<Player> Players { get; }

    public abstract IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players);

    /// Keeps the mean of each example's loss at the forward pass the operator just evaluated.
    protected void RecordLosses(Tensor losses)
    {
        lastLoss?.Dispose();
        using (no_grad()) lastLoss = losses.mean().DetachFromDisposeScope();
    }

    public double Objective()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        return problem.Program.Loss.PerExample(problem.Program.Forward(Batch.Inputs, problem.Weights.Tensors, Pass), Batch.Labels).mean().ToDouble();
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
        Pass?.Dispose();
    }
}
