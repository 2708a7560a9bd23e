namespace Lifting.Training;

/// What one epoch produced. Seconds count training only (not evaluation).
public sealed record EpochMetrics(
    int Epoch,
    double TrainLoss,
    double Objective,
    double TestAccuracy,
    double TestLoss,
    double Seconds,
    IReadOnlyList<double> Defects,
    double BatchDefect,
    IReadOnlyList<double> MultiplierNorms,
    double? CosineToBackprop,
    IReadOnlyDictionary<string, double> Diagnostics)
{
    /// Mean |defect| over blocks and the whole training set (0 when nothing is lifted).
    /// `BatchDefect` is the same for the epoch's last mini-batch right after its update.
    public double MeanDefect => Defects.Count == 0 ? 0 : Defects.Average();

    /// The players the schedule held fixed this epoch (e.g. the weights while the rows settle);
    /// empty in a learning epoch.
    public IReadOnlyList<string> Held { get; init; } = Array.Empty<string>();
}

/// The outcome of a training run.
/// `SecondsPerEpoch` averages every epoch's training time; `SecondsPerLearningEpoch` only the
/// epochs in which no player was held (settling epochs are cheaper).
public sealed record TrainingResult(
    IReadOnlyList<EpochMetrics> Epochs,
    double FinalTestAccuracy,
    double BestTestAccuracy,
    int BestEpoch,
    double FinalTrainLoss,
    double FinalDefect,
    double FinalBatchDefect,
    double SecondsPerEpoch,
    double SecondsPerLearningEpoch,
    long PerExampleBytes,
    bool StoppedEarly)
{
    /// A copy of the trained weights (the caller disposes it).
    public required Lifting.Programs.Weights Weights { get; init; }
}

/// Receives training events; only the host prints or writes files.
public interface ITrainingObserver
{
    void OnStart(int epochs, int batchesPerEpoch) { }
    void OnBatch(int epoch, int batch, int batchesPerEpoch) { }
    void OnEpoch(EpochMetrics metrics) { }
}

/// Observers from functions (convenient from F# and C# lambdas).
public static class Observers
{
    public static ITrainingObserver None { get; } = new FromFunctions(null, null);

    public static ITrainingObserver OnEpoch(Action<EpochMetrics> onEpoch) => new FromFunctions(onEpoch, null);

    public static ITrainingObserver Create(Action<EpochMetrics> onEpoch, Action<int, int, int> onBatch) => new FromFunctions(onEpoch, onBatch);

    private sealed class FromFunctions : ITrainingObserver
    {
        private readonly Action<EpochMetrics>? onEpoch;
        private readonly Action<int, int, int>? onBatch;
        public FromFunctions(Action<EpochMetrics>? onEpoch, Action<int, int, int>? onBatch) { this.onEpoch = onEpoch; this.onBatch = onBatch; }
        public void OnBatch(int epoch, int batch, int batchesPerEpoch) => onBatch?.Invoke(epoch, batch, batchesPerEpoch);
        public void OnEpoch(EpochMetrics metrics) => onEpoch?.Invoke(metrics);
    }
}
