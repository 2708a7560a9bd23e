namespace Lifting.Solvers;

/// A named solver: what `--solver NAME` builds, given the formulation's default schedule of
/// sub-problems (used by block-coordinate solvers; others ignore it).
public sealed record SolverDefinition(string Name, string Description, Func<IReadOnlyList<SubProblem>, ISolver> Create)
{
    /// Other names that select this solver.
    public IReadOnlyList<string> Aliases { get; init; } = Array.Empty<string>();
}

/// Solvers by name: the built-in ones and any a user registers, which every method's `solver`
/// and `inner-solver` parameters then accept and `lifting methods` lists.
public static class SolverCatalog
{
    private static readonly Catalog<SolverDefinition> catalog = new("solver", d => d.Name, d => d.Aliases, new[]
    {
        new SolverDefinition("gda", "simultaneous gradient descent-ascent (Arrow-Hurwicz-Uzawa); plain gradient descent for minimisations", _ => Solvers.GradientDescentAscent()),
        new SolverDefinition("gda-alternating", "gradient descent-ascent, minimising players first, then maximising ones", _ => Solvers.AlternatingGradientDescentAscent()),
        new SolverDefinition("extragradient", "Korpelevich extragradient: extrapolate, then update from the start point (2 evaluations)", _ => Solvers.Extragradient()) { Aliases = new[] { "eg" } },
        new SolverDefinition("optimistic", "extragradient from the past / optimistic gradient (1 evaluation, remembers the last direction)", _ => Solvers.ExtragradientFromThePast()) { Aliases = new[] { "past-extragradient" } },
        new SolverDefinition("mirror-prox", "extragradient in each player's Bregman geometry; every shipped method's players are Euclidean, so it equals extragradient (entropic and simplex maps are library building blocks)", _ => Solvers.MirrorProx()),
        new SolverDefinition("projection", "Stampacchia projection method x <- P(x - d(F(x))): simultaneous gda (every solver applies the players' projections); plain gda for players without one (projected: --project-states, --reduced --inequality)", _ => Solvers.Projection()),
        new SolverDefinition("alternating", "block-coordinate descent over the formulation's schedule of sub-problems", schedule => Solvers.Alternating(schedule)),
    });

    /// Every registered solver, built-in ones first, in registration order.
    public static IReadOnlyList<SolverDefinition> All => catalog.All;

    /// Adds a solver; its name and aliases must be new.
    public static void Register(SolverDefinition solver) => catalog.Register(solver);

    /// The solver named `name` (or an alias); the error lists the known names.
    public static SolverDefinition Find(string name) => catalog.Find(name);

    public static ISolver Create(string name, IReadOnlyList<SubProblem> schedule) => Find(name).Create(schedule);
}
