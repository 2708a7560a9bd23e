using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Per-example variables: tensors of shape [N, …] indexed by example id. A mini-batch gathers
/// its rows, a solver updates them, and they are scattered back; nothing per-example is ever
/// updated densely for the whole dataset.
public sealed class ExampleStore : IDisposable
{
    private readonly Dictionary<string, Tensor> tensors = new();

    public ExampleStore(int count) => Count = count;

    public int Count { get; }
    public IEnumerable<string> Names => tensors.Keys;
    public long Bytes => tensors.Values.Sum(t => t.NumberOfElements * t.ElementSize);

    /// Adds a tensor whose leading dimension indexes the examples; the store owns it.
    public Tensor Add(string name, Tensor rows)
    {
        if (rows.shape[0] != Count) throw new ArgumentException($"'{name}' has {rows.shape[0]} rows, the store {Count}.");
        if (tensors.ContainsKey(name)) throw new ArgumentException($"'{name}' is already in the store.");
        var t = rows.detach().DetachFromDisposeScope();
        tensors[name] = t;
        return t;
    }

    public Tensor this[string name] => tensors.TryGetValue(name, out var t) ? t
        : throw new KeyNotFoundException($"No per-example variable '{name}'.");

    /// A fresh copy of the rows at `indices`.
    public Tensor Gather(string name, Tensor indices) => this[name].index_select(0, indices);

    /// Writes `rows` back at `indices`.
    public void Scatter(string name, Tensor indices, Tensor rows)
    {
        using var _ = no_grad();
        this[name].index_copy_(0, indices, rows.detach());
    }

    public void Dispose()
    {
        foreach (var t in tensors.Values) t.Dispose();
        tensors.Clear();
    }
}
