using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Testing;

/// A game given by its objective L as a function of every player's variables (in player order),
/// its operator computed by autograd: ∇L for minimising players, −∇L for maximising ones
/// (seed 000 §5). For checking solvers on games with known solutions.
public sealed class FunctionGame : IGame
{
    private readonly Func<IReadOnlyList<Tensor>, Tensor> objective;

    public FunctionGame(IReadOnlyList<Player> players, Func<IReadOnlyList<Tensor>, Tensor> objective)
    {
        if (players.Count == 0) throw new ArgumentException("A game needs at least one player.", nameof(players));
        Players = players;
        this.objective = objective;
    }

    public IReadOnlyList<Player> Players { get; }

    /// Operator evaluations so far (a solver's cost).
    public int Evaluations { get; private set; }

    private Tensor[] Variables => Players.SelectMany(p => p.Variables).ToArray();

    public IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players)
    {
        Evaluations++;
        using var _ = enable_grad();
        var inputs = players.SelectMany(p => p.Variables).ToArray();
        var grads = autograd.grad(new[] { objective(Variables) }, inputs, allow_unused: true);
        int k = 0;
        return players.Select(p => (IReadOnlyList<Tensor>)p.Variables.Select(v =>
        {
            var g = grads[k++] is { IsInvalid: false } t ? t.detach() : zeros_like(v);
            return p.Role == Role.Maximise ? -g : g;
        }).ToArray()).ToArray();
    }

    public double Objective()
    {
        using var _ = no_grad();
        return objective(Variables).ToDouble();
    }

    /// A player over one fresh leaf copy of `value`, with `rule`'s state and `memorySlots` solver
    /// memory tensors (a solver's `MemorySlots`).
    public static Player NewPlayer(string name, Role role, Tensor value, IStepRule rule, int memorySlots = 0)
    {
        using var _ = no_grad();
        var v = value.detach().clone().requires_grad_(true);
        var state = rule.Init(v, rowIndexed: false);
        var memory = Enumerable.Range(0, memorySlots).Select(_ => zeros_like(v)).ToArray();
        return new Player(name, role, new[] { v }, rule, new[] { new StepState(state.Slots, memory) });
    }
}
