using Lifting.Programs;

namespace Lifting.Training;

/// Accuracy and mean loss of the plain forward pass over one split.
public sealed record Evaluation(double Accuracy, double Loss);

/// What one epoch produced. Seconds count training only (not evaluation).
///
/// `Objective` is the lifted objective the solver works on (e.g. ℓ + Σ⟨λ, g⟩ for the Lagrangian,
/// ℓ + (μ/2)Σ‖g‖² for the penalty), and `LossTerm` its loss term ℓ, each as the mean over the
/// epoch's mini-batches of its value at the batch's last operator evaluation. `TrainLoss` is the
/// plain forward pass's loss over the training split after the epoch.
public sealed record EpochMetrics(
    int Epoch,
    double TrainLoss,
    double Objective,
    double LossTerm,
    Evaluation? Validation,
    Evaluation Test,
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

    public double TestAccuracy => Test.Accuracy;

    /// The validation accuracy; null without a validation split.
    public double? ValidationAccuracy => Validation?.Accuracy;

    /// The players the schedule held fixed this epoch (e.g. the weights while the rows settle);
    /// empty in a learning epoch.
    public IReadOnlyList<string> Held { get; init; } = Array.Empty<string>();
}

/// How the reported epoch was chosen.
public enum Selection
{
    /// The epoch with the highest validation accuracy (the first of equals).
    ValidationAccuracy,
    /// The last epoch: the run had no validation split, or was asked for the last epoch
    /// (`TrainingOptions.Selection`).
    LastEpoch,
}

/// The outcome of a training run. It owns two copies of the weights, the final ones and those of
/// the selected epoch; dispose the result to free them.
///
/// Nothing here is chosen by test accuracy: `Selected` is the epoch with the best validation
/// accuracy (or the last one without a validation split), and its test accuracy is reported as is.
/// `SecondsPerEpoch` averages every epoch's training time; `SecondsPerLearningEpoch` only the
/// epochs in which no player was held (settling epochs are cheaper).
public sealed record TrainingResult(
    IReadOnlyList<EpochMetrics> Epochs,
    Selection SelectedBy,
    int SelectedEpoch,
    double DefectBeforeFinish,
    double FinalDefect,
    double FinalBatchDefect,
    double SecondsPerEpoch,
    double SecondsPerLearningEpoch,
    long PerExampleBytes,
    bool StoppedEarly) : IDisposable
{
    /// The weights after the last epoch (and after the formulation's end-of-training pass).
    public required Weights Weights { get; init; }

    /// The weights at the end of `SelectedEpoch`.
    public required Weights SelectedWeights { get; init; }

    /// The thread count, LibTorch version and device the run used.
    public required EngineInfo Engine { get; init; }

    /// Bytes of the formulation's auxiliary state for the whole run (`ILiftedProblem.StateBytes`);
    /// `PerExampleBytes` is the per-example store's share divided by the training set's size.
    public long StateBytes { get; init; }

    /// What `PerExampleBytes` holds: bytes per example of each variable of the per-example store,
    /// its step-rule state (`NAME#slotK`, `NAME#memoryK`) counted with it. Empty when nothing is
    /// kept per example.
    public IReadOnlyDictionary<string, long> PerExampleVariables { get; init; } = new Dictionary<string, long>();

    /// The metrics of the selected epoch.
    public EpochMetrics Selected => Epochs[SelectedEpoch - 1];

    /// The metrics of the last epoch.
    public EpochMetrics Final => Epochs[^1];

    public void Dispose()
    {
        Weights.Dispose();
        SelectedWeights.Dispose();
    }
}

/// Receives training events; only the host prints or writes files.
public interface ITrainingObserver
{
    void OnStart(int epochs, int batchesPerEpoch) { }
    void OnBatch(int epoch, int batch, int batchesPerEpoch) { }
    /// After each mini-batch, with its loss term and lifted objective (each at the batch's last
    /// operator evaluation, as `EpochMetrics` averages them); by default `OnBatch` above.
    void OnBatch(int epoch, int batch, int batchesPerEpoch, double loss, double objective) => OnBatch(epoch, batch, batchesPerEpoch);
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
