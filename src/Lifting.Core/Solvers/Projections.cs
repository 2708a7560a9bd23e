using static TorchSharp.torch;

namespace Lifting.Solvers;

/// Projections onto simple convex sets (Stampacchia's projection method, seed 000 §5).
public static class Projections
{
    /// No projection: the unconstrained case.
    public static IProjection None { get; } = new Identity();

    /// Onto the non-negative orthant, x ← max(x, 0).
    public static IProjection NonNegative { get; } = new NonNegativeOrthant();

    private sealed class Identity : IProjection
    {
        public string Name => "none";
        public void ProjectInPlace(Tensor variable) { }
    }

    private sealed class NonNegativeOrthant : IProjection
    {
        public string Name => "nonnegative";
        public void ProjectInPlace(Tensor variable) => variable.clamp_(min: 0);
    }
}
