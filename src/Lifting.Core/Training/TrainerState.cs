namespace Lifting.Training;

/// Where a run stands between two mini-batches, besides the lifted problem's own state: the epochs
/// done, the mini-batches done in the next one with its running sums, the history, the selection
/// on validation and the reference loss of the blow-up check. With the problem's state
/// (`ICheckpointable`), the selected weights and LibTorch's generator it is a checkpoint
/// (`Lifting.Storage.Checkpoint`). Step-rule schedules are not saved: they follow the epoch.
public sealed record TrainerState
{
    /// The planned number of epochs (a checkpoint continues the same plan, or a longer one).
    public int Epochs { get; init; }
    public int CompletedEpochs { get; init; }
    /// Mini-batches of epoch `CompletedEpochs + 1` already done (0 at an epoch boundary).
    public int BatchesDone { get; init; }
    /// The running sums of that epoch: objective, loss term, training seconds; the cosine to
    /// backprop measured on its first batch.
    public double ObjectiveSum { get; init; }
    public double LossSum { get; init; }
    public double Seconds { get; init; }
    public double? Cosine { get; init; }
    public IReadOnlyList<EpochMetrics> History { get; init; } = Array.Empty<EpochMetrics>();
    /// The best validation accuracy so far and its epoch (0 = none yet).
    public double BestValidation { get; init; } = double.NegativeInfinity;
    public int SelectedEpoch { get; init; }
    /// The plain training loss of the initial weights: the reference of `TrainingOptions.MaxLossRatio`.
    public double InitialLoss { get; init; }
}
