using Lifting.Data;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Shared machinery of a game on one mini-batch: the operator is the gradient of the batch
/// objective Σ_i L_i. Row-indexed (per-example) players receive ∂L_i/∂v_i, the gradient of their
/// own example's term; shared players (weights) receive the batch mean (1/B) Σ_i ∂L_i/∂w.
/// Maximising players receive the negated gradient (F = (∇_θ L, −∇_λ L)).
public abstract class BatchGame : IBatchGame
{
    private Tensor? lastLoss;
    private Tensor[] lastDefects = Array.Empty<Tensor>();
    private Tensor[] lastMultiplierNorms = Array.Empty<Tensor>();

    protected BatchGame(MiniBatch batch) => Batch = batch;

    public MiniBatch Batch { get; }
    public long BatchSize => Batch.Indices.shape[0];
    public abstract IReadOnlyList<Player> Players { get; }

    /// Σ_i L_i over the batch, differentiable in every player's variables. Implementations call
    /// `Record` with the loss term and defects they computed along the way.
    protected abstract Tensor EvaluateSum();

    /// Keeps small detached summaries of the last evaluation. They outlive the solver's dispose
    /// scope, so they are detached from it and disposed when replaced.
    protected void Record(Tensor lossSum, IReadOnlyList<Tensor> defects, IReadOnlyList<Tensor>? multipliers = null)
    {
        using var _ = no_grad();
        DisposeRecords();
        lastLoss = (lossSum.detach() / BatchSize).DetachFromDisposeScope();
        lastDefects = defects.Select(g => g.detach().abs().mean().DetachFromDisposeScope()).ToArray();
        lastMultiplierNorms = (multipliers ?? Array.Empty<Tensor>())
            .Select(m => m.detach().square().reshape(m.shape[0], -1).sum(1).mean().DetachFromDisposeScope()).ToArray();
    }

    private void DisposeRecords()
    {
        lastLoss?.Dispose();
        foreach (var t in lastDefects) t.Dispose();
        foreach (var t in lastMultiplierNorms) t.Dispose();
        lastLoss = null;
        lastDefects = lastMultiplierNorms = Array.Empty<Tensor>();
    }

    public IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players)
    {
        var inputs = players.SelectMany(p => p.Variables).ToArray();
        Tensor[] grads;
        using (enable_grad())
        {
            var objective = EvaluateSum();
            grads = autograd.grad(new[] { objective }, inputs, allow_unused: true).ToArray();
        }
        var result = new IReadOnlyList<Tensor>[players.Count];
        int k = 0;
        for (int p = 0; p < players.Count; p++)
        {
            var player = players[p];
            var directions = new Tensor[player.Variables.Count];
            for (int i = 0; i < directions.Length; i++, k++)
            {
                var g = grads[k] is null || grads[k].IsInvalid ? zeros_like(inputs[k]) : grads[k].detach();
                if (!player.RowIndexed) g = g / BatchSize;
                directions[i] = player.Role == Role.Maximise ? -g : g;
            }
            result[p] = directions;
        }
        return result;
    }

    public double Objective()
    {
        using var _ = no_grad();
        return EvaluateSum().ToDouble() / BatchSize;
    }

    public double Loss => lastLoss is null ? double.NaN : lastLoss.ToDouble();
    public IReadOnlyList<double> Defects => lastDefects.Select(d => d.ToDouble()).ToArray();
    public IReadOnlyList<double> MultiplierNorms => lastMultiplierNorms.Select(d => d.ToDouble()).ToArray();

    public abstract void Commit();

    public virtual void Dispose() => DisposeRecords();
}
