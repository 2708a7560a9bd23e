using static TorchSharp.torch;

namespace Lifting.Training;

/// How to train: epochs, mini-batches, seed, device and what to measure.
public sealed record TrainingOptions
{
    public int Epochs { get; init; } = 10;
    public int BatchSize { get; init; } = 128;
    public int Seed { get; init; } = 0;
    public Device Device { get; init; } = CPU;
    public ScalarType DType { get; init; } = ScalarType.Float32;
    /// Solver iterations per mini-batch.
    public int IterationsPerBatch { get; init; } = 1;
    /// Stop when the validation accuracy has not improved for this many epochs (0 = never). Needs
    /// a validation split.
    public int Patience { get; init; }
    /// Measure, on the first mini-batch of each epoch, the cosine between the method's weight
    /// direction and the back-propagation gradient.
    public bool CosineToBackprop { get; init; }
    /// Stop as diverged when the plain training loss after an epoch exceeds this many times the
    /// loss of the initial weights (a blow-up); infinity = only non-finite values stop a run.
    public double MaxLossRatio { get; init; } = double.PositiveInfinity;
    /// How the reported epoch is chosen: on validation accuracy (the default; the last epoch when
    /// there is no validation split) or always the last epoch (`Selection.LastEpoch`: nothing is
    /// selected on validation, e.g. when the split is too small to tell epochs apart).
    public Selection Selection { get; init; } = Selection.ValidationAccuracy;

    public void Validate()
    {
        if (Epochs < 1) throw new ArgumentOutOfRangeException(nameof(Epochs), $"Invalid epochs: {Epochs} (expected >= 1).");
        if (BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(BatchSize), $"Invalid batch size: {BatchSize} (expected >= 1).");
        if (IterationsPerBatch < 1) throw new ArgumentOutOfRangeException(nameof(IterationsPerBatch), $"Invalid iterations per batch: {IterationsPerBatch} (expected >= 1).");
        if (!(MaxLossRatio > 1)) throw new ArgumentOutOfRangeException(nameof(MaxLossRatio), $"Invalid max loss ratio: {MaxLossRatio} (expected > 1).");
        if (Patience < 0) throw new ArgumentOutOfRangeException(nameof(Patience), $"Invalid patience: {Patience} (expected >= 0).");
        if (Patience > 0 && Selection == Selection.LastEpoch)
            throw new ArgumentException($"Early stopping (patience {Patience}) selects on validation; Selection.LastEpoch does not.");
    }
}
