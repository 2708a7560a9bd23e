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
    private static readonly ConcurrentDictionary<long, Scalar> integers = new();

    public static Scalar Zero { get; } = Of(0.0);
    public static Scalar One { get; } = Of(1.0);
    public static Scalar MinusOne { get; } = Of(-1.0);
    public static Scalar Half { get; } = Of(0.5);
    public static Scalar Two { get; } = Of(2.0);

    /// The integer 1 and 2 that TorchSharp itself passes in `a + b`, `a.add_(b)` (alpha 1),
    /// `s - t` and `t.Squared()` (`pow(2)`): these operators make the same temporary inside
    /// TorchSharp, so the engine calls `a.add(b, IntOne)`, `t.pow(IntTwo)` instead, which are the
    /// same native calls with the same scalars.
    public static Scalar IntOne { get; } = OfInteger(1);
    public static Scalar IntTwo { get; } = OfInteger(2);

    /// The cached integer `Scalar` of `value`, as TorchSharp makes for `t / n` with an integer n
    /// (e.g. a batch size; one object per distinct value, never finalised).
    public static Scalar OfInteger(long value) => integers.GetOrAdd(value, v => v.ToScalar());

    /// The cached double `Scalar` of `value` (one object per distinct value, never finalised).
    public static Scalar Of(double value) => cache.GetOrAdd(BitConverter.DoubleToInt64Bits(value), bits => BitConverter.Int64BitsToDouble(bits).ToScalar());

    private static readonly Func<torch.Tensor, Scalar, Scalar, torch.Tensor> softplus =
        typeof(torch.Tensor).GetMethod("softplus1", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance,
            new[] { typeof(Scalar), typeof(Scalar) }) is { } method
            ? method.CreateDelegate<Func<torch.Tensor, Scalar, Scalar, torch.Tensor>>()
            : (x, beta, threshold) => throw new MissingMethodException("TorchSharp's Tensor.softplus1(Scalar, Scalar) is gone; see Lifting.Scalars.Softplus.");

    /// `F.softplus(x, beta, threshold)` with cached Scalars: TorchSharp 0.107's softplus takes
    /// doubles and makes two temporaries of them; this calls the same native function through the
    /// Scalar overload TorchSharp keeps private. (The DistProp crash "Expected false to be true"
    /// happened inside softplus.)
    public static torch.Tensor Softplus(torch.Tensor x, double beta = 1.0, double threshold = 20.0) => softplus(x, Of(beta), Of(threshold));

    /// How many distinct values the cache holds (a test checks that it does not grow with a run).
    public static int Cached => cache.Count + integers.Count;
}

/// TorchSharp's arithmetic operators without their Scalar temporaries: each method makes exactly
/// the native call the operator it names makes (so results are bit-identical), with the Scalars
/// from `Scalars`. `a + b` is `a.add(b, 1)` in TorchSharp, `s - t` is `t.negative().add(s, 1)`,
/// `t.Squared()` is `t.pow(2)`, each with a temporary for the 1 or 2 (docs/engine.md).
public static class ScalarOps
{
    /// `a + b`.
    public static torch.Tensor Plus(this torch.Tensor a, torch.Tensor b) => a.add(b, Scalars.IntOne);
    /// `a.add_(b)`.
    public static torch.Tensor PlusInPlace(this torch.Tensor a, torch.Tensor b) => a.add_(b, Scalars.IntOne);
    /// `a + s` and `s + a` for a double s.
    public static torch.Tensor Plus(this torch.Tensor a, double s) => a.add(Scalars.Of(s), Scalars.IntOne);
    /// `a + n` and `n + a` for an integer n.
    public static torch.Tensor PlusInteger(this torch.Tensor a, long n) => a.add(Scalars.OfInteger(n), Scalars.IntOne);
    /// `a - s` for a double s.
    public static torch.Tensor Minus(this torch.Tensor a, double s) => a.sub(Scalars.Of(s));
    /// `s - a` for a double s.
    public static torch.Tensor Subtracted(this torch.Tensor a, double s) => a.negative().add(Scalars.Of(s), Scalars.IntOne);
    /// `n - a` for an integer n (e.g. `1 - a`).
    public static torch.Tensor SubtractedInteger(this torch.Tensor a, long n) => a.negative().add(Scalars.OfInteger(n), Scalars.IntOne);
    /// `a * s` and `s * a` for a double s.
    public static torch.Tensor Times(this torch.Tensor a, double s) => a.mul(Scalars.Of(s));
    /// `a * n` and `n * a` for an integer n.
    public static torch.Tensor TimesInteger(this torch.Tensor a, long n) => a.mul(Scalars.OfInteger(n));
    /// `a / s` for a double s.
    public static torch.Tensor Over(this torch.Tensor a, double s) => a.div(Scalars.Of(s));
    /// `a / n` for an integer n.
    public static torch.Tensor OverInteger(this torch.Tensor a, long n) => a.div(Scalars.OfInteger(n));
    /// `a.Squared()` (`pow(2)`).
    public static torch.Tensor Squared(this torch.Tensor a) => a.pow(Scalars.IntTwo);
}

/// TorchSharp factory calls without Scalar temporaries.
public static class ScalarFactories
{
    /// `torch.arange(n, dtype, device)`: 0, 1, …, n − 1 (TorchSharp's overload makes its start,
    /// stop and step temporaries; these are cached integers, the same values).
    public static torch.Tensor Arange(long n, torch.ScalarType dtype, torch.Device device) =>
        torch.arange(Scalars.OfInteger(0), Scalars.OfInteger(n), Scalars.IntOne, dtype, device);

    /// `torch.arange(start, stop, dtype, device)`.
    public static torch.Tensor Arange(long start, long stop, torch.ScalarType dtype, torch.Device device) =>
        torch.arange(Scalars.OfInteger(start), Scalars.OfInteger(stop), Scalars.IntOne, dtype, device);
}
