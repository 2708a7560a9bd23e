namespace Lifting.Solvers;

/// A view of a game restricted to some of its players; the others are held fixed while the view
/// is open (a game that supports `IHoldFixed` may then reuse work that depends only on them).
public sealed class Restricted : IGame, IDisposable
{
    private readonly IGame game;
    private readonly IDisposable hold;

    public Restricted(IGame game, IReadOnlyList<string> players)
    {
        this.game = game;
        Players = players.Select(n => game.Players.FirstOrDefault(p => p.Name == n)
            ?? throw new ArgumentException($"The game has no player '{n}' (it has {string.Join(", ", game.Players.Select(p => p.Name))}).")).ToArray();
        hold = Hold(game, game.Players.Where(p => !Players.Contains(p)).Select(p => p.Name).ToArray());
    }

    public IReadOnlyList<Player> Players { get; }
    public IReadOnlyList<IReadOnlyList<TorchSharp.torch.Tensor>> Operator(IReadOnlyList<Player> players) => game.Operator(players);
    public double Objective() => game.Objective();
    public void Dispose() => hold.Dispose();

    /// Holds `players` of `game` fixed until disposed, when the game supports it; otherwise nothing.
    public static IDisposable Hold(IGame game, IReadOnlyCollection<string> players) =>
        game is IHoldFixed holding && players.Count > 0 ? holding.HoldFixed(players) : NoHold.Instance;

    private sealed class NoHold : IDisposable
    {
        public static NoHold Instance { get; } = new();
        public void Dispose() { }
    }
}

/// Inner iterations on some players before each outer iteration on all of them:
/// K iterations of `inner` on the game restricted to `innerPlayers` (e.g. the per-example states
/// and multipliers, which approach their stationary values for the current weights: the
/// "stationary multipliers" limit), then one iteration of `outer` on every player. The other
/// players are held fixed during the inner iterations, so a game can evaluate what depends only on
/// them once (for the multiple-shooting Lagrangian: the first block's output), which makes an inner
/// iteration much cheaper than an outer one.
public sealed class WithInnerIterations : ISolver
{
    private readonly ISolver inner, outer;
    private readonly IReadOnlyList<string> innerPlayers;
    private readonly int iterations;

    public WithInnerIterations(ISolver inner, IReadOnlyList<string> innerPlayers, int iterations, ISolver outer)
    {
        if (iterations < 0) throw new ArgumentOutOfRangeException(nameof(iterations), $"Invalid inner iterations: {iterations} (expected >= 0).");
        if (inner.MemorySlots > outer.MemorySlots)
            throw new ArgumentException($"The inner solver {inner.Name} needs {inner.MemorySlots} memory slots but the outer {outer.Name} provides {outer.MemorySlots}.");
        this.inner = inner;
        this.outer = outer;
        this.innerPlayers = innerPlayers;
        this.iterations = iterations;
    }

    public string Name => $"{outer.Name} after {iterations}×{inner.Name} on {string.Join("+", innerPlayers)}";
    public int MemorySlots => outer.MemorySlots;

    public void Step(IGame game)
    {
        if (iterations > 0)
        {
            // Those of the inner players the game has (a layer-parallel segment holding only the
            // output block has no multipliers).
            var present = innerPlayers.Where(n => game.Players.Any(p => p.Name == n)).ToArray();
            using var view = new Restricted(game, present.Length > 0 ? present : innerPlayers);
            for (int k = 0; k < iterations; k++) inner.Step(view);
        }
        outer.Step(game);
    }
}
