using static TorchSharp.torch;

namespace Lifting.Solvers;

/// One sub-problem of a block-coordinate schedule: a group of players and how many gradient
/// steps to take on them before moving on.
public sealed record SubProblem(IReadOnlyList<string> PlayerNames, int InnerSteps);

/// Saddle-point and block-coordinate solvers. Notation: F(x) is the operator (descent
/// directions), d(·) the player's step rule (constant: d(g) = αg), P the player's projection.
public static class Solvers
{
    public static ISolver GradientDescentAscent() => new GradientDescentAscentSolver(alternating: false);
    public static ISolver AlternatingGradientDescentAscent() => new GradientDescentAscentSolver(alternating: true);
    public static ISolver Extragradient() => new ExtragradientSolver(null);
    /// Extragradient whose extrapolation step for player p is `extrapolationScale(p)` times its
    /// update step (seed 001 Algorithm 1 lets the two half-steps differ, α_k and α_{k+½}).
    public static ISolver Extragradient(Func<string, double> extrapolationScale) => new ExtragradientSolver(extrapolationScale);
    public static ISolver ExtragradientFromThePast() => new PastExtragradientSolver();
    public static ISolver MirrorProx() => new MirrorProxSolver();
    /// Stampacchia's projection method: the simultaneous projected step. Every solver applies each
    /// player's projection, so this is simultaneous GDA under another name, and plain GDA for
    /// players without a projection (shipped players with one: states under `ProjectStates`,
    /// multipliers of the reduced inequality constraint).
    public static ISolver Projection() => new GradientDescentAscentSolver(alternating: false, name: "projection");
    public static ISolver Alternating(IReadOnlyList<SubProblem> schedule) => new AlternatingSolver(schedule);

    /// x ← P(x − γ d) in place, for every variable of a player (γ = 1 unless scaled).
    internal static void Descend(Player player, IReadOnlyList<Tensor> directions, double scale = 1.0)
    {
        using var _ = no_grad();
        directions = player.StepRule.Directions(directions);
        for (int i = 0; i < player.Variables.Count; i++)
        {
            var d = player.StepRule.Displacement(directions[i], player.StepStates[i], player.Variables[i]);
            if (scale != 1.0) d = d.mul(Scalars.Of(scale));
            player.Variables[i].sub_(d);
            player.Projections[i].ProjectInPlace(player.Variables[i]);
        }
    }

    /// Descends every player along its directions (directions[p] belongs to players[p]).
    internal static void DescendAll(IReadOnlyList<Player> players, IReadOnlyList<IReadOnlyList<Tensor>> directions)
    {
        for (int p = 0; p < players.Count; p++) Descend(players[p], directions[p]);
    }

    /// Copies of the players' variables: into the variable's own snapshot tensor when its state
    /// lives for the run (`StepState.SnapshotBuffer`: the weights), else fresh clones (a batch's rows).
    internal static Tensor[][] Snapshot(IReadOnlyList<Player> players)
    {
        using var _ = no_grad();
        return players.Select(p => p.Variables.Select((v, i) =>
            p.StepStates[i].SnapshotBuffer(v) is { } buffer ? buffer.copy_(v) : v.detach().clone()).ToArray()).ToArray();
    }

    internal static void Restore(IReadOnlyList<Player> players, Tensor[][] values)
    {
        using var _ = no_grad();
        for (int p = 0; p < players.Count; p++)
            for (int i = 0; i < players[p].Variables.Count; i++)
                players[p].Variables[i].copy_(values[p][i]);
    }
}

/// Gradient descent–ascent (Arrow–Hurwicz–Uzawa; seed 001 §2.1), and with per-player projections
/// Stampacchia's projection method x_{k+1} = P_C(x_k − d(F(x_k))) (seed 000 §5):
///
///   simultaneous:  x_{k+1} = P(x_k − d(F(x_k)))   for all players at once;
///   alternating:   minimising players step on F(x_k), then maximising players step on F at the
///                  updated point.
///
/// On the bilinear game min_x max_y xy the simultaneous iterates spiral outwards.
internal sealed class GradientDescentAscentSolver : ISolver
{
    private readonly bool alternating;

    public GradientDescentAscentSolver(bool alternating, string? name = null)
    {
        this.alternating = alternating;
        Name = name ?? (alternating ? "gda-alternating" : "gda");
    }

    public string Name { get; }
    public int MemorySlots => 0;

    public void Step(IGame game)
    {
        using var scope = NewDisposeScope();
        if (!alternating)
        {
            Solvers.DescendAll(game.Players, game.Operator(game.Players));
            return;
        }
        foreach (var group in new[] { Role.Minimise, Role.Maximise })
        {
            var players = game.Players.Where(p => p.Role == group).ToArray();
            if (players.Length > 0) Solvers.DescendAll(players, game.Operator(players));
        }
    }
}

/// Extragradient (Korpelevich 1976; seed 000 §5; seed 001 eq. 2):
///
///   x̄       = P(x_k − d(F(x_k)))        extrapolation
///   x_{k+1} = P(x_k − d(F(x̄)))          update from x_k with the extrapolated operator
///
/// The step rule's state advances at both half-steps (ExtraAdagrad / ExtraAdam). Two operator
/// evaluations per iteration. With AdaGrad on the multiple-shooting Lagrangian this is ExtraProp.
///
/// Optionally the extrapolation of player p is scaled, x̄_p = P(x_p − γ_p d(F_p(x_k))): a longer
/// look-ahead than the update (γ > 1, as in EG+ of Diakonikolas et al. 2021), or none (γ = 0: the
/// player is not extrapolated and its part of F(x_k) is never evaluated). On a rotation
/// F = (v, −u) with update steps a, b and extrapolation steps γ_u·a, γ_v·b, the iteration matrix is
/// [[1 − a·γ_v·b, −a], [b, 1 − b·γ_u·a]]: with γ = 1 its spectral radius is at best √0.75, while
/// γ_v·b·a = γ_u·a·b = 1 brings it down to √(ab) (docs/methods.md).
internal sealed class ExtragradientSolver : ISolver
{
    private readonly Func<string, double>? extrapolationScale;

    public ExtragradientSolver(Func<string, double>? extrapolationScale) => this.extrapolationScale = extrapolationScale;

    public string Name => extrapolationScale is null ? "extragradient" : "extragradient(per-player extrapolation)";
    public int MemorySlots => 0;

    public void Step(IGame game)
    {
        using var scope = NewDisposeScope();
        var players = game.Players;
        var scales = players.Select(p => extrapolationScale?.Invoke(p.Name) ?? 1.0).ToArray();
        for (int p = 0; p < players.Count; p++)
            if (!(scales[p] >= 0) || double.IsInfinity(scales[p]))
                throw new ArgumentOutOfRangeException(nameof(extrapolationScale), $"Invalid extrapolation scale for '{players[p].Name}': {scales[p]} (expected a finite value >= 0).");
        // Players with scale 0 do not extrapolate: the first evaluation leaves them out and holds
        // them fixed, so a game can reuse what depends only on them.
        var moving = Enumerable.Range(0, players.Count).Where(p => scales[p] > 0).ToArray();
        var extrapolating = moving.Select(p => players[p]).ToArray();
        var start = Solvers.Snapshot(extrapolating);
        if (moving.Length > 0)
        {
            using var view = moving.Length < players.Count ? new Restricted(game, extrapolating.Select(p => p.Name).ToArray()) : null;
            var atStart = (view ?? game).Operator(extrapolating);
            for (int k = 0; k < moving.Length; k++) Solvers.Descend(extrapolating[k], atStart[k], scales[moving[k]]);
        }
        var atExtrapolated = game.Operator(players);
        Solvers.Restore(extrapolating, start);
        Solvers.DescendAll(players, atExtrapolated);
    }
}


/// Extragradient from the past / optimistic gradient (Popov 1980; Gidel et al. 2019; seed 000 §5):
///
///   x̄_k     = P(x_k − d(F(x̄_{k−1})))    extrapolate with the remembered direction
///   x_{k+1} = P(x_k − d(F(x̄_k)))        update; F(x̄_k) is remembered for the next iteration
///
/// One operator evaluation per iteration. The remembered direction lives in each variable's
/// `StepState.Memory[0]` (so per-example rows keep their own); it starts at zero, which makes the
/// first iteration a plain gradient step.
internal sealed class PastExtragradientSolver : ISolver
{
    public string Name => "optimistic";
    public int MemorySlots => 1;

    public void Step(IGame game)
    {
        using var scope = NewDisposeScope();
        var players = game.Players;
        foreach (var p in players)
            if (p.StepStates.Any(s => s.Memory.Count < 1))
                throw new InvalidOperationException($"Player '{p.Name}' has no solver memory; extragradient from the past needs MemorySlots = 1.");
        var start = Solvers.Snapshot(players);
        foreach (var p in players) Solvers.Descend(p, p.StepStates.Select(s => s.Memory[0]).ToArray());
        var atExtrapolated = game.Operator(players);
        Solvers.Restore(players, start);
        using var _ = no_grad();
        for (int p = 0; p < players.Count; p++)
        {
            Solvers.Descend(players[p], atExtrapolated[p]);
            for (int i = 0; i < players[p].Variables.Count; i++) players[p].StepStates[i].Memory[0].copy_(atExtrapolated[p][i]);
        }
    }
}

/// Mirror-prox (Nemirovski 2004; seed 000 §5 "Bregman proximal"): extragradient in the geometry
/// of each player's mirror map φ,
///
///   x̄       = argmin_x ⟨d(F(x_k)), x⟩ + D_φ(x, x_k)
///   x_{k+1} = argmin_x ⟨d(F(x̄)), x⟩ + D_φ(x, x_k)
///
/// With the Euclidean map the prox step is x_k − d, so the iterates are extragradient's; the
/// entropic map gives x_k ⊙ exp(−d) (multiplicative weights) for positive or simplex players.
/// Every shipped method's players are Euclidean, so for them this is extragradient; the entropic
/// and simplex maps are building blocks that no shipped method uses yet.
internal sealed class MirrorProxSolver : ISolver
{
    public string Name => "mirror-prox";
    public int MemorySlots => 0;

    public void Step(IGame game)
    {
        using var scope = NewDisposeScope();
        var players = game.Players;
        var start = Solvers.Snapshot(players);
        var atStart = game.Operator(players);
        Prox(players, start, atStart);
        var atExtrapolated = game.Operator(players);
        Prox(players, start, atExtrapolated);
    }

    private static void Prox(IReadOnlyList<Player> players, Tensor[][] centre, IReadOnlyList<IReadOnlyList<Tensor>> directions)
    {
        using var _ = no_grad();
        for (int p = 0; p < players.Count; p++)
        {
            var player = players[p];
            var prepared = player.StepRule.Directions(directions[p]);
            for (int i = 0; i < player.Variables.Count; i++)
            {
                var d = player.StepRule.Displacement(prepared[i], player.StepStates[i], centre[p][i]);
                player.Variables[i].copy_(player.Geometry.Step(centre[p][i], d));
                player.Projections[i].ProjectInPlace(player.Variables[i]);
            }
        }
    }
}

/// Block-coordinate (alternating) minimisation for penalty forms (MAC, BlockProp; seed 000 §3):
/// for each sub-problem in order, `InnerSteps` steps x_S ← P(x_S − d(F_S(x))) on its players S
/// only, the other players held fixed (`IHoldFixed`: a game may evaluate what depends only on them
/// once per sub-problem).
internal sealed class AlternatingSolver : ISolver
{
    private readonly IReadOnlyList<SubProblem> schedule;

    public AlternatingSolver(IReadOnlyList<SubProblem> schedule)
    {
        foreach (var s in schedule)
        {
            if (s.InnerSteps < 1) throw new ArgumentOutOfRangeException(nameof(schedule), $"Invalid inner steps: {s.InnerSteps} (expected >= 1).");
            if (s.PlayerNames.Count == 0) throw new ArgumentException("A sub-problem needs at least one player.", nameof(schedule));
        }
        this.schedule = schedule;
    }

    public string Name => schedule.Count == 0 ? "alternating"
        : "alternating(" + string.Join(", ", schedule.Select(s => $"{string.Join("+", s.PlayerNames)}×{s.InnerSteps}")) + ")";
    public int MemorySlots => 0;

    public void Step(IGame game)
    {
        var plan = schedule.Count > 0 ? schedule : game.Players.Select(p => new SubProblem(new[] { p.Name }, 1)).ToArray();
        foreach (var sub in plan)
        {
            using var view = new Restricted(game, sub.PlayerNames);
            for (int k = 0; k < sub.InnerSteps; k++)
            {
                using var scope = NewDisposeScope();
                Solvers.DescendAll(view.Players, view.Operator(view.Players));
            }
        }
    }
}
