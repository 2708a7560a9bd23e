using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Testing;

/// A two-player game min_x max_y L(x, y) with its saddle point (x*, y*).
public sealed record RandomGame(FunctionGame Game, Player X, Player Y, Tensor XStar, Tensor YStar, int Seed)
{
    /// ‖(x, y) − (x*, y*)‖.
    public double Distance()
    {
        using var _ = no_grad();
        return Math.Sqrt((X.Variables[0] - XStar).square().sum().ToDouble() + (Y.Variables[0] - YStar).square().sum().ToDouble());
    }
}

/// Random games with known solutions, for checking solvers.
public static class RandomGames
{
    /// A strongly monotone quadratic game, deterministic in `seed`:
    ///   L(x, y) = ½xᵀPx + xᵀAy − ½yᵀQy + bᵀx − cᵀy,  P, Q ≻ 0 (eigenvalues ≥ 1/2),
    /// whose unique saddle point solves Px + Ay + b = 0, Aᵀx − Qy − c = 0. Every player steps with
    /// `rule()`; `memorySlots` as the solver asks.
    public static RandomGame StronglyMonotone(int seed, Func<IStepRule> rule, int memorySlots = 0, int n = 4, int m = 3)
    {
        using var generator = new Generator((ulong)seed);
        Tensor Spd(int size)
        {
            var b = randn(new long[] { size, size }, dtype: ScalarType.Float64, generator: generator);
            return b.matmul(b.t()) / size + 0.5 * eye(size, dtype: ScalarType.Float64);
        }
        var p = Spd(n);
        var q = Spd(m);
        var a = randn(new long[] { n, m }, dtype: ScalarType.Float64, generator: generator);
        var bx = randn(new long[] { n }, dtype: ScalarType.Float64, generator: generator);
        var cy = randn(new long[] { m }, dtype: ScalarType.Float64, generator: generator);
        // [P A; Aᵀ −Q] [x; y] = [−b; c]
        var system = cat(new[] { cat(new[] { p, a }, 1), cat(new[] { a.t(), -q }, 1) }, 0);
        var solution = linalg.solve(system, cat(new[] { -bx, cy }, 0));
        var x0 = randn(new long[] { n }, dtype: ScalarType.Float64, generator: generator);
        var y0 = randn(new long[] { m }, dtype: ScalarType.Float64, generator: generator);
        var x = FunctionGame.NewPlayer("x", Role.Minimise, x0, rule(), memorySlots);
        var y = FunctionGame.NewPlayer("y", Role.Maximise, y0, rule(), memorySlots);
        // Written without scalar arithmetic (see Objective).
        var (halfP, halfQ) = (p / 2, q / 2);
        var game = new FunctionGame(new[] { x, y }, v => Objective(
            v[0].dot(halfP.mv(v[0])), v[0].dot(a.mv(v[1])), v[1].dot(halfQ.mv(v[1])).neg(), bx.dot(v[0]), cy.dot(v[1]).neg()));
        return new RandomGame(game, x, y, solution.narrow(0, 0, n), solution.narrow(0, n, m), seed);
    }

    /// A strongly convex quadratic minimisation over two players z = (x, y), deterministic in `seed`:
    ///   L(z) = ½zᵀHz + bᵀz,  H ≻ 0 (eigenvalues ≥ 1/2),  minimised at z* = −H⁻¹b.
    public static RandomGame StronglyConvex(int seed, Func<IStepRule> rule, int memorySlots = 0, int n = 4, int m = 3)
    {
        using var generator = new Generator((ulong)seed);
        var b = randn(new long[] { n + m, n + m }, dtype: ScalarType.Float64, generator: generator);
        var h = b.matmul(b.t()) / (n + m) + 0.5 * eye(n + m, dtype: ScalarType.Float64);
        var c = randn(new long[] { n + m }, dtype: ScalarType.Float64, generator: generator);
        var solution = linalg.solve(h, -c);
        var x = FunctionGame.NewPlayer("x", Role.Minimise, randn(new long[] { n }, dtype: ScalarType.Float64, generator: generator), rule(), memorySlots);
        var y = FunctionGame.NewPlayer("y", Role.Minimise, randn(new long[] { m }, dtype: ScalarType.Float64, generator: generator), rule(), memorySlots);
        var halfH = h / 2;
        var game = new FunctionGame(new[] { x, y }, v =>
        {
            var z = cat(new[] { v[0], v[1] });
            return Objective(z.dot(halfH.mv(z)), c.dot(z));
        });
        return new RandomGame(game, x, y, solution.narrow(0, 0, n), solution.narrow(0, n, m), seed);
    }

    /// The sum of the objective's terms. Games are evaluated thousands of times in a check, so they
    /// avoid `+` and scalar factors, each of which makes a temporary TorchSharp Scalar that the
    /// finalizer may free while the native call still reads it (a rare crash under heavy allocation).
    private static Tensor Objective(params Tensor[] terms) => stack(terms).sum();

    /// The bilinear game min_x max_y xᵀAy (a pure rotation for square A, saddle at 0) from a random
    /// start: gradient descent–ascent spirals out on it, extragradient-type solvers converge.
    public static RandomGame Bilinear(int seed, Func<IStepRule> rule, int memorySlots = 0, int n = 2)
    {
        using var generator = new Generator((ulong)seed);
        // An orthogonal A (all singular values 1) keeps the rotation's speed the same in every direction.
        var (qa, _) = linalg.qr(randn(new long[] { n, n }, dtype: ScalarType.Float64, generator: generator));
        var x = FunctionGame.NewPlayer("x", Role.Minimise, randn(new long[] { n }, dtype: ScalarType.Float64, generator: generator), rule(), memorySlots);
        var y = FunctionGame.NewPlayer("y", Role.Maximise, randn(new long[] { n }, dtype: ScalarType.Float64, generator: generator), rule(), memorySlots);
        var game = new FunctionGame(new[] { x, y }, v => v[0].dot(qa.mv(v[1])));
        return new RandomGame(game, x, y, zeros(n, dtype: ScalarType.Float64), zeros(n, dtype: ScalarType.Float64), seed);
    }
}
