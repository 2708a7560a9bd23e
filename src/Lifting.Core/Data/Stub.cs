// TEMPORARY: replaced by the data branch.
using static TorchSharp.torch;
namespace Lifting.Data;
public sealed class Dataset { public required string Name { get; init; } public required Tensor Inputs { get; init; } public required Tensor Labels { get; init; } public int ClassCount { get; init; } public int Count => (int)Labels.shape[0]; public long[] ExampleShape => Inputs.shape.Skip(1).ToArray(); }
public sealed class MiniBatch : IDisposable { public required Tensor Indices { get; init; } public required Tensor Inputs { get; init; } public required Tensor Labels { get; init; } public void Dispose() { } }
public sealed record DataSplit(Dataset Train, Dataset Test);
public static class MiniBatches {
  public static IEnumerable<MiniBatch> Epoch(Dataset d, int batchSize, int seed, int epoch) { var rng = new Random(seed * 7919 + epoch); var perm = Enumerable.Range(0, d.Count).OrderBy(_ => rng.Next()).ToArray(); for (int s = 0; s < perm.Length; s += batchSize) { var idx = tensor(perm.Skip(s).Take(batchSize).Select(i => (long)i).ToArray()).to(d.Inputs.device); yield return new MiniBatch { Indices = idx, Inputs = d.Inputs.index_select(0, idx), Labels = d.Labels.index_select(0, idx) }; } }
  public static IEnumerable<MiniBatch> Sequential(Dataset d, int batchSize) { for (long s = 0; s < d.Count; s += batchSize) { var idx = arange(s, Math.Min(d.Count, s + batchSize), dtype: ScalarType.Int64, device: d.Inputs.device); yield return new MiniBatch { Indices = idx, Inputs = d.Inputs.index_select(0, idx), Labels = d.Labels.index_select(0, idx) }; } }
}
