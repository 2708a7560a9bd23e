using static TorchSharp.torch;

namespace Lifting.Data;

/// A mini-batch: the examples' indices in the dataset (lifted methods store per-example
/// variables by index), their inputs and labels.
public sealed class MiniBatch : IDisposable
{
    public MiniBatch(Tensor indices, Tensor inputs, Tensor labels)
    {
        Indices = indices;
        Inputs = inputs;
        Labels = labels;
    }

    public Tensor Indices { get; }
    public Tensor Inputs { get; }
    public Tensor Labels { get; }
    public long Size => Indices.shape[0];
    /// The training step this batch is (0, 1, …, counted over the whole run): seeds dropout masks,
    /// so that a resumed run draws what the uninterrupted one does.
    public long Step { get; init; }

    public void Dispose()
    {
        Indices.Dispose();
        Inputs.Dispose();
        Labels.Dispose();
    }
}

/// Deterministic mini-batches. The permutation of an epoch depends only on (seed, epoch), is drawn
/// with .NET's seeded PRNG (not torch's global generator), and visits every example exactly once;
/// the last batch may be smaller.
public static class MiniBatches
{
    /// The mini-batches of epoch `epoch`, from the `firstBatch`-th (0-based) on: a run continued
    /// from the middle of an epoch sees the rest of that epoch's order.
    public static IEnumerable<MiniBatch> Epoch(Dataset data, int batchSize, int seed, int epoch, int firstBatch = 0)
    {
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), $"Invalid batch size: {batchSize} (expected >= 1).");
        if (firstBatch < 0) throw new ArgumentOutOfRangeException(nameof(firstBatch), $"Invalid first batch: {firstBatch} (expected >= 0).");
        var order = Permutation(data.Count, seed, epoch);
        for (int start = firstBatch * batchSize; start < order.Length; start += batchSize)
        {
            var rows = order.AsSpan(start, Math.Min(batchSize, order.Length - start)).ToArray();
            yield return Gather(data, tensor(rows, device: data.Inputs.device));
        }
    }

    /// The examples in order (for evaluation).
    public static IEnumerable<MiniBatch> Sequential(Dataset data, int batchSize)
    {
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), $"Invalid batch size: {batchSize} (expected >= 1).");
        for (long start = 0; start < data.Count; start += batchSize)
            yield return Gather(data, ScalarFactories.Arange(start, Math.Min(data.Count, start + batchSize), ScalarType.Int64, data.Inputs.device));
    }

    /// The order of epoch `epoch` for `seed`: a Fisher–Yates shuffle.
    public static long[] Permutation(int count, int seed, int epoch)
    {
        // Derived arithmetically: HashCode.Combine is randomised per process.
        var random = new Random(unchecked(seed * 1_000_003 + epoch * 7919 + 17));
        var order = new long[count];
        for (int i = 0; i < count; i++) order[i] = i;
        for (int i = count - 1; i > 0; i--)
        {
            int j = random.Next(i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }

    private static MiniBatch Gather(Dataset data, Tensor indices) =>
        new(indices, data.Inputs.index_select(0, indices), data.Labels.index_select(0, indices));
}
