using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Programs;

/// A loss ℓ(ŷ, y) between the program's output and integer class labels.
public interface ILoss
{
    string Name { get; }
    /// ℓ for each example of the batch: [B].
    Tensor PerExample(Tensor output, Tensor labels);
}

public static class Losses
{
    /// Cross-entropy of logits against class labels (log-softmax inside).
    public static ILoss CrossEntropy { get; } = new Builtin("cross-entropy",
        (output, labels) => F.cross_entropy(output, labels, reduction: nn.Reduction.None));

    /// ½‖ŷ − onehot(y)‖² per example.
    public static ILoss Mse { get; } = new Builtin("mse", (output, labels) =>
    {
        var target = F.one_hot(labels, output.shape[^1]).to_type(output.dtype);
        return (output - target).Squared().sum(1).mul(Scalars.Half);
    });

    public static IReadOnlyList<ILoss> All { get; } = new[] { CrossEntropy, Mse };

    public static ILoss ByName(string name) =>
        All.FirstOrDefault(l => string.Equals(l.Name, name, StringComparison.OrdinalIgnoreCase))
        ?? (string.Equals(name, "ce", StringComparison.OrdinalIgnoreCase) ? CrossEntropy
        : throw new ArgumentException($"Unknown loss '{name}' (known: {string.Join(", ", All.Select(l => l.Name))})."));

    /// Mean of ℓ over the batch.
    public static Tensor Mean(this ILoss loss, Tensor output, Tensor labels) => loss.PerExample(output, labels).mean();

    private sealed class Builtin : ILoss
    {
        private readonly Func<Tensor, Tensor, Tensor> perExample;
        public Builtin(string name, Func<Tensor, Tensor, Tensor> perExample) { Name = name; this.perExample = perExample; }
        public string Name { get; }
        public Tensor PerExample(Tensor output, Tensor labels) => perExample(output, labels);
        public override string ToString() => Name;
    }
}
