using Lifting.Data;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Shared machinery of a game on one mini-batch: the operator is the gradient of the batch
/// objective Σ_i L_i. Row-indexed (per-example) players receive ∂L_i/∂v_i, the gradient of their
/// own example's term; shared players (weights) receive the batch mean (1/B) Σ_i ∂L_i/∂w.
/// Maximising players receive the negated gradient (F = (∇_θ L, −∇_λ L)).
///
/// While players are held fixed (`IHoldFixed`), `Reuse` keeps values that depend only on them and
/// on the batch, so inner iterations on the other players do not recompute them; the first
/// evaluation after the hold reuses the value, with its graph, if those players have not moved.
public abstract class BatchGame : IBatchGame, IHoldFixed
{
    /// A reused value, copies of the inputs it was computed from, and those inputs themselves.
    private sealed record Reused(Tensor Value, Tensor[] Inputs, IReadOnlyList<Tensor> Sources);

    private readonly HashSet<string> held = new();
    private readonly Dictionary<string, Reused> reused = new();
    private readonly List<Tensor> handedOver = new();
    private Tensor? lastLoss, lastObjective;
    private Tensor[] lastDefects = Array.Empty<Tensor>();
    private Tensor[] lastMultipliers = Array.Empty<Tensor>();

    protected BatchGame(MiniBatch batch) => Batch = batch;

    public MiniBatch Batch { get; }
    public long BatchSize => Batch.Indices.shape[0];
    public abstract IReadOnlyList<Player> Players { get; }

    /// Σ_i L_i over the batch, differentiable in every player's variables. Implementations call
    /// `Record` with the loss term and defects they computed along the way.
    protected abstract Tensor EvaluateSum();

    /// Keeps the last evaluation's loss term, defects and multipliers (detached handles; the
    /// summaries are computed only when read, since most evaluations are never reported).
    protected void Record(Tensor lossSum, IReadOnlyList<Tensor> defects, IReadOnlyList<Tensor>? multipliers = null)
    {
        DisposeRecords();
        lastLoss = lossSum.detach().DetachFromDisposeScope();
        lastDefects = defects.Select(g => g.detach().DetachFromDisposeScope()).ToArray();
        lastMultipliers = (multipliers ?? Array.Empty<Tensor>()).Select(m => m.detach().DetachFromDisposeScope()).ToArray();
    }

    /// `Record` for a game that evaluates its lifted objective itself rather than through
    /// `Operator` (e.g. one whose solver visits local sub-problems): also keeps that objective.
    protected void RecordWithObjective(Tensor lossSum, IReadOnlyList<Tensor> defects, Tensor objectiveSum)
    {
        Record(lossSum, defects);
        lastObjective?.Dispose();
        lastObjective = objectiveSum.detach().DetachFromDisposeScope();
    }

    private void DisposeRecords()
    {
        lastLoss?.Dispose();
        foreach (var t in lastDefects) t.Dispose();
        foreach (var t in lastMultipliers) t.Dispose();
        lastLoss = null;
        lastDefects = lastMultipliers = Array.Empty<Tensor>();
    }

    public IDisposable HoldFixed(IReadOnlyCollection<string> players)
    {
        foreach (var name in players)
        {
            if (!Players.Any(p => p.Name == name)) throw new ArgumentException($"The game has no player '{name}' to hold fixed.");
            if (!held.Add(name)) throw new InvalidOperationException($"Player '{name}' is already held fixed.");
        }
        DropStale(); // values kept from an earlier hold stay only if their inputs have not moved
        return new Release(this, players.ToArray());
    }

    /// True while `player` is held fixed.
    protected bool IsHeld(string player) => held.Contains(player);

    /// A value that depends only on the batch and on `inputs`, variables of `player`. While the
    /// player is held, `compute()` runs once (keeping its graph) and every evaluation gets the
    /// value detached. The first evaluation after the hold gets the value with its graph if
    /// `inputs` are still bit-identical to what it was computed from (so an outer iteration at the
    /// same weights saves the recomputation), and a fresh `compute()` otherwise.
    protected Tensor Reuse(string key, string player, IReadOnlyList<Tensor> inputs, Func<Tensor> compute)
    {
        if (IsHeld(player))
        {
            if (!reused.TryGetValue(key, out var entry))
            {
                var value = compute().DetachFromDisposeScope();
                using var _ = no_grad();
                reused[key] = entry = new Reused(value, inputs.Select(t => t.detach().clone().DetachFromDisposeScope()).ToArray(), inputs);
            }
            return entry.Value.detach();
        }
        if (reused.Remove(key, out var kept))
        {
            var unchanged = Unchanged(kept);
            foreach (var t in kept.Inputs) t.Dispose();
            if (unchanged && (kept.Value.requires_grad || !is_grad_enabled()))
            {
                handedOver.Add(kept.Value); // its graph is spent by this evaluation; disposed with the game
                return kept.Value;
            }
            kept.Value.Dispose();
        }
        return compute();
    }

    private void DropStale()
    {
        foreach (var (key, entry) in reused.ToArray())
        {
            if (Unchanged(entry)) continue;
            reused.Remove(key);
            Dispose(entry);
        }
    }

    private static void Dispose(Reused entry)
    {
        entry.Value.Dispose();
        foreach (var t in entry.Inputs) t.Dispose();
    }

    private static bool Unchanged(Reused entry)
    {
        using var _ = no_grad();
        return entry.Inputs.Zip(entry.Sources).All(p => { using var same = p.First.eq(p.Second).all(); return same.ToBoolean(); });
    }

    private void ReleaseHold(IEnumerable<string> players)
    {
        foreach (var name in players) held.Remove(name);
    }

    private void DisposeReused()
    {
        foreach (var entry in reused.Values) Dispose(entry);
        reused.Clear();
        foreach (var t in handedOver) t.Dispose();
        handedOver.Clear();
    }

    private sealed class Release : IDisposable
    {
        private BatchGame? game;
        private readonly string[] players;
        public Release(BatchGame game, string[] players) { this.game = game; this.players = players; }
        public void Dispose() { game?.ReleaseHold(players); game = null; }
    }

    public IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players)
    {
        foreach (var p in players)
            if (IsHeld(p.Name)) throw new InvalidOperationException($"Player '{p.Name}' is held fixed; its part of the operator cannot be evaluated.");
        var inputs = players.SelectMany(p => p.Variables).ToArray();
        Tensor[] grads;
        using (enable_grad())
        {
            var objective = EvaluateSum();
            lastObjective?.Dispose();
            lastObjective = objective.detach().DetachFromDisposeScope();
            grads = autograd.grad(new[] { objective }, inputs, allow_unused: true).ToArray();
        }
        CompleteGradients(inputs, grads);
        var result = new IReadOnlyList<Tensor>[players.Count];
        IntPtr[]? pointers = null;
        int k = 0;
        for (int p = 0; p < players.Count; p++)
        {
            var player = players[p];
            var directions = new Tensor[player.Variables.Count];
            for (int i = 0; i < directions.Length; i++, k++)
            {
                var g = grads[k] is null || grads[k].IsInvalid ? zeros_like(inputs[k]) : grads[k].detach();
                if (player.RowIndexed && player.Role == Role.Minimise) { directions[i] = g; continue; }
                // The division by the integer B (as `g / BatchSize` divides) and the negation, in
                // place on the gradient when autograd handed out a tensor of its own (dense and
                // shared with no other input's gradient: autograd passes one tensor to both
                // inputs of a sum), otherwise on a copy.
                using (no_grad())
                {
                    pointers ??= grads.Select(t => t is null || t.IsInvalid ? IntPtr.Zero : DataPointer(t)).ToArray();
                    if (!OwnStorage(g, pointers, k)) g = g.clone();
                    if (!player.RowIndexed) g.div_(Scalars.OfInteger(BatchSize));
                    if (player.Role == Role.Maximise) g.neg_();
                }
                directions[i] = g;
            }
            result[p] = directions;
        }
        return result;
    }

    /// Called with the sums Σ_i ∂L_i/∂v autograd returned for `inputs` (null or invalid where an
    /// input is unused), before the batch mean and the negation: a game that computes only part of
    /// the objective (a segment of a layer-parallel run) adds there what other processes computed
    /// for the same variables. Replace an entry rather than writing into it (autograd may hand one
    /// tensor to two inputs).
    protected virtual void CompleteGradients(IReadOnlyList<Tensor> inputs, Tensor?[] grads) { }

    /// True when `grads[k]` is dense and no other gradient of the list shares its memory.
    private static bool OwnStorage(Tensor g, IntPtr[] pointers, int k)
    {
        if (!g.is_contiguous() || g.storage_offset() != 0 || pointers[k] == IntPtr.Zero) return false;
        for (int j = 0; j < pointers.Length; j++)
            if (j != k && pointers[j] == pointers[k]) return false;
        return true;
    }

    private static IntPtr DataPointer(Tensor t) => t.dtype switch
    {
        ScalarType.Float32 => t.storage<float>().data_ptr(),
        ScalarType.Float64 => t.storage<double>().data_ptr(),
        _ => IntPtr.Zero,
    };

    public double Objective()
    {
        using var _ = no_grad();
        return EvaluateSum().ToDouble() / BatchSize;
    }

    public double LiftedObjective
    {
        get
        {
            if (lastObjective is null) return double.NaN;
            using var _ = no_grad();
            return lastObjective.ToDouble() / BatchSize;
        }
    }

    public double Loss
    {
        get
        {
            if (lastLoss is null) return double.NaN;
            using var _ = no_grad();
            return lastLoss.ToDouble() / BatchSize;
        }
    }

    public IReadOnlyList<double> Defects
    {
        get
        {
            using var _ = no_grad();
            return lastDefects.Select(g => { using var m = g.abs().mean(); return m.ToDouble(); }).ToArray();
        }
    }

    public IReadOnlyList<double> MultiplierNorms
    {
        get
        {
            using var _ = no_grad();
            return lastMultipliers.Select(m => { using var n = m.pow(Scalars.IntTwo).reshape(m.shape[0], -1).sum(1).mean(); return n.ToDouble(); }).ToArray();
        }
    }

    public abstract void Commit();

    public virtual void Dispose()
    {
        DisposeRecords();
        lastObjective?.Dispose();
        lastObjective = null;
        held.Clear();
        DisposeReused();
    }
}