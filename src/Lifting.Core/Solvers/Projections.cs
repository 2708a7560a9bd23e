using static TorchSharp.torch;

namespace Lifting.Solvers;

/// Projections onto simple convex sets (Stampacchia's projection method, seed 000 §5).
public static class Projections
{
    /// No projection: the unconstrained case.
    public static IProjection None { get; } = new Identity();

    /// Onto the non-negative orthant, x ← max(x, 0).
    public static IProjection NonNegative { get; } = new NonNegativeOrthant();

    /// Onto the box [lower, upper] elementwise (either bound may be infinite); the whole space when
    /// both are.
    public static IProjection Box(double lower, double upper)
    {
        if (double.IsNaN(lower) || double.IsNaN(upper) || lower > upper)
            throw new ArgumentException($"Invalid box [{lower}, {upper}] (expected lower <= upper).");
        if (double.IsNegativeInfinity(lower) && double.IsPositiveInfinity(upper)) return None;
        if (lower == 0 && double.IsPositiveInfinity(upper)) return NonNegative;
        return new BoxProjection(lower, upper);
    }

    private sealed class BoxProjection : IProjection
    {
        private readonly double lower, upper;
        public BoxProjection(double lower, double upper) { this.lower = lower; this.upper = upper; }
        public string Name => $"box[{lower}, {upper}]";
        public void ProjectInPlace(Tensor variable)
        {
            if (double.IsNegativeInfinity(lower)) variable.clamp_(max: Scalars.Of(upper));
            else if (double.IsPositiveInfinity(upper)) variable.clamp_(min: Scalars.Of(lower));
            else variable.clamp_(Scalars.Of(lower), Scalars.Of(upper));
        }
    }

    private sealed class Identity : IProjection
    {
        public string Name => "none";
        public void ProjectInPlace(Tensor variable) { }
    }

    private sealed class NonNegativeOrthant : IProjection
    {
        public string Name => "nonnegative";
        public void ProjectInPlace(Tensor variable) => variable.clamp_(min: Scalars.OfInteger(0));
    }
}
