using System.Collections.Concurrent;
using TorchSharp;

namespace Lifting;

/// TorchSharp `Scalar`s that stay alive. TorchSharp 0.107 turns a number passed to a tensor
/// operation (`t * 0.5`, `t.add_(u, alpha: s)`) into a temporary `Scalar` whose native value its
/// finaliser may free while LibTorch still reads it, if another thread collects garbage during the
/// call (docs/engine.md, "A TorchSharp race"). The engine's hot paths pass these instead: constants,
/// and values that recur (step sizes, β, 1/B) from a cache that keeps each one alive for the
/// process. A value that changes at every step (Adam's bias corrections) is held by `using` for
/// the call instead, so that the cache does not grow with the run.
public static class Scalars
{
    private static readonly ConcurrentDictionary<long, Scalar> cache = new();

    public static Scalar Zero { get; } = Of(0.0);
    public static Scalar One { get; } = Of(1.0);
    public static Scalar MinusOne { get; } = Of(-1.0);
    public static Scalar Half { get; } = Of(0.5);
    public static Scalar Two { get; } = Of(2.0);

    /// The cached double `Scalar` of `value` (one object per distinct value, never finalised).
    public static Scalar Of(double value) => cache.GetOrAdd(BitConverter.DoubleToInt64Bits(value), bits => BitConverter.Int64BitsToDouble(bits).ToScalar());

    /// How many distinct values the cache holds (a test checks that it does not grow with a run).
    public static int Cached => cache.Count;
}
